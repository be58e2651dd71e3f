//! The notify function: the team bus's job events and quality alerts (a rule targets the
//! function directly, with retries and a DLQ) → Slack, Microsoft Teams and generic
//! HMAC-signed webhooks. A failed post is an error, so EventBridge retries the event.

use tamp_control::notify::Webhooks;

use crate::Error;
use crate::report::tamp_event;

/// Sends the event to every configured target; returns how many were posted to.
pub async fn handle(targets: &Webhooks, payload: serde_json::Value) -> Result<usize, Error> {
    let event = tamp_event(&payload)?;
    targets.deliver(&event).await.map_err(|e| Error::Delivery(e.to_string()))
}
