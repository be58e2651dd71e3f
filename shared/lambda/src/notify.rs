//! The notify function: the team bus's job events and quality alerts (a rule targets the
//! function directly, with retries and a DLQ) → Slack, Microsoft Teams and generic
//! HMAC-signed webhooks. A failed post is an error, so EventBridge retries the event; the
//! delivery ledger in the table keeps the retry from reaching targets that already have it.

use tamp_control::notify::Webhooks;
use tamp_ports::MetadataStore;

use crate::Error;
use crate::report::tamp_event;

/// Sends the event to every configured target that has not had it; returns how many were
/// posted to now.
pub async fn handle(targets: &Webhooks, ledger: &dyn MetadataStore, payload: serde_json::Value) -> Result<usize, Error> {
    let event = tamp_event(&payload)?;
    let sent = targets.deliver_once(&event, ledger).await;
    let metric = match &sent {
        Ok(n) => ("NotificationsSent", *n as f64),
        Err(_) => ("NotificationFailures", 1.0),
    };
    crate::emf::emit("notify", &[(metric.0, metric.1, "Count")]);
    sent.map_err(|e| Error::Delivery(e.to_string()))
}
