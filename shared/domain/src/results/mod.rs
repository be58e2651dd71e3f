//! What a compression run produces, as types: the measured baseline and candidates, the
//! outcome, each technique's details, the artifact record (`best.json`) and the manifest.
//! The engine writes them, the worker uploads them, the control plane, reports, search, the
//! UI and the tests read them; serde keeps the JSON the files have always had.

mod artifact;
mod details;

pub use artifact::{
    ArtifactMetadata, Compatibility, Compression, CpuInfo, FileEntry, Manifest, ManifestSeeds, OnnxRuntimeCompatibility, ResultMetrics, SourceModel, StageSeed,
    TaskMetric,
};
pub use details::{
    Agreement, BlockCurve, ChannelGroupLevel, ChannelPruning, ClusterDetails, ClusteredLayer, CorrectedLayer, Details, EqualizedPair, FactorisedLayer,
    GroupCurve, HeadBlockLevel, HeadPruning, IterativeGroup, IterativePruning, LayerCurve, LowrankDetails, PrePasses, PtqDetails, SparseLayer, SparsityDetails,
    TrajectoryStep,
};

use serde::{Deserialize, Serialize};

use crate::recipe::Objective;

/// A model measured on the evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub metric: String,
    pub value: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    /// Samples per second at batch 32 (absent when the model's batch size is fixed).
    pub throughput_b32: Option<f64>,
    pub size_bytes: u64,
    pub sha256: String,
    pub eval_rows: usize,
    /// Multiply-accumulates per sample (FLOPs ≈ 2×), counted on one evaluation row.
    #[serde(default)]
    pub macs_per_sample: Option<u64>,
}

/// One candidate model and how it fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    /// Index of the recipe stage that made it.
    pub stage: usize,
    pub technique: String,
    pub mode: String,
    pub weights_bits: u8,
    pub activations_bits: u8,
    pub calibration: Option<String>,
    pub per_channel_weights: bool,
    /// Layers kept in float (by request or by the accuracy-aware fallback).
    pub float_nodes: Vec<String>,
    /// Path relative to the output folder.
    pub file: String,
    pub measured: Measured,
    pub compression_ratio: f64,
    /// Relative drop of the task metric, in percent of the baseline (negative: improved).
    pub metric_drop_pct: f64,
    /// Baseline P50 / candidate P50.
    pub speedup_p50: f64,
    pub faster: bool,
    /// Constraints this candidate misses.
    pub missed: Vec<String>,
    pub flags: Vec<String>,
    /// Size after deflate (what a zip or an HTTP `Content-Encoding` ships).
    #[serde(default)]
    pub coded_size_bytes: u64,
    /// What the technique did (per-layer ranks, cluster entropy, sensitivity curves, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

impl Candidate {
    /// Wall time of the pass that made this candidate (evaluation excluded), when recorded.
    pub fn pass_seconds(&self) -> Option<f64> {
        self.details.as_ref().and_then(Details::pass_seconds)
    }
}

/// What a run produced (`candidates.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub baseline: Measured,
    pub candidates: Vec<Candidate>,
    /// Candidate id of `best.onnx`.
    pub chosen: String,
    /// Why it was chosen (and which constraints it misses, if every candidate misses some).
    pub reason: String,
    pub objective: Objective,
}

impl Outcome {
    /// The chosen candidate.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.id == self.chosen)
    }
}
