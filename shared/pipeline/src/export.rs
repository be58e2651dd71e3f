//! The recipe's `targets` beyond ONNX Runtime: the pre-flight check before any compute, and
//! after the best candidate is chosen, its conversion (`best.tflite`) with a record of what
//! was written (`best.tflite.json`) and the runtime table in `best.json`
//! (`compatibility.runtimes`).

use std::path::Path;
use std::time::Instant;

use sha2::Digest;
use tamp_domain::recipe::Target;
use tamp_domain::results::{ExportMetrics, ExportedArtifact, ExportedTensor, RuntimeCheck};
use tamp_engine::EngineError;
use tamp_export::tflite::{self, Options, Precision};
use tamp_onnx::Model;

use crate::{Job, Result, artifacts, io_err};

/// Before any compute: every targeted runtime can take the model and the recipe's output
/// forms, or the run stops with one line per problem (node, op, runtime, why, fix).
pub fn preflight(job: &Job<'_>, model: &Model) -> Result<Vec<RuntimeCheck>> {
    let checks = tamp_export::compat::preflight(model, job.recipe);
    let problems = tamp_export::compat::problems(&checks);
    if problems.is_empty() {
        return Ok(checks);
    }
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(EngineError::Config(format!(
        "the recipe's targets cannot take this model or recipe ({} problem{}):\n  {}",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" },
        lines.join("\n  ")
    )))
}

/// Converts `best.onnx` for each non-ONNX target; fills in each check's artifact.
pub fn export_targets(job: &Job<'_>, checks: &mut [RuntimeCheck]) -> Result<Vec<ExportedArtifact>> {
    let mut exported = Vec::new();
    for check in checks.iter_mut() {
        if check.runtime != Target::Tflite.as_str() {
            continue;
        }
        exported.push(export_file(&job.out_dir.join("best.onnx"), job.out_dir, job.recipe, job.evaluation, Target::Tflite)?);
        check.artifact = Some("best.tflite".into());
    }
    Ok(exported)
}

/// Converts the ONNX model at `source` for `target` into `out_dir` (`best.tflite` and its
/// record `best.tflite.json`), measured in the target's runtime on the recipe's evaluation
/// rows beside the source in ONNX Runtime. Used by `tamp compress` at the end of its run and
/// by the export function (and its Batch stage) on a finished job's artifact.
pub fn export_file(source: &Path, out_dir: &Path, recipe: &tamp_domain::Recipe, evaluation: &tamp_engine::Dataset, target: Target) -> Result<ExportedArtifact> {
    if target != Target::Tflite {
        return Err(EngineError::Config(format!("Tamp has no exporter for {}: its artifact is the ONNX file itself", target.as_str())));
    }
    std::fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let best = Model::load(source)?;
    tflite_artifact(out_dir, recipe, evaluation, &best, source)
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok((hex::encode(sha2::Sha256::digest(&bytes)), bytes.len() as u64))
}

fn tflite_artifact(out: &Path, recipe: &tamp_domain::Recipe, evaluation: &tamp_engine::Dataset, best: &Model, best_path: &Path) -> Result<ExportedArtifact> {
    let precision = Precision::of(best);
    let started = Instant::now();
    let e = tflite::export(best, &Options { precision, ..Options::default() }).map_err(|ps| {
        let lines: Vec<String> = ps.iter().map(ToString::to_string).collect();
        EngineError::Config(format!("the chosen candidate cannot be written for tflite:\n  {}", lines.join("\n  ")))
    })?;
    let path = out.join("best.tflite");
    let tmp = out.join("best.tflite.tmp");
    std::fs::write(&tmp, &e.bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    let export_seconds = started.elapsed().as_secs_f64();
    let (sha256, size_bytes) = sha256_file(&path)?;
    let (source_sha256, _) = sha256_file(best_path)?;
    let tensors = |v: &[(String, Vec<i32>)]| {
        v.iter()
            .map(|(name, shape)| ExportedTensor {
                name: name.clone(),
                shape: shape.clone(),
                layout: if shape.len() == 4 { "NHWC".into() } else { "as ONNX".into() },
            })
            .collect()
    };
    let (metrics, not_evaluated) = match evaluate(recipe, evaluation, best, &path, &e.inputs) {
        Ok(m) => (Some(m), None),
        Err(why) => (None, Some(why)),
    };
    let artifact = ExportedArtifact {
        runtime: "tflite".into(),
        format: "tflite".into(),
        uri: "best.tflite".into(),
        sha256,
        size_bytes,
        schema_version: "TFLite schema 3".into(),
        precision: precision.as_str().into(),
        source_sha256,
        ops: e.op_counts,
        inputs: tensors(&e.inputs),
        outputs: tensors(&e.outputs),
        export_seconds,
        metrics,
        not_evaluated,
        created_by: format!("tamp {}", tamp_engine::TAMP_VERSION),
    };
    artifacts::write_json(&out.join("best.tflite.json"), &artifact)?;
    Ok(artifact)
}

/// The `.tflite` measured in LiteRT on the evaluation rows the candidates were judged on,
/// beside the ONNX artifact in ONNX Runtime; `Err` says why it could not be (no LiteRT
/// library, an input LiteRT cannot take), which the record keeps.
fn evaluate(
    recipe: &tamp_domain::Recipe,
    data: &tamp_engine::Dataset,
    best: &Model,
    tflite: &Path,
    inputs: &[(String, Vec<i32>)],
) -> std::result::Result<ExportMetrics, String> {
    let ev = &recipe.evaluation;
    let indices: Vec<usize> = match ev.samples {
        Some(n) => data.sample(n, 0),
        None => (0..data.rows).collect(),
    };
    let metric = match &ev.metric {
        Some(m) => m.clone(),
        None => tamp_engine::eval::default_metric(data).ok_or("the evaluation set has no labels")?.to_owned(),
    };
    let names: Vec<String> = inputs.iter().map(|(n, _)| n.clone()).collect();
    let m = tamp_engine::litert::measure(tflite, best, data, &indices, &metric, ev.output.as_deref(), &names, ev.latency_runs.clamp(10, 1000))
        .map_err(|e| e.to_string())?;
    Ok(ExportMetrics {
        runtime_version: format!("LiteRT {} (CPU, XNNPACK, 1 thread)", tamp_engine::litert::LITERT_VERSION),
        metric,
        value: m.metric,
        onnx_value: m.onnx_metric,
        top1_agreement: Some(m.top1_agreement),
        eval_rows: m.rows,
        latency_ms_p50: m.latency_ms_p50,
        onnx_latency_ms_p50: m.onnx_latency_ms_p50,
    })
}
