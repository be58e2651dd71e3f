//! The output folder's records: `best.onnx` and its metadata (`best.json`), the candidates
//! (`candidates.json`) and, last, the manifest with the sha256 of every input and output.
//! JSON files are written to a temporary name and renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sha2::Digest;
use tamp_domain::results::{
    ArtifactMetadata, Candidate, Compatibility, Compression, FileEntry, Manifest, ManifestSeeds, Measured, OnnxRuntimeCompatibility, Outcome, ResultMetrics,
    SourceModel, StageSeed, TaskMetric,
};
use tamp_engine::runtime::{self, SessionConfig};
use tamp_engine::{EngineError, eval};
use tamp_onnx::Model;

use crate::{Job, Result, io_err};

/// ONNX Runtime kernels that compute in integers (what "the artifact runs quantized" means).
const INTEGER_KERNELS: &[&str] = &[
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulInteger",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "ConvInteger",
    "MatMulNBits",
];

/// Copies candidate `chosen` to `best.onnx` and writes `best.json` and `candidates.json`;
/// returns the outcome with `chosen` filled in. [`finish`] writes the manifest.
pub fn write(job: &Job<'_>, mut outcome: Outcome, chosen: usize) -> Result<Outcome> {
    let out = job.out_dir;
    let best = &outcome.candidates[chosen];
    let best_path = out.join("best.onnx");
    std::fs::copy(out.join(&best.file), &best_path).map_err(io_err(&best_path))?;
    let ops = runtime::optimized_op_types(&best_path, &SessionConfig::default())?;
    let best_model = Model::load(&best_path)?;
    let artifact = metadata(job, &best_model, best, &outcome.baseline, &ops)?;
    write_json(&out.join("best.json"), &artifact)?;
    outcome.chosen = best.id.clone();
    write_json(&out.join("candidates.json"), &outcome)?;
    Ok(outcome)
}

/// Adds the runtime table (pre-flight verdicts, exported files) to `best.json`.
pub fn record_runtimes(out: &Path, runtimes: &[tamp_domain::results::RuntimeCheck]) -> Result<()> {
    let path = out.join("best.json");
    let mut artifact: ArtifactMetadata =
        serde_json::from_slice(&std::fs::read(&path).map_err(io_err(&path))?).map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))?;
    artifact.compatibility.runtimes = runtimes.to_vec();
    write_json(&path, &artifact)
}

/// Writes the manifest, the output folder's last file.
pub fn finish(job: &Job<'_>, outcome: &Outcome) -> Result<()> {
    write_json(&job.out_dir.join("manifest.json"), &manifest(job, outcome)?)
}

/// Writes `value` as pretty JSON through a temporary file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EngineError::Config(e.to_string()))? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The artifact record (the PRD's artifact JSON).
pub fn metadata(job: &Job<'_>, model: &Model, c: &Candidate, base: &Measured, ops: &BTreeMap<String, usize>) -> Result<ArtifactMetadata> {
    let ort = runtime::runtime_info()?;
    let opset: BTreeMap<String, i64> = model
        .proto
        .opset_import
        .iter()
        .map(|o| (o.domain.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "ai.onnx".into()), o.version.unwrap_or(0)))
        .collect();
    let integer_kernels = ops.iter().filter(|(k, _)| INTEGER_KERNELS.contains(&k.as_str())).map(|(k, v)| (k.clone(), *v)).collect();
    Ok(ArtifactMetadata {
        artifact_id: format!("sha256:{}", c.measured.sha256),
        format: "onnx".into(),
        uri: "best.onnx".into(),
        sha256: c.measured.sha256.clone(),
        size_bytes: c.measured.size_bytes,
        runtime: "onnxruntime".into(),
        opset,
        source: SourceModel { model: job.model_path.display().to_string(), sha256: base.sha256.clone(), size_bytes: base.size_bytes },
        policy: job.recipe.policy.name.clone(),
        candidate: c.id.clone(),
        compression: Compression {
            technique: c.technique.clone(),
            mode: c.mode.clone(),
            weights_bits: c.weights_bits,
            activations_bits: c.activations_bits,
            calibration: c.calibration.clone(),
            per_channel_weights: c.per_channel_weights,
            float_nodes: c.float_nodes.clone(),
            ratio: c.compression_ratio,
        },
        metrics: ResultMetrics {
            task: TaskMetric {
                name: c.measured.metric.clone(),
                value: c.measured.value,
                baseline: base.value,
                drop_pct: c.metric_drop_pct,
                eval_rows: c.measured.eval_rows,
            },
            latency_ms_p50: c.measured.latency_ms_p50,
            latency_ms_p95: c.measured.latency_ms_p95,
            baseline_latency_ms_p50: base.latency_ms_p50,
            speedup_p50: c.speedup_p50,
            throughput_b32: c.measured.throughput_b32,
            baseline_throughput_b32: base.throughput_b32,
        },
        compatibility: Compatibility {
            onnxruntime: OnnxRuntimeCompatibility {
                version: ort.version.clone(),
                execution_provider: "CPUExecutionProvider".into(),
                loads: true,
                optimized_op_types: ops.clone(),
                integer_kernels,
            },
            cpu_isa: c.target_isa.clone(),
            runtimes: Vec::new(),
        },
        flags: c.flags.clone(),
        missed_constraints: c.missed.clone(),
        created_by: format!("tamp {}", tamp_engine::TAMP_VERSION),
    })
}

/// A manifest entry; `shown` is the path recorded (outputs relative to the output folder).
fn file_entry(role: &str, path: &Path, shown: &str) -> Result<FileEntry> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(FileEntry { role: role.into(), path: shown.into(), sha256: hex::encode(sha2::Sha256::digest(&bytes)), size_bytes: bytes.len() as u64 })
}

fn input_entry(role: &str, path: &Path) -> Result<FileEntry> {
    file_entry(role, path, &path.display().to_string())
}

/// The manifest of a finished run (inputs, outputs, seeds, versions, machine).
pub fn manifest(job: &Job<'_>, outcome: &Outcome) -> Result<Manifest> {
    let mut inputs =
        vec![input_entry("model", job.model_path)?, input_entry("calibration", &job.calibration.path)?, input_entry("evaluation", &job.evaluation.path)?];
    if let Some(r) = job.recipe_path {
        inputs.push(input_entry("recipe", r)?);
    }
    let mut outputs = Vec::new();
    for c in &outcome.candidates {
        outputs.push(file_entry("candidate", &job.out_dir.join(&c.file), &c.file)?);
    }
    for (role, name) in [
        ("artifact", "best.onnx"),
        ("artifact_metadata", "best.json"),
        ("candidates", "candidates.json"),
        ("analysis", "analysis.json"),
        ("exported_artifact", "best.tflite"),
        ("exported_artifact_metadata", "best.tflite.json"),
    ] {
        if matches!(role, "analysis" | "exported_artifact" | "exported_artifact_metadata") && !job.out_dir.join(name).exists() {
            continue;
        }
        outputs.push(file_entry(role, &job.out_dir.join(name), name)?);
    }
    let stages = job.recipe.ptq_stages().map(|p| StageSeed { calibration: p.calibration.seed }).collect();
    let created_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Manifest {
        tamp_version: tamp_engine::TAMP_VERSION.into(),
        onnxruntime: runtime::runtime_info()?.version.clone(),
        created_unix,
        recipe: job.recipe.clone(),
        seeds: ManifestSeeds { stages, evaluation: 0 },
        inputs,
        outputs,
        chosen: outcome.chosen.clone(),
        cpu: eval::cpu_info(),
    })
}
