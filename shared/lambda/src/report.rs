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
    let t0 = std::time::Instant::now();
    let written = handlers::write_report(svc, &event).await?;
    // Finished jobs by outcome (the failure-rate alarm's inputs), and the report step's time.
    let outcome = match event.detail_type.as_str() {
        "tamp.job.succeeded" => Some("JobsSucceeded"),
        "tamp.job.failed" => Some("JobsFailed"),
        "tamp.job.cancelled" => Some("JobsCancelled"),
        _ => None,
    };
    if let Some(name) = outcome {
        crate::emf::emit("report", &[(name, 1.0, "Count"), ("ReportSeconds", t0.elapsed().as_secs_f64(), "Seconds")]);
    }
    Ok(written)
}
