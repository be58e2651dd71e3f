//! The report function: the team bus's `tamp.job.succeeded|failed|cancelled` events (an
//! EventBridge rule targets the function directly, with retries and a DLQ). Writes the job's
//! report document to `reports/<job>/report.json` and announces `tamp.report.ready`.

use tamp_control::Services;
use tamp_control::handlers;
use tamp_ports::TampEvent;

use crate::Error;

/// The Tamp event inside an EventBridge envelope (`detail`), or the event itself.
pub fn tamp_event(payload: &serde_json::Value) -> Result<TampEvent, Error> {
    let inner = if payload.get("detail").is_some_and(serde_json::Value::is_object) && payload["source"] == "tamp" { &payload["detail"] } else { payload };
    serde_json::from_value(inner.clone()).map_err(|e| Error::Invalid(format!("not a Tamp event: {e}")))
}

pub async fn handle(svc: &Services, payload: serde_json::Value) -> Result<Option<String>, Error> {
    let event = tamp_event(&payload)?;
    Ok(handlers::write_report(svc, &event).await?)
}
