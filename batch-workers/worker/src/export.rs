//! A succeeded job's final artifact converted for one runtime, over the ports: fetch the
//! ONNX artifact and the evaluation set, convert and measure with the stage runner's
//! exporter (`tamp_pipeline::export::export_file`), store the file and its record under
//! content-addressed keys beside the artifact. [`InPlace`] is the export function's
//! [`Exporter`] (the Lambda, and `tamp serve`'s export step); `tamp-batch-worker export`
//! runs the same for artifacts too large for a Lambda.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::anyhow;
use tamp_control::exports::{ExportOutput, Exporter};
use tamp_control::handlers::HandlerError;
use tamp_domain::Recipe;
use tamp_domain::job::{Job, StageOutput};
use tamp_domain::recipe::Target;
use tamp_domain::results::ExportedArtifact;
use tamp_engine::Dataset;
use tamp_ports::{ArtifactRecord, ObjectStore, PortError};

use crate::Failure;

/// Converts in this process, in a scratch folder under `scratch` (removed after).
pub struct InPlace {
    pub files: Arc<dyn ObjectStore>,
    pub scratch: PathBuf,
}

#[async_trait::async_trait]
impl Exporter for InPlace {
    async fn export(&self, job: &Job, source: &ArtifactRecord, runtime: &str) -> Result<ExportOutput, HandlerError> {
        let dir = self.scratch.join(format!("export-{}-{runtime}-{}", job.id, std::process::id()));
        let out = export(self.files.as_ref(), job, source, runtime, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        out.map_err(|f| match f {
            Failure::BadInput(_) => HandlerError::Invalid(f.message()),
            Failure::Transient(_) => HandlerError::Port(PortError::Unavailable(f.message())),
        })
    }
}

/// The recipe's spelling of a runtime, read by the recipe's own deserializer.
fn target(runtime: &str) -> Option<Target> {
    serde_json::from_value(serde_json::Value::String(runtime.to_owned())).ok()
}

/// Converts `source` (job `job`'s final ONNX artifact) for `runtime` in `work`: the file
/// and its record go to `artifacts/<job>/<stage>/<sha256>.<ext>` and `….<ext>.json`.
pub async fn export(files: &dyn ObjectStore, job: &Job, source: &ArtifactRecord, runtime: &str, work: &Path) -> Result<ExportOutput, Failure> {
    let bad = |e: anyhow::Error| Failure::BadInput(e);
    let transient = |e: anyhow::Error| Failure::Transient(e);
    let target = target(runtime).filter(|t| t.converted()).ok_or_else(|| bad(anyhow!("Tamp writes no file of its own for runtime '{runtime}'")))?;
    let recipe = Recipe::from_yaml(&job.recipe_yaml).map_err(|e| bad(e.into()))?;
    let eval_key = job.inputs.evaluation.clone().ok_or_else(|| bad(anyhow!("the job has no evaluation data to measure the export on")))?;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work.join("in")).map_err(|e| transient(anyhow!("{}: {e}", work.display())))?;
    let model = work.join("in").join("best.onnx");
    files.get_to_file(&source.key, &model).await.map_err(|e| transient(anyhow!("fetching {}: {e}", source.key)))?;
    let eval_path = work.join("in").join("eval.npz");
    files.get_to_file(&eval_key, &eval_path).await.map_err(|e| transient(anyhow!("fetching {eval_key}: {e}")))?;
    let out = work.join("out");
    let (m, o) = (model, out.clone());
    // Converting and measuring is CPU work: off the async threads.
    let made = tokio::task::spawn_blocking(move || -> Result<ExportedArtifact, Failure> {
        let evaluation = Dataset::load(&eval_path).map_err(|e| Failure::BadInput(anyhow!("{eval_key}: {e}")))?;
        tamp_pipeline::export::export_file(&m, &o, &recipe, &evaluation, target).map_err(|e| match e {
            tamp_engine::EngineError::Io { .. } => Failure::Transient(e.into()),
            other => Failure::BadInput(anyhow!("the job's best artifact: {other}")),
        })
    })
    .await
    .map_err(|e| bad(anyhow!("Tamp hit an internal error exporting for {runtime} ({e}); please report it with the model and recipe")))??;
    if let Some(why) = &made.not_evaluated {
        println!("{}: {runtime} file written but not measured: {why}", job.id);
    }
    let ext = made.format.clone();
    let (file, record) = (out.join(format!("best.{ext}")), out.join(format!("best.{ext}.json")));
    let base = format!("artifacts/{}/{}", job.id, source.stage);
    let (key, meta_key) = (format!("{base}/{}.{ext}", made.sha256), format!("{base}/{}.{ext}.json", made.sha256));
    files.put_if_absent_file(&key, &file).await.map_err(|e| transient(e.into()))?;
    let body = std::fs::read(&record).map_err(|e| transient(anyhow!("{}: {e}", record.display())))?;
    files.put_if_absent(&meta_key, body.clone()).await.map_err(|e| transient(e.into()))?;
    Ok(ExportOutput {
        runtime: made.runtime.clone(),
        output: StageOutput { artifact_key: key, sha256: made.sha256.clone(), size_bytes: made.size_bytes, metadata_key: meta_key, warnings: vec![] },
        metadata: serde_json::from_slice(&body).map_err(|e| transient(e.into()))?,
    })
}
