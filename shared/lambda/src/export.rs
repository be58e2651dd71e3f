//! The export function: the team bus's `tamp.job.succeeded` (an EventBridge rule targets
//! the function directly, with retries and a DLQ). Converts the job's final artifact for
//! each of the recipe's targets that has a file of its own (TFLite), measured in its runtime
//! on the evaluation set, and announces `tamp.artifact.exported`; artifacts larger than
//! `TAMP_EXPORT_IN_PLACE_MAX_BYTES` go to a Batch CPU stage (`tamp-batch-worker export`).

use tamp_control::Services;
use tamp_control::exports::{Exported, on_job_succeeded};

use crate::{Error, Settings};

pub async fn handle(settings: &Settings, svc: &Services, payload: serde_json::Value) -> Result<Vec<(String, Exported)>, Error> {
    let event = crate::report::tamp_event(&payload)?;
    let t0 = std::time::Instant::now();
    let exporter = tamp_worker::export::InPlace { files: svc.store.clone(), scratch: settings.scratch.clone() };
    let done = on_job_succeeded(svc, &event, &exporter, settings.export_in_place_max_bytes).await?;
    if !done.is_empty() {
        let count = |f: fn(&Exported) -> bool| done.iter().filter(|(_, e)| f(e)).count() as f64;
        crate::emf::emit(
            "export",
            &[
                ("ExportsInPlace", count(|e| matches!(e, Exported::InPlace(_))), "Count"),
                ("ExportsSubmitted", count(|e| matches!(e, Exported::Submitted)), "Count"),
                ("ExportsFailed", count(|e| matches!(e, Exported::Failed(_))), "Count"),
                ("ExportSeconds", t0.elapsed().as_secs_f64(), "Seconds"),
            ],
        );
    }
    Ok(done)
}
