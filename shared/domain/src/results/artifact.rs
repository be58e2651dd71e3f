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
