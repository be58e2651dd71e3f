//! `analysis.json`: what the report needs beyond the candidates table, measured by the
//! pipeline after the run on the baseline and the chosen artifact: latency distributions,
//! peak memory, robustness under seeded input shifts, outlier inputs, per-cohort metrics,
//! calibration representativeness and per-layer quantization error. The report renderer
//! (`tamp-report`) reads it; it needs no runtime of its own.

use serde::{Deserialize, Serialize};

/// The run's analysis (baseline vs the chosen candidate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// The candidate analysed (the chosen one).
    pub candidate: String,
    pub metric: String,
    pub baseline: Profile,
    pub chosen: Profile,
    /// Metric under seeded input shifts, baseline and chosen side by side.
    #[serde(default)]
    pub robustness: Vec<ShiftResult>,
    /// Extreme inputs (large values, all zeros): whether outputs stay finite.
    #[serde(default)]
    pub outliers: Vec<OutlierResult>,
    /// Per-cohort metric from the evaluation set's `cohort` array (empty when it has none).
    #[serde(default)]
    pub cohorts: Vec<CohortResult>,
    /// How well the calibration set covers the evaluation activations (absent: no
    /// calibration ran, e.g. weight-only techniques).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationCoverage>,
    /// Per-layer error of the chosen model against the baseline on the same rows.
    #[serde(default)]
    pub layer_errors: Vec<LayerError>,
    /// Non-finite values seen in the chosen model's outputs on the evaluation rows.
    #[serde(default)]
    pub non_finite_outputs: usize,
    /// Seconds the analysis took.
    #[serde(default)]
    pub seconds: f64,
}

/// One model's timing and memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub latency_ms_p50: f64,
    pub latency_ms_p95: f64,
    pub latency_ms_p99: f64,
    /// Every timed single-row run, in ms (the latency distribution chart).
    pub latency_samples_ms: Vec<f64>,
    /// Peak resident memory the session added while the model was loaded and run, MiB
    /// (the process's peak minus its resident memory before the session was built).
    pub peak_memory_mb: f64,
}

/// The metric at one level of one input shift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShiftResult {
    /// `gaussian_noise`, `brightness`, `contrast`, `blur`, `token_dropout`, `word_swap`.
    pub shift: String,
    /// The level, in the shift's own unit (σ in units of the input's std, a factor, a share).
    pub level: f64,
    pub seed: u64,
    pub rows: usize,
    pub baseline: f64,
    pub chosen: f64,
}

/// One kind of extreme input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierResult {
    pub input: String,
    pub baseline_finite: bool,
    pub chosen_finite: bool,
}

/// One cohort's metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CohortResult {
    pub cohort: i64,
    pub rows: usize,
    pub baseline: f64,
    pub chosen: f64,
    /// Relative drop in percent of the cohort's baseline (negative: improved).
    pub drop_pct: f64,
}

/// Calibration representativeness: per layer, the share of evaluation activations inside
/// the range the calibration rows spanned, and a Jensen–Shannon distance between calibration
/// and evaluation activations (the larger of: the histograms of non-zero values, and the
/// spread of activation energy over channels); a layer scores `inside × (1 − distance)` and
/// `score` is the lowest layer's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationCoverage {
    pub score: f64,
    pub calibration_rows: usize,
    pub evaluation_rows: usize,
    pub layers: Vec<LayerCoverage>,
}

/// One layer's calibration coverage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCoverage {
    pub value: String,
    pub inside: f64,
    pub js_distance: f64,
    pub score: f64,
}

/// One layer's output error in the chosen model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerError {
    pub value: String,
    /// ‖chosen − baseline‖ / ‖baseline‖ over the analysed rows.
    pub relative_error: f64,
    /// Signal-to-quantization-noise ratio in dB.
    pub sqnr_db: f64,
    /// Share of activations outside the chosen model's quantization range (clipped), where
    /// the value is quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturation: Option<f64>,
}
