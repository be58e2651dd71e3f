//! EventBridge as the event bus: each event is one `PutEvents` entry on the team's custom bus
//! with `source: tamp`, the detail-type `tamp.<kind>` and the event as the detail; rules on
//! the bus route them to the report and notify functions.

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use tamp_ports::{EventBus, PortError, Result, TampEvent};

/// The `source` of every event Tamp publishes.
pub const SOURCE: &str = "tamp";

#[derive(Debug, Clone)]
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeBus {
    pub fn new(config: &aws_config::SdkConfig, bus: impl Into<String>) -> Self {
        Self { client: aws_sdk_eventbridge::Client::new(config), bus: bus.into() }
    }

    pub fn client(&self) -> &aws_sdk_eventbridge::Client {
        &self.client
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, event: &TampEvent) -> Result<()> {
        let detail = serde_json::to_string(event).map_err(|e| PortError::Invalid(e.to_string()))?;
        let entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(&event.detail_type)
            .detail(detail)
            .resources(format!("tamp:job/{}", event.job))
            .build();
        let out =
            self.client.put_events().entries(entry).send().await.map_err(|e| PortError::Unavailable(format!("eventbridge put: {}", e.into_service_error())))?;
        if out.failed_entry_count() > 0 {
            let why: Vec<String> = out.entries().iter().filter_map(|e| e.error_message().map(str::to_owned)).collect();
            return Err(PortError::Unavailable(format!("eventbridge rejected the event: {}", why.join("; "))));
        }
        Ok(())
    }
}
