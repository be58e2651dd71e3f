//! The artifact record (`best.json`, the PRD's artifact JSON) and the run manifest
//! (`manifest.json`: every input and output with its sha256, the recipe, seeds, versions).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Recipe;

/// The record of the chosen artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMetadata {
    /// `sha256:<hex>` of the file.
    pub artifact_id: String,
    pub format: String,
    /// Relative to the output folder.
    pub uri: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub runtime: String,
    /// Opset per domain (`ai.onnx` for the default one).
    pub opset: BTreeMap<String, i64>,
    pub source: SourceModel,
    pub policy: String,
    pub candidate: String,
    pub compression: Compression,
    pub metrics: ResultMetrics,
    pub compatibility: Compatibility,
    pub flags: Vec<String>,
    pub missed_constraints: Vec<String>,
    pub created_by: String,
}

/// The model a job started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceModel {
    pub model: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// How the artifact was compressed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    pub technique: String,
    pub mode: String,
    pub weights_bits: u8,
    pub activations_bits: u8,
    pub calibration: Option<String>,
    pub per_channel_weights: bool,
    pub float_nodes: Vec<String>,
    pub ratio: f64,
}

/// The artifact's numbers next to the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMetrics {
    pub task: TaskMetric,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub baseline_latency_ms_p50: f64,
    pub speedup_p50: f64,
    pub throughput_b32: Option<f64>,
    pub baseline_throughput_b32: Option<f64>,
}

/// The task metric, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMetric {
    pub name: String,
    pub value: f64,
    pub baseline: f64,
    pub drop_pct: f64,
    pub eval_rows: usize,
}

/// Runtimes the artifact was checked on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compatibility {
    pub onnxruntime: OnnxRuntimeCompatibility,
    /// The CPU instruction set int8 weights were quantized for (uint8 weights without VNNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_isa: Option<String>,
    /// Every runtime the recipe targets: the pre-flight verdict and, for runtimes other than
    /// ONNX Runtime, the exported file (the API's runtime badges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<RuntimeCheck>,
}

/// One thing a runtime cannot take: where (node, input or recipe stage), the op, why, and
/// what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeProblem {
    /// The node (or input / initializer / `policy.stages[i]`); empty for model-wide problems.
    pub node: String,
    pub op: String,
    #[serde(default)]
    pub runtime: String,
    pub why: String,
    pub fix: String,
}

impl RuntimeProblem {
    pub fn at(node: &str, op: &str, why: &str, fix: &str) -> Self {
        Self { node: node.to_owned(), op: op.to_owned(), runtime: String::new(), why: why.to_owned(), fix: fix.to_owned() }
    }

    pub fn model(why: String) -> Self {
        Self { node: String::new(), op: String::new(), runtime: String::new(), why, fix: "repair the model".into() }
    }

    /// The same problem, attributed to `runtime`.
    pub fn on(mut self, runtime: &str) -> Self {
        runtime.clone_into(&mut self.runtime);
        self
    }
}

impl std::fmt::Display for RuntimeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rt = if self.runtime.is_empty() { String::new() } else { format!("{}: ", self.runtime) };
        if self.node.is_empty() {
            write!(f, "{rt}{} — {}", self.why, self.fix)
        } else {
            write!(f, "{rt}node '{}' ({}): {} — {}", self.node, self.op, self.why, self.fix)
        }
    }
}

/// One runtime's verdict: the pre-flight result, and the artifact exported for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeCheck {
    pub runtime: String,
    pub compatible: bool,
    pub problems: Vec<RuntimeProblem>,
    /// The exported file (relative to the output folder), where one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

/// A model written for a runtime other than ONNX Runtime (`best.tflite` + `best.tflite.json`),
/// measured in that runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedArtifact {
    pub runtime: String,
    pub format: String,
    /// Relative to the output folder.
    pub uri: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The file format's version (e.g. `TFLite schema 3`).
    pub schema_version: String,
    /// `fp32`, `int8`, `dynamic-int8`.
    pub precision: String,
    /// The ONNX artifact it was converted from.
    pub source_sha256: String,
    /// `OP:input-type → count`.
    pub ops: BTreeMap<String, usize>,
    /// Input layouts the runtime expects (`NHWC` for 4-D image inputs).
    pub inputs: Vec<ExportedTensor>,
    pub outputs: Vec<ExportedTensor>,
    pub export_seconds: f64,
    /// Measured in the runtime on the evaluation set; `None` where the runtime could not be
    /// loaded (the reason is in `not_evaluated`).
    pub metrics: Option<ExportMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_evaluated: Option<String>,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedTensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub layout: String,
}

/// The exported model's quality and speed in its runtime, beside the ONNX artifact's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportMetrics {
    /// E.g. `LiteRT 2.3.0 (CPU, XNNPACK)`.
    pub runtime_version: String,
    pub metric: String,
    pub value: f64,
    /// The same metric of the ONNX artifact in ONNX Runtime.
    pub onnx_value: f64,
    /// Share of rows whose top-1 equals the ONNX artifact's (classifiers).
    pub top1_agreement: Option<f64>,
    pub eval_rows: usize,
    pub latency_ms_p50: f64,
    pub onnx_latency_ms_p50: f64,
}

/// What ONNX Runtime made of the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnnxRuntimeCompatibility {
    pub version: String,
    pub execution_provider: String,
    pub loads: bool,
    /// Op types of the optimized graph, with counts.
    pub optimized_op_types: BTreeMap<String, usize>,
    /// The integer kernels among them.
    pub integer_kernels: BTreeMap<String, usize>,
}

/// The machine the numbers were measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    pub model: String,
    pub logical_cores: usize,
    pub features: Vec<String>,
}

/// One file a run read or wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub role: String,
    /// Inputs as given; outputs relative to the output folder.
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// Seeds that make a run repeatable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSeeds {
    pub stages: Vec<StageSeed>,
    pub evaluation: u64,
}

/// The seed of one seeded stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSeed {
    pub calibration: u64,
}

/// `manifest.json`, written last: what went in, what came out, and how to repeat it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tamp_version: String,
    pub onnxruntime: String,
    pub created_unix: u64,
    pub recipe: Recipe,
    pub seeds: ManifestSeeds,
    pub inputs: Vec<FileEntry>,
    pub outputs: Vec<FileEntry>,
    pub chosen: String,
    pub cpu: CpuInfo,
}
