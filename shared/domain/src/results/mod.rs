//! What a compression run produces, as types: the measured baseline and candidates, the
//! outcome, each technique's details, the artifact record (`best.json`) and the manifest.
//! The engine writes them, the worker uploads them, the control plane, reports, search, the
//! UI and the tests read them; serde keeps the JSON the files have always had.

mod analysis;
mod artifact;
mod details;

pub use analysis::{Analysis, CalibrationCoverage, CohortResult, LayerCoverage, LayerError, OutlierResult, Profile, ShiftResult};

pub use artifact::{
    ArtifactMetadata, Compatibility, Compression, CpuInfo, ExportMetrics, ExportedArtifact, ExportedTensor, FileEntry, Manifest, ManifestSeeds,
    OnnxRuntimeCompatibility, ResultMetrics, RuntimeCheck, RuntimeProblem, SourceModel, StageSeed, TaskMetric,
};
pub use details::{
    Agreement, BlockCurve, CascadeTiming, ChannelGroupLevel, ChannelPruning, ClusterDetails, ClusteredLayer, CorrectedLayer, Details, EarlyExitDetails,
    EqualizedPair, ExitCurvePoint, FactorisedLayer, GroupCurve, HeadBlockLevel, HeadPruning, IterativeGroup, IterativePruning, LayerCurve, LowrankDetails,
    PrePasses, PtqDetails, SmoothedSite, SparseLayer, SparsityDetails, TrajectoryStep,
};

use serde::{Deserialize, Serialize};

use crate::recipe::Objective;

/// Whether a larger value of the task metric is better (errors, losses, error rates and
/// perplexity are not). The one definition the engine, the judge and the report share.
pub fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "mse" | "mae" | "wer" | "cer" | "perplexity")
}

/// Relative drop of `value` from `baseline`, in percent of the baseline (negative: improved).
pub fn metric_drop_pct(metric: &str, baseline: f64, value: f64) -> f64 {
    let delta = if higher_is_better(metric) { baseline - value } else { value - baseline };
    if baseline.abs() > f64::EPSILON { 100.0 * delta / baseline.abs() } else { 100.0 * delta }
}

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
    /// Speed-up over the baseline: the median of interleaved baseline/candidate timing
    /// ratios where measured that way (else baseline P50 / candidate P50).
    pub speedup_p50: f64,
    /// The 95 % (or wider) confidence interval of `speedup_p50`; `faster` means it lies above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speedup_interval: Option<[f64; 2]>,
    pub faster: bool,
    /// Constraints this candidate misses.
    pub missed: Vec<String>,
    pub flags: Vec<String>,
    /// Size after deflate (what a zip or an HTTP `Content-Encoding` ships).
    #[serde(default)]
    pub coded_size_bytes: u64,
    /// The CPU instruction set an int8 candidate was quantized for (`vnni`, `amx`, or
    /// `avx2`/`avx512` with uint8 weights for the U8U8 kernels), where it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_isa: Option<String>,
    /// What the technique did (per-layer ranks, cluster entropy, sensitivity curves, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
    /// Training after the stage's pass (fine-tuning, QAT), when the stage asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainReport>,
}

/// What a training run did (fine-tuning after a pass, or QAT).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The task metric before training (same rows and metric as `measured`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_before: Option<f64>,
    pub steps: usize,
    pub epochs: f64,
    pub rows: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// `ce`, `ce+kl`, `kl`, `cosine`, `mse`.
    pub loss: String,
    /// Mean loss over the first and the last 10 % of steps.
    pub loss_start: f64,
    pub loss_end: f64,
    /// Weights kept sparse by masked updates: tensors, and zeros held.
    pub masked_tensors: usize,
    pub masked_zeros: usize,
    /// Weights trained through fake quantization (QAT).
    pub fake_quantized: usize,
    pub trainable_params: usize,
    pub wall_seconds: f64,
    /// Peak resident memory of the process while training, MiB (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// `lr: auto`: every trial, in order; the chosen rate is `lr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr_trials: Vec<LrTrial>,
    /// Where it trained: `cuda:0` or `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// One trial of the learning-rate search (successive halving).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrTrial {
    pub lr: f64,
    pub round: usize,
    pub steps: usize,
    /// The objective's loss on the held-back training rows (lower is better).
    pub validation_loss: f64,
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
    /// What model preparation changed before any technique ran (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preparation: Option<Preparation>,
    /// Recipe stages that changed nothing, with the reason (the run's exit status says so too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
    /// What the user should know although the run succeeded (a GPU stage that trained on the
    /// CPU, …); the service keeps them in the stage's record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Model preparation (`tamp_engine::prepare`): what was done to a model from another
/// toolchain before any technique ran. Outputs are unchanged (each step is exact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preparation {
    /// (from, to) when the default-domain opset was upgraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opset_upgraded: Option<(i64, i64)>,
    /// Nodes rewritten by the upgrade, by op type.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rewritten: std::collections::BTreeMap<String, usize>,
    /// Initializers that were also graph inputs (the IR-3 convention), now constants.
    #[serde(default)]
    pub initializer_inputs_removed: usize,
    /// Weights held in `Constant` nodes, moved to initializers.
    #[serde(default)]
    pub constant_nodes_to_initializers: usize,
    /// Nodes removed by constant folding for the declared input shapes (shape paths,
    /// identities, dropouts, dead nodes).
    #[serde(default)]
    pub nodes_folded: usize,
    /// `Shape`/`Size` nodes left (their input has dynamic dimensions).
    #[serde(default)]
    pub shape_nodes_left: usize,
    /// Hard-swishes spelled out as `x · clip(x + 3, 0, 6) / 6`, rewritten as one `HardSwish`.
    #[serde(default)]
    pub hard_swishes_fused: usize,
    /// `Pow(x, 2)` rewritten as `Mul(x, x)` (same values; ONNX Runtime's `Pow` is the
    /// general power kernel, several times slower).
    #[serde(default)]
    pub squares_as_mul: usize,
    /// One line per step, for logs and reports.
    #[serde(default)]
    pub steps: Vec<String>,
}

impl Preparation {
    /// True when preparation changed nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl Outcome {
    /// The chosen candidate.
    pub fn best(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.id == self.chosen)
    }
}
