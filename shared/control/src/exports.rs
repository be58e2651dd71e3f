//! Files for runtimes beyond ONNX Runtime (the recipe's `targets`): the pre-flight check at
//! ingest, and the export function's part — on `job.succeeded`, the job's final artifact
//! converted for each such runtime (in place, or by a Batch CPU stage when it is large),
//! recorded as an artifact of that runtime with an `artifact.exported` event.

use tamp_domain::job::{EventKind, Job, StageOutput};
use tamp_domain::recipe::Recipe;
use tamp_ports::{ArtifactRecord, EventBus, MetadataStore, ObjectStore, PortError, TampEvent};

use crate::handlers::{HandlerError, Result, Services, event};

/// One exported file: its runtime, where it is, and its record
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

/// The id of `source`'s export for `runtime` (`art_<job>_<stage>_tflite`).
pub fn export_id(source: &str, runtime: &str) -> String {
    format!("{source}_{runtime}")
}

/// Where the reason is kept when a runtime's file could not be made for a job.
pub fn export_error_key(job: &str, runtime: &str) -> String {
    format!("artifacts/{job}/exports/{runtime}.error.json")
}

/// Makes one runtime's file from a finished job's artifact: fetches it and the evaluation
/// set, converts, measures the file in its runtime, stores it content-addressed. The worker
/// crate implements it (the conversion needs the engine, which control never links);
/// [`HandlerError::Invalid`] for a file that will never be made, anything else is retried.
#[async_trait::async_trait]
pub trait Exporter: Send + Sync {
    async fn export(&self, job: &Job, source: &ArtifactRecord, runtime: &str) -> Result<ExportOutput>;
}

/// What the export step did for one runtime.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Exported {
    /// Converted here; the new artifact's id.
    InPlace(String),
    /// Too large to convert here: handed to a Batch CPU stage (`tamp-batch-worker export`).
    Submitted,
    /// Recorded by an earlier delivery of the same event.
    Already(String),
    /// Will never be made; the reason (also stored, and announced as a quality alert).
    Failed(String),
}

/// The export function's handler: on `tamp.job.succeeded`, the job's final artifact is
/// converted for each of the recipe's targets that has a file of its own (TFLite), in place
/// when it is at most `in_place_max_bytes` and by a Batch CPU stage otherwise. At least once:
/// a redelivered event finds the export recorded and does nothing.
pub async fn on_job_succeeded(svc: &Services, ev: &TampEvent, exporter: &dyn Exporter, in_place_max_bytes: u64) -> Result<Vec<(String, Exported)>> {
    if ev.detail_type != format!("tamp.{}", EventKind::JobSucceeded.as_str()) {
        return Ok(Vec::new());
    }
    let _working = svc.guards.shared(&ev.job).await;
    let Some(j) = svc.meta.get_job(&ev.job).await? else { return Ok(Vec::new()) }; // erased since
    export_job(svc, &j, exporter, in_place_max_bytes).await
}

/// [`on_job_succeeded`] for a job already read.
async fn export_job(svc: &Services, j: &Job, exporter: &dyn Exporter, in_place_max_bytes: u64) -> Result<Vec<(String, Exported)>> {
    let Ok(recipe) = Recipe::from_yaml(&j.recipe_yaml) else { return Ok(Vec::new()) };
    let runtimes: Vec<&str> = recipe.targets.iter().filter(|t| t.converted()).map(|t| t.as_str()).collect();
    if runtimes.is_empty() {
        return Ok(Vec::new());
    }
    let source = final_artifact(svc.meta.as_ref(), j).await?;
    let mut done = Vec::new();
    for runtime in runtimes {
        let outcome = if source.size_bytes > in_place_max_bytes {
            match svc.meta.get_artifact(&export_id(&source.id, runtime)).await? {
                Some(a) => Exported::Already(a.id),
                None => {
                    svc.runner.submit_export(&j.id, runtime).await?;
                    Exported::Submitted
                }
            }
        } else {
            export_runtime(svc.store.as_ref(), svc.meta.as_ref(), svc.bus.as_ref(), svc.clock.now(), j, &source, runtime, exporter).await?
        };
        tracing::info!(job = %j.id, runtime, ?outcome, "export");
        done.push((runtime.to_owned(), outcome));
    }
    Ok(done)
}

/// After a restart of the local stack: the most recent `recent` jobs that succeeded while no
/// export step was running (the server stopped between a job's end and its export) are
/// exported now. Jobs already exported, or whose export can never be made, cost one lookup.
pub async fn catch_up(svc: &Services, exporter: &dyn Exporter, in_place_max_bytes: u64, recent: usize) -> Result<usize> {
    let mut exported = 0;
    for j in svc.meta.list_jobs(None, recent).await? {
        if j.state != tamp_domain::JobState::Succeeded {
            continue;
        }
        let _working = svc.guards.shared(&j.id).await;
        let Some(j) = svc.meta.get_job(&j.id).await? else { continue }; // erased since listed
        let done = export_job(svc, &j, exporter, in_place_max_bytes).await?;
        exported += done.iter().filter(|(_, e)| matches!(e, Exported::InPlace(_) | Exported::Submitted)).count();
    }
    Ok(exported)
}

/// A succeeded job's final artifact (its last stage's).
pub async fn final_artifact(meta: &dyn MetadataStore, j: &Job) -> Result<ArtifactRecord> {
    let last = j.stages.len().checked_sub(1).ok_or_else(|| HandlerError::Invalid(format!("job {} has no stages", j.id)))?;
    meta.get_artifact(&crate::handlers::artifact_id(&j.id, last))
        .await?
        .ok_or_else(|| HandlerError::Port(PortError::NotFound(format!("job {} succeeded but its stage {last} artifact is not recorded yet", j.id))))
}

/// Converts `source` for `runtime` with `exporter` unless that export is recorded already,
/// then records it and announces `artifact.exported`. A file that will never be made is
/// recorded as such (`export_error_key`) and announced as a quality alert, so the team
/// hears why `best?target_runtime=` has nothing; the source artifact is untouched.
#[allow(clippy::too_many_arguments)]
pub async fn export_runtime(
    store: &dyn ObjectStore,
    meta: &dyn MetadataStore,
    bus: &dyn EventBus,
    now: u64,
    j: &Job,
    source: &ArtifactRecord,
    runtime: &str,
    exporter: &dyn Exporter,
) -> Result<Exported> {
    if let Some(a) = meta.get_artifact(&export_id(&source.id, runtime)).await? {
        return Ok(Exported::Already(a.id));
    }
    // A file that will never be made is not tried again (nor announced again).
    match store.get(&export_error_key(&j.id, runtime)).await {
        Ok(doc) => {
            let reason = serde_json::from_slice::<serde_json::Value>(&doc).ok().and_then(|d| d["reason"].as_str().map(str::to_owned));
            return Ok(Exported::Failed(reason.unwrap_or_default()));
        }
        Err(PortError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match exporter.export(j, source, runtime).await {
        Ok(out) => {
            record_export(meta, bus, now, j, source, &out).await?;
            Ok(Exported::InPlace(export_id(&source.id, runtime)))
        }
        Err(HandlerError::Invalid(why)) => {
            let doc = serde_json::json!({ "job": j.id, "artifact": source.id, "runtime": runtime, "reason": why });
            store.put(&export_error_key(&j.id, runtime), serde_json::to_vec_pretty(&doc).unwrap_or_default()).await?;
            let detail = serde_json::json!({ "artifact": source.id, "export_failed": { "runtime": runtime, "reason": why } });
            let mut e = event(j, EventKind::QualityAlert, now, detail);
            e.id = format!("evt_{}_export_{runtime}_{}", j.id.trim_start_matches("job_"), EventKind::QualityAlert.as_str());
            bus.publish(&e).await?;
            Ok(Exported::Failed(why))
        }
        Err(e) => Err(e),
    }
}

/// Records an exported file as an artifact of its own runtime, ranked as the ONNX `source`
/// it came from (the same constraints, the same speed-up) with the metrics its runtime
/// measured, and announces it (`artifact.exported`, one id per job and runtime, so a
/// replayed delivery is dropped downstream).
pub async fn record_export(meta: &dyn MetadataStore, bus: &dyn EventBus, now: u64, j: &Job, source: &ArtifactRecord, e: &ExportOutput) -> Result<()> {
    let mut metadata = e.metadata.clone();
    for k in ["compression", "compatibility", "flags", "missed_constraints"] {
        metadata[k] = source.metadata[k].clone();
    }
    metadata["opset"] = serde_json::json!({ "tflite_schema": e.metadata["schema_version"] });
    metadata["source_metrics"] = source.metadata["metrics"].clone();
    let id = export_id(&source.id, &e.runtime);
    meta.put_artifact(&ArtifactRecord {
        id: id.clone(),
        runtime: e.runtime.clone(),
        key: e.output.artifact_key.clone(),
        metadata_key: e.output.metadata_key.clone(),
        sha256: e.output.sha256.clone(),
        size_bytes: e.output.size_bytes,
        metadata,
        created_at: now,
        ..source.clone()
    })
    .await?;
    let detail = serde_json::json!({
        "artifact": id,
        "source": source.id,
        "runtime": e.runtime,
        "sha256": e.output.sha256,
        "size_bytes": e.output.size_bytes,
        "metrics": e.metadata["metrics"],
    });
    let mut ev = event(j, EventKind::ArtifactExported, now, detail);
    ev.id = format!("evt_{}_export_{}_{}", j.id.trim_start_matches("job_"), e.runtime, EventKind::ArtifactExported.as_str());
    bus.publish(&ev).await?;
    Ok(())
}
