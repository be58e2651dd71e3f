//! The recipe (policy) a user hands Tamp with a model, in YAML. The PRD's form loads
//! unchanged:
//!
//! ```yaml
//! policy:
//!   name: ptq-8bit
//!   stages:
//!     - ptq:
//!         bits: {weights: [8], activations: [8]}
//!         calibration: {method: kl, samples: 2048}
//!         per_channel_weights: true
//!         symmetric: true
//! constraints: {max_metric_drop_pct: 1.0}
//! ```
//!
//! A recipe may also carry the job (`model`, `data`, `targets`, `constraints`, `objective`).
//! Every struct denies unknown keys; errors name the key, the line and the allowed keys.
//! Parsing checks shape, [`Recipe::validate`] checks values and what this build supports.

use serde::{Deserialize, Serialize};

/// Recipe format version this build reads.
pub const RECIPE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecipeError {
    /// YAML that does not parse or does not fit the schema (serde's message names the key
    /// path, the allowed keys and the line).
    #[error("recipe: {0}")]
    Schema(String),
    /// A value the schema accepts but Tamp cannot use.
    #[error("recipe{}: `{path}`: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid { path: String, line: Option<usize>, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default = "recipe_version")]
    pub version: u32,
    pub policy: Policy,
    /// The model file, relative to the recipe (a job's upload folder) when not given elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub data: DataRefs,
    #[serde(default = "default_targets")]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub constraints: Constraints,
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub evaluation: Evaluation,
}

fn recipe_version() -> u32 {
    RECIPE_VERSION
}

fn default_targets() -> Vec<Target> {
    vec![Target::Onnxruntime]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Each item is a one-key map (`- ptq: {...}`), not a YAML tag.
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    pub stages: Vec<Stage>,
}

/// One stage of a policy: a map with one key naming the technique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Ptq(PtqStage),
    Pruning(PruningStage),
    Lowrank(LowrankStage),
    #[serde(alias = "cluster")]
    Clustering(ClusterStage),
    // Known techniques this build does not run yet (refused by name and line); their settings
    // are kept as written so a newer Tamp reads the same recipe.
    Distillation(serde_yaml_ng::Value),
    Qat(serde_yaml_ng::Value),
    Search(serde_yaml_ng::Value),
}

impl Stage {
    pub fn kind(&self) -> &'static str {
        match self {
            Stage::Ptq(_) => "ptq",
            Stage::Pruning(_) => "pruning",
            Stage::Lowrank(_) => "lowrank",
            Stage::Clustering(_) => "clustering",
            Stage::Distillation(_) => "distillation",
            Stage::Qat(_) => "qat",
            Stage::Search(_) => "search",
        }
    }
}

/// Pruning. `structured_channel` removes whole channels (the graph gets smaller and
/// faster); with `sensitivity`, per-group levels are allocated from measured sensitivity
/// curves to meet `target_sparsity` (the fraction of prunable channels removed) with the
/// least predicted metric drop, and a uniform candidate is built beside it for comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruningStage {
    #[serde(rename = "type")]
    pub kind: PruningType,
    pub target_sparsity: f64,
    pub schedule: PruningSchedule,
    pub sensitivity: bool,
    /// Sparsity levels the sensitivity curves are measured at.
    pub levels: Vec<f64>,
    /// Evaluation rows per sensitivity point (seeded subset).
    pub sensitivity_rows: usize,
    /// Every group keeps at least this many channels.
    pub min_channels: usize,
    /// Kept channel counts are rounded to a multiple of this (SIMD-friendly widths: ONNX
    /// Runtime blocks channels by 8 or 16; odd widths can make a smaller model slower).
    pub round_to: usize,
    /// Fine-tune after pruning (arrives with training; refused until then).
    pub fine_tune: bool,
    pub seed: u64,
    /// `block` pruning: `RxC` blocks (`1x4`: one output × four consecutive inputs) or `N:M`
    /// (`2:4`: two of every four consecutive inputs kept).
    pub pattern: String,
    /// `unstructured` pruning: one magnitude threshold for all layers (`global`) or the
    /// same fraction of each layer (`per_layer`, with a sensitivity-allocated candidate).
    pub scope: PruningScope,
    /// `unstructured` / `block`: layers with fewer weights stay dense.
    pub min_elements: usize,
    /// `iterative`: the number of steps to reach `target_sparsity`, evaluated between steps.
    pub steps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningScope {
    Global,
    PerLayer,
}

/// Largest side of a pruning block (`RxC`).
pub const MAX_BLOCK_SIDE: usize = 1024;

/// Largest recipe accepted, in bytes (recipes are small; a 20 MB one was once stored in
/// every job record).
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;

/// Most timed runs a recipe may ask for (`evaluation.latency_runs`).
pub const MAX_LATENCY_RUNS: usize = 100_000;

/// Most calibration samples a recipe may ask for.
pub const MAX_CALIBRATION_SAMPLES: usize = 1_000_000;

/// How `block` pruning zeroes weights, parsed from `pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparsityPattern {
    Unstructured,
    /// Blocks of `rows` outputs × `cols` consecutive reduction elements.
    Block {
        rows: usize,
        cols: usize,
    },
    /// Of every `m` consecutive reduction elements, the `n` largest stay.
    NOfM {
        n: usize,
        m: usize,
    },
}

impl SparsityPattern {
    /// Parses `1x4` (block) or `2:4` (N:M, N kept of every M).
    pub fn parse(s: &str) -> Option<Self> {
        if let Some((n, m)) = s.split_once(':') {
            let (n, m): (usize, usize) = (n.trim().parse().ok()?, m.trim().parse().ok()?);
            return (n >= 1 && m > n && m <= 64).then_some(Self::NOfM { n, m });
        }
        let (r, c) = s.split_once(['x', '×'])?;
        let (rows, cols): (usize, usize) = (r.trim().parse().ok()?, c.trim().parse().ok()?);
        // Bounded, so no size computed from a pattern can overflow (a 2^32 x 2^32 pattern did).
        let fits = (1..=MAX_BLOCK_SIDE).contains(&rows) && (1..=MAX_BLOCK_SIDE).contains(&cols);
        (fits && rows * cols > 1).then_some(Self::Block { rows, cols })
    }
}

impl PruningStage {
    /// The weight pattern of `unstructured` / `block` pruning.
    pub fn sparsity_pattern(&self) -> SparsityPattern {
        match self.kind {
            PruningType::Block => SparsityPattern::parse(&self.pattern).unwrap_or(SparsityPattern::Block { rows: 1, cols: 4 }),
            _ => SparsityPattern::Unstructured,
        }
    }
}

impl Default for PruningStage {
    fn default() -> Self {
        Self {
            kind: PruningType::StructuredChannel,
            target_sparsity: 0.3,
            schedule: PruningSchedule::Oneshot,
            sensitivity: true,
            levels: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            sensitivity_rows: 512,
            min_channels: 4,
            round_to: 8,
            fine_tune: false,
            seed: 0,
            pattern: "1x4".into(),
            scope: PruningScope::Global,
            min_elements: 256,
            steps: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningType {
    StructuredChannel,
    Unstructured,
    Block,
    AttentionHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningSchedule {
    Oneshot,
    Iterative,
}

/// Weight clustering: each layer's weights become indices into a small codebook (k-means,
/// k-means++ initialisation, seeded), stored as uint8 indices + float codebook and rebuilt
/// with standard ops (ONNX Runtime folds them at load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterStage {
    /// Codebook size per group: 2..=256 (16, 64, 256 are the usual ones).
    pub clusters: u32,
    pub granularity: ClusterGranularity,
    /// Layers with fewer weights than this stay as they are.
    pub min_elements: usize,
    pub seed: u64,
    /// Lloyd iterations at most.
    pub iterations: u32,
    /// Fold BatchNorm into the preceding Conv/Gemm first (so the clustered weights carry it).
    pub fold_batch_norm: bool,
}

impl Default for ClusterStage {
    fn default() -> Self {
        Self { clusters: 16, granularity: ClusterGranularity::PerLayer, min_elements: 256, seed: 0, iterations: 30, fold_batch_norm: true }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterGranularity {
    /// One codebook per layer.
    PerLayer,
    /// One codebook per output channel.
    PerChannel,
}

/// Low-rank factorisation of MatMul weights by truncated SVD: `x·W` becomes `(x·A)·B`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LowrankStage {
    pub method: LowrankMethod,
    /// Fraction of each factorised layer's parameters to keep (rank = ratio·m·n/(m+n)).
    pub target_ratio: f64,
    /// Instead of `target_ratio`: the smallest rank keeping this fraction of Σσ².
    pub energy: Option<f64>,
    /// Layers whose smaller side is below this stay as they are.
    pub min_dim: usize,
    /// Layers with fewer parameters than this stay as they are (e.g. to take a
    /// transformer's FFN layers and leave its attention projections).
    pub min_params: usize,
    /// Only these layers (node names); empty: every eligible MatMul.
    pub layers: Vec<String>,
    /// Measure each layer's metric drop alone at each of `levels` (fraction of its
    /// parameters removed) and build a second candidate whose per-layer ranks remove as many
    /// parameters as `target_ratio` does, with the least predicted drop.
    pub sensitivity: bool,
    pub levels: Vec<f64>,
    pub sensitivity_rows: usize,
    pub seed: u64,
}

impl Default for LowrankStage {
    fn default() -> Self {
        Self {
            method: LowrankMethod::Svd,
            target_ratio: 0.5,
            energy: None,
            min_dim: 64,
            min_params: 0,
            layers: Vec::new(),
            sensitivity: false,
            levels: vec![0.25, 0.5, 0.75],
            sensitivity_rows: 256,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowrankMethod {
    Svd,
    Tucker,
    Cp,
}

/// Post-training quantization. Lists of bit-widths give one candidate per combination;
/// 4-bit weights are weight-only (MatMul layers as `MatMulNBits`, activations float), so
/// they make one candidate whatever `activations` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PtqStage {
    pub bits: Bits,
    pub mode: PtqMode,
    pub calibration: Calibration,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel_weights: bool,
    /// Symmetric int8 weights (zero point 0); `false`: asymmetric uint8 with zero points
    /// (ONNX Runtime's QLinearConv takes one zero point for all channels, so per-channel
    /// asymmetric Conv weights run unfused and are flagged when not faster).
    pub symmetric: bool,
    pub fold_batch_norm: bool,
    /// Balance per-channel weight ranges of Conv → [Relu] → Conv pairs before calibrating.
    pub cross_layer_equalization: bool,
    /// Add each layer's expected weight-quantization error (from calibration input means)
    /// to its bias (on by default: EfficientNet-Lite0 int8 92.2 → 100 % top-1 agreement).
    pub bias_correction: bool,
    /// Node names kept in float whatever the sensitivity ranking says.
    pub keep_float: Vec<String>,
    /// Leave in float the layers ONNX Runtime runs slower in int8 than in fp32 (single-input-
    /// channel Convs; reported per candidate).
    pub float_slow_layers: bool,
    /// Element type of quantized activations (`uint8`, ONNX Runtime's x86 default, or `int8`).
    pub activation_type: ActivationType,
    /// int8 activations with zero point 0 (TensorRT-style); needs `activation_type: int8`.
    pub symmetric_activations: bool,
}

/// Element type of quantized activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    #[default]
    Uint8,
    Int8,
}

impl Default for PtqStage {
    fn default() -> Self {
        Self {
            bits: Bits::default(),
            mode: PtqMode::Auto,
            calibration: Calibration::default(),
            per_channel_weights: true,
            symmetric: true,
            fold_batch_norm: true,
            cross_layer_equalization: false,
            bias_correction: true,
            keep_float: Vec::new(),
            float_slow_layers: true,
            activation_type: ActivationType::Uint8,
            symmetric_activations: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bits {
    pub weights: Vec<u8>,
    pub activations: Vec<u8>,
}

impl Default for Bits {
    fn default() -> Self {
        Self { weights: vec![8], activations: vec![8] }
    }
}

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PtqMode {
    /// Static for convolutional graphs, dynamic for transformer-style graphs (MatMul by
    /// constant weights, no Conv).
    #[default]
    Auto,
    /// Calibrated activation ranges baked into the graph.
    Static,
    /// Activation ranges computed at run time; weights ahead of time.
    Dynamic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub samples: usize,
    /// For `percentile`: the percentile of |x| kept.
    pub percentile: f64,
    pub seed: u64,
    pub bins: usize,
}

impl Default for Calibration {
    fn default() -> Self {
        Self { method: CalibrationMethod::Minmax, samples: 256, percentile: 99.99, seed: 0, bins: 2048 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    Minmax,
    /// KL divergence (TensorRT-style threshold search); `entropy` is an alias.
    #[serde(alias = "entropy")]
    Kl,
    Percentile,
    Mse,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataRefs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Onnxruntime,
    Tflite,
    Tensorrt,
    Openvino,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Onnxruntime => "onnxruntime",
            Target::Tflite => "tflite",
            Target::Tensorrt => "tensorrt",
            Target::Openvino => "openvino",
        }
    }
}

/// Limits a chosen candidate must meet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Largest allowed drop of the task metric, in percent of the baseline (relative).
    pub max_metric_drop_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_compression_ratio: Option<f64>,
}

impl Default for Constraints {
    fn default() -> Self {
        Self { max_metric_drop_pct: 1.0, max_latency_ms_p50: None, min_compression_ratio: None }
    }
}

/// What "best" means among the candidates that meet the constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Lowest P50 latency on the target runtime.
    #[default]
    Latency,
    /// Smallest file.
    Size,
    /// Highest task metric.
    Metric,
}

/// How candidates are scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Evaluation {
    /// Task metric (default: top1 for class labels, cosine for reference outputs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Evaluate a seeded sample of this many rows (all rows when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Timed single-row runs for P50/P95.
    pub latency_runs: usize,
    /// ONNX Runtime intra-op threads for timing (1 makes numbers comparable across machines).
    pub threads: usize,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self { metric: None, samples: None, latency_runs: 100, threads: 1 }
    }
}

impl Recipe {
    /// Parses and validates a recipe.
    pub fn from_yaml(source: &str) -> Result<Self, RecipeError> {
        if source.len() > MAX_RECIPE_BYTES {
            return Err(RecipeError::Schema(format!(
                "the recipe is {} bytes; recipes are at most {MAX_RECIPE_BYTES} bytes (a policy is a few lines of YAML)",
                source.len()
            )));
        }
        let recipe: Recipe = serde_yaml_ng::from_str(source).map_err(|e| RecipeError::Schema(e.to_string()))?;
        recipe.validate(Some(source))?;
        Ok(recipe)
    }

    /// Checks values and support; `source` (the YAML text) lets errors carry line numbers.
    pub fn validate(&self, source: Option<&str>) -> Result<(), RecipeError> {
        let invalid = |path: &[Key<'_>], message: String| RecipeError::Invalid { path: render(path), line: source.and_then(|s| line_of(s, path)), message };
        if self.version != RECIPE_VERSION {
            return Err(invalid(&[Key::Field("version")], format!("this Tamp reads recipe version {RECIPE_VERSION}, not {}", self.version)));
        }
        if self.policy.name.trim().is_empty() {
            return Err(invalid(&[Key::Field("policy"), Key::Field("name")], "must not be empty".into()));
        }
        if self.policy.stages.is_empty() {
            return Err(invalid(&[Key::Field("policy"), Key::Field("stages")], "a policy needs at least one stage, e.g. `- ptq: {}`".into()));
        }
        for (i, stage) in self.policy.stages.iter().enumerate() {
            let at = |k: &'static str| [Key::Field("policy"), Key::Field("stages"), Key::Index(i), Key::Field(stage.kind()), Key::Field(k)];
            match stage {
                Stage::Ptq(p) => {
                    for (key, list, allowed) in [("weights", &p.bits.weights, &[8u8, 4][..]), ("activations", &p.bits.activations, &[8u8][..])] {
                        let path = [Key::Field("policy"), Key::Field("stages"), Key::Index(i), Key::Field("ptq"), Key::Field("bits"), Key::Field(key)];
                        if list.is_empty() {
                            return Err(invalid(&path, "list at least one bit-width, e.g. [8]".into()));
                        }
                        if let Some(b) = list.iter().find(|b| !allowed.contains(b)) {
                            return Err(invalid(
                                &path,
                                format!("{b}-bit is not supported; supported: {allowed:?} (4-bit weights are weight-only, for MatMul and Gemm layers)"),
                            ));
                        }
                    }
                    if p.symmetric_activations && p.activation_type == ActivationType::Uint8 {
                        return Err(invalid(
                            &at("symmetric_activations"),
                            "symmetric activations need `activation_type: int8` (uint8 has no zero-centred range)".into(),
                        ));
                    }
                    let c = &p.calibration;
                    if c.samples == 0 || c.samples > MAX_CALIBRATION_SAMPLES {
                        return Err(invalid(
                            &[Key::Field("policy"), Key::Field("stages"), Key::Index(i), Key::Field("ptq"), Key::Field("calibration"), Key::Field("samples")],
                            format!("must be 1–{MAX_CALIBRATION_SAMPLES}"),
                        ));
                    }
                    if !(c.percentile > 50.0 && c.percentile <= 100.0) {
                        return Err(invalid(
                            &[
                                Key::Field("policy"),
                                Key::Field("stages"),
                                Key::Index(i),
                                Key::Field("ptq"),
                                Key::Field("calibration"),
                                Key::Field("percentile"),
                            ],
                            format!("{} is outside (50, 100]", c.percentile),
                        ));
                    }
                    if !(64..=1 << 16).contains(&c.bins) {
                        return Err(invalid(
                            &[Key::Field("policy"), Key::Field("stages"), Key::Index(i), Key::Field("ptq"), Key::Field("calibration"), Key::Field("bins")],
                            format!("{} is outside 64..=65536", c.bins),
                        ));
                    }
                }
                Stage::Clustering(c) => {
                    if !(2..=256).contains(&c.clusters) {
                        return Err(invalid(&at("clusters"), format!("{} is outside 2..=256 (indices are stored as uint8)", c.clusters)));
                    }
                    if !(1..=10_000).contains(&c.iterations) {
                        return Err(invalid(&at("iterations"), format!("{} is outside 1..=10000", c.iterations)));
                    }
                }
                Stage::Pruning(p) => {
                    if p.kind == PruningType::Block && SparsityPattern::parse(&p.pattern).is_none() {
                        return Err(invalid(
                            &at("pattern"),
                            format!("'{}' is not a pattern; use RxC blocks (e.g. 1x4) or N:M (e.g. 2:4, N < M ≤ 64)", p.pattern),
                        ));
                    }
                    if p.schedule == PruningSchedule::Iterative && !(2..=100).contains(&p.steps) {
                        return Err(invalid(&at("steps"), format!("{} step(s): an iterative schedule needs 2–100", p.steps)));
                    }
                    if p.schedule == PruningSchedule::Iterative && p.kind != PruningType::StructuredChannel {
                        return Err(invalid(&at("schedule"), "`iterative` is available for structured_channel pruning; use `schedule: oneshot`".into()));
                    }
                    if !(p.target_sparsity > 0.0 && p.target_sparsity < 1.0) {
                        return Err(invalid(
                            &at("target_sparsity"),
                            format!("{} is outside (0, 1): the fraction of prunable channels to remove", p.target_sparsity),
                        ));
                    }
                    if p.fine_tune {
                        return Err(invalid(
                            &at("fine_tune"),
                            "fine-tuning after pruning is not available yet (it arrives with training); set `fine_tune: false`".into(),
                        ));
                    }
                    if p.levels.is_empty() || p.levels.len() > 64 || p.levels.iter().any(|l| !(*l > 0.0 && *l < 1.0)) {
                        return Err(invalid(&at("levels"), "list sparsity levels in (0, 1), e.g. [0.1, 0.2, 0.3]".into()));
                    }
                }
                Stage::Lowrank(l) => {
                    if l.method == LowrankMethod::Cp {
                        return Err(invalid(
                            &at("method"),
                            "`cp` is not available in this build; available: svd (MatMul weights), tucker (Tucker-2 of Conv weights)".into(),
                        ));
                    }
                    if !(l.target_ratio > 0.0 && l.target_ratio < 1.0) {
                        return Err(invalid(
                            &at("target_ratio"),
                            format!("{} is outside (0, 1): the fraction of each layer's parameters to keep", l.target_ratio),
                        ));
                    }
                    if l.energy.is_some_and(|e| !(e > 0.0 && e <= 1.0)) {
                        return Err(invalid(&at("energy"), "must be in (0, 1]".into()));
                    }
                    if l.levels.is_empty() || l.levels.len() > 64 || l.levels.iter().any(|v| !(*v > 0.0 && *v < 1.0)) {
                        return Err(invalid(&at("levels"), "list fractions of each layer's parameters to remove in (0, 1), e.g. [0.25, 0.5, 0.75]".into()));
                    }
                    if l.sensitivity && l.energy.is_some() {
                        return Err(invalid(
                            &at("sensitivity"),
                            "sensitivity allocation works from `target_ratio`; remove `energy` or set `sensitivity: false`".into(),
                        ));
                    }
                }
                other => {
                    return Err(invalid(
                        &[Key::Field("policy"), Key::Field("stages"), Key::Index(i), Key::Field(other.kind())],
                        format!("the `{}` stage is not available in this build of Tamp; available: ptq, clustering (cluster), lowrank", other.kind()),
                    ));
                }
            }
        }
        if let Some(t) = self.targets.iter().find(|t| **t != Target::Onnxruntime) {
            return Err(invalid(&[Key::Field("targets")], format!("target `{}` has no exporter in this build; available: onnxruntime", t.as_str())));
        }
        if self.targets.is_empty() {
            return Err(invalid(&[Key::Field("targets")], "list at least one target runtime, e.g. [onnxruntime]".into()));
        }
        let c = &self.constraints;
        if !(c.max_metric_drop_pct.is_finite() && c.max_metric_drop_pct >= 0.0) {
            return Err(invalid(
                &[Key::Field("constraints"), Key::Field("max_metric_drop_pct")],
                "must be a number ≥ 0 (percent of the baseline metric)".into(),
            ));
        }
        if c.max_latency_ms_p50.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
            return Err(invalid(&[Key::Field("constraints"), Key::Field("max_latency_ms_p50")], "must be a number > 0 (milliseconds)".into()));
        }
        if c.min_compression_ratio.is_some_and(|v| !(v.is_finite() && v >= 1.0)) {
            return Err(invalid(&[Key::Field("constraints"), Key::Field("min_compression_ratio")], "must be a number ≥ 1".into()));
        }
        if self.evaluation.samples == Some(0) || self.evaluation.latency_runs == 0 {
            return Err(invalid(&[Key::Field("evaluation")], "`samples` and `latency_runs` must be at least 1".into()));
        }
        if self.evaluation.latency_runs > MAX_LATENCY_RUNS {
            return Err(invalid(
                &[Key::Field("evaluation"), Key::Field("latency_runs")],
                format!("{} timed runs asked; at most {MAX_LATENCY_RUNS} (P50/P95 settle within a few hundred)", self.evaluation.latency_runs),
            ));
        }
        if !(1..=256).contains(&self.evaluation.threads) {
            return Err(invalid(&[Key::Field("evaluation"), Key::Field("threads")], format!("{} threads asked; use 1–256", self.evaluation.threads)));
        }
        Ok(())
    }

    /// The PTQ stages, in order.
    pub fn ptq_stages(&self) -> impl Iterator<Item = &PtqStage> {
        self.policy.stages.iter().filter_map(|s| match s {
            Stage::Ptq(p) => Some(p),
            _ => None,
        })
    }
}

/// One step of a path into the recipe.
#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Field(&'a str),
    Index(usize),
}

fn render(path: &[Key<'_>]) -> String {
    let mut s = String::new();
    for k in path {
        match k {
            Key::Field(f) if s.is_empty() => s.push_str(f),
            Key::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Key::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Best-effort line (1-based) of `path` in block- or flow-style YAML: walks forward through
/// the text, finding each key (or the n-th list item) after the previous one. Falls back to
/// the deepest step found.
fn line_of(source: &str, path: &[Key<'_>]) -> Option<usize> {
    let lines: Vec<&str> = source.lines().collect();
    let mut at = 0usize;
    let mut found = None;
    for key in path {
        match key {
            Key::Field(name) => {
                let needle = format!("{name}:");
                let hit = (at..lines.len()).find(|&l| {
                    let t = lines[l].trim_start().trim_start_matches("- ").trim_start();
                    t.starts_with(&needle) || lines[l].contains(&format!("{{{needle}")) || lines[l].contains(&format!(" {needle}"))
                })?;
                at = hit;
                found = Some(hit + 1);
            }
            Key::Index(n) => {
                let items: Vec<usize> = (at + 1..lines.len()).filter(|&l| lines[l].trim_start().starts_with("- ")).collect();
                let indent = items.first().map(|&l| lines[l].len() - lines[l].trim_start().len())?;
                let hit = items.into_iter().filter(|&l| lines[l].len() - lines[l].trim_start().len() == indent).nth(*n)?;
                at = hit;
                found = Some(hit + 1);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRD: &str = "policy:
  name: ptq-8bit
  stages:
    - ptq:
        bits: {weights: [8], activations: [8]}
        calibration: {method: kl, samples: 2048}
        per_channel_weights: true
        symmetric: true
";

    #[test]
    fn the_prd_form_loads_unchanged() {
        let r = Recipe::from_yaml(PRD).unwrap();
        let p = r.ptq_stages().next().unwrap();
        assert_eq!(p.calibration.method, CalibrationMethod::Kl);
        assert_eq!(p.calibration.samples, 2048);
        assert_eq!(r.targets, vec![Target::Onnxruntime]);
        assert_eq!(r.constraints.max_metric_drop_pct, 1.0);
    }

    #[test]
    fn unknown_keys_name_the_key_the_line_and_the_allowed_keys() {
        let bad = PRD.replace("per_channel_weights", "per_chanel_weights");
        let e = Recipe::from_yaml(&bad).unwrap_err().to_string();
        assert!(e.contains("per_chanel_weights") && e.contains("line 7") && e.contains("per_channel_weights"), "{e}");
        let e = Recipe::from_yaml(&format!("{PRD}colour: blue\n")).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line 9") && e.contains("constraints"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_line() {
        let e = Recipe::from_yaml(&PRD.replace("samples: 2048", "samples: 0")).unwrap_err();
        assert_eq!(e, RecipeError::Invalid { path: "policy.stages[0].ptq.calibration.samples".into(), line: Some(6), message: "must be 1–1000000".into() });
        let e = Recipe::from_yaml(&PRD.replace("method: kl", "method: magic")).unwrap_err().to_string();
        assert!(e.contains("magic") && e.contains("minmax") && e.contains("line 6"), "{e}");
        let e = Recipe::from_yaml(&PRD.replace("weights: [8]", "weights: [3]")).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("3-bit"), "{e}");
        let e = Recipe::from_yaml(&format!("{PRD}constraints:\n  max_metric_drop_pct: -1\n")).unwrap_err().to_string();
        assert!(e.contains("line 10") && e.contains("max_metric_drop_pct"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - ptq:\n        symmetric_activations: true\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("activation_type: int8"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - ptq: {activation_type: int8, symmetric_activations: true}\n";
        assert!(Recipe::from_yaml(r).is_ok());
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - ptq: {activation_type: int4}\n").unwrap_err().to_string();
        assert!(e.contains("int4") && e.contains("uint8"), "{e}");
    }

    #[test]
    fn stages_not_in_this_build_are_refused_by_name() {
        let r = "policy:\n  name: p\n  stages:\n    - ptq: {}\n    - distillation: {teacher: t.onnx}\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("`distillation` stage"), "{e}");
        // Known keys with settings this build cannot honour say so, with the line.
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: structured_channel\n        schedule: iterative\n        steps: 1\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 7") && e.contains("needs 2–100"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: block\n        pattern: 4:2\n";
        let e = Recipe::from_yaml(r).unwrap_err().to_string();
        assert!(e.contains("line 6") && e.contains("N:M"), "{e}");
        let r = "policy:\n  name: p\n  stages:\n    - pruning:\n        type: attention_head\n        fine_tune: true\n";
        assert!(Recipe::from_yaml(r).unwrap_err().to_string().contains("not available"));
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {type: block, pattern: 2:4}\n";
        assert_eq!(Recipe::from_yaml(r).unwrap().policy.stages.len(), 1);
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {type: structured_channel, target_sparsity: 0.5, fine_tune: true}\n";
        assert!(Recipe::from_yaml(r).unwrap_err().to_string().contains("not available yet"));
        let r = "policy:\n  name: p\n  stages:\n    - pruning: {sparsity: 0.5}\n";
        assert!(Recipe::from_yaml(r).unwrap_err().to_string().contains("target_sparsity"), "unknown keys list the allowed ones");
        let e = Recipe::from_yaml("policy:\n  name: p\n  stages:\n    - squash: {}\n").unwrap_err().to_string();
        assert!(e.contains("squash") && e.contains("ptq"), "{e}");
    }

    #[test]
    fn empty_and_malformed_yaml_are_errors() {
        assert!(Recipe::from_yaml("").is_err());
        assert!(Recipe::from_yaml("policy: [").unwrap_err().to_string().contains("line"));
        assert!(Recipe::from_yaml("policy:\n  name: p\n  stages: []\n").unwrap_err().to_string().contains("at least one stage"));
    }

    #[test]
    fn round_trips_through_yaml() {
        let r = Recipe::from_yaml(PRD).unwrap();
        let text = serde_yaml_ng::to_string(&r).unwrap();
        assert_eq!(Recipe::from_yaml(&text).unwrap(), r);
    }
}

#[cfg(test)]
mod examples {
    use super::*;

    /// Every recipe shipped under configs/ loads and validates — but `prune50_finetune.yaml`,
    /// the PRD's prune-then-fine-tune recipe, which is refused (naming fine-tuning) until
    /// training arrives.
    #[test]
    fn shipped_examples_load() {
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let dir = std::path::Path::new(&manifest).join("../../configs/policy_examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            if entry.file_name() == "prune50_finetune.yaml" {
                let e = Recipe::from_yaml(&text).unwrap_err().to_string();
                assert!(e.contains("fine-tuning") && e.contains("line"), "{e}");
                continue;
            }
            Recipe::from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            n += 1;
        }
        assert!(n >= 3, "expected the example recipes in {}", dir.display());
    }
}
