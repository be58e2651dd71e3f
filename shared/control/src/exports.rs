//! A stage's files for runtimes beyond ONNX Runtime (the recipe's `targets`): the pre-flight
//! check at ingest, and recording each exported file as an artifact of its runtime with an
//! `artifact.exported` event.

use tamp_domain::job::{EventKind, Job, StageOutput};
use tamp_domain::recipe::Recipe;
use tamp_ports::{ArtifactRecord, StageRun};

use crate::handlers::{Result, Services, event};

/// One exported file of a stage: its runtime, where it is, and its record
/// ([`tamp_domain::results::ExportedArtifact`] as JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExportOutput {
    pub runtime: String,
    pub output: StageOutput,
    pub metadata: serde_json::Value,
}

/// Models up to this size are read by ingest to check a recipe's non-ONNX Runtime targets;
/// larger ones are checked by the worker before its first stage computes anything.
pub const PREFLIGHT_MAX_MODEL_BYTES: u64 = 512 << 20;

/// For a recipe that targets runtimes beyond ONNX Runtime: the pre-flight compatibility
/// check at ingest, one line per node or stage a runtime cannot take (the job then fails
/// before any worker starts). A model ingest cannot parse is left to the worker, which says
/// what is wrong with it.
pub(crate) async fn preflight(svc: &Services, recipe: &Recipe, model_key: &str, size: u64) -> Result<Option<String>> {
    if recipe.targets.iter().all(|t| *t == tamp_domain::recipe::Target::Onnxruntime) || size > PREFLIGHT_MAX_MODEL_BYTES {
        return Ok(None);
    }
    let bytes = svc.store.get(model_key).await?;
    let Ok(model) = tamp_onnx::Model::from_bytes(&bytes, None, std::path::Path::new(model_key)) else { return Ok(None) };
    let problems = tamp_export::compat::problems(&tamp_export::compat::preflight(&model, recipe));
    if problems.is_empty() {
        return Ok(None);
    }
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Ok(Some(format!("the recipe's targets cannot take this model or recipe ({} problem(s)):\n  {}", lines.len(), lines.join("\n  "))))
}

/// Records each exported file of a stage as an artifact of its own runtime, ranked as the
/// ONNX `record` it came from (the same constraints, the same speed-up) with the metrics its
/// runtime measured, and announces it.
pub(crate) async fn record(svc: &Services, j: &Job, run: &StageRun, record: &ArtifactRecord, exports: &[ExportOutput]) -> Result<()> {
    for e in exports {
        let mut metadata = e.metadata.clone();
        for k in ["compression", "compatibility", "flags", "missed_constraints"] {
            metadata[k] = record.metadata[k].clone();
        }
        metadata["opset"] = serde_json::json!({ "tflite_schema": e.metadata["schema_version"] });
        metadata["source_metrics"] = record.metadata["metrics"].clone();
        svc.meta
            .put_artifact(&ArtifactRecord {
                id: format!("{}_{}", record.id, e.runtime),
                runtime: e.runtime.clone(),
                key: e.output.artifact_key.clone(),
                metadata_key: e.output.metadata_key.clone(),
                sha256: e.output.sha256.clone(),
                size_bytes: e.output.size_bytes,
                metadata,
                ..record.clone()
            })
            .await?;
        let detail = serde_json::json!({
            "artifact": format!("{}_{}", record.id, e.runtime),
            "runtime": e.runtime,
            "sha256": e.output.sha256,
            "size_bytes": e.output.size_bytes,
            "metrics": e.metadata["metrics"],
        });
        let mut ev = event(j, EventKind::ArtifactExported, svc.clock.now(), detail);
        // One id per stage attempt and runtime: a replayed SUCCEEDED delivery is dropped downstream.
        ev.id = format!("evt_{}_s{}a{}_{}_{}", j.id.trim_start_matches("job_"), run.stage, run.attempt, e.runtime, EventKind::ArtifactExported.as_str());
        svc.bus.publish(&ev).await?;
    }
    Ok(())
}
