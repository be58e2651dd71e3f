//! The `search` stage: per-layer precision chosen by a measured, multi-objective search
//! under the job's constraints (settings and their validation; the search itself is
//! `tamp_pipeline::search`).

use serde::{Deserialize, Serialize};

use super::{At, CalibrationMethod, PtqStage, StageSettings};
use crate::recipe::stages::ptq::Precision;
use crate::recipe::{Objective, RecipeError};

/// A mixed-precision search. Each layer group (layers that read the same activation share
/// its quantization, so they share a precision) takes one of `space`'s precisions; every
/// trial is built, measured (the task metric on a seeded subset, P50 latency on ONNX
/// Runtime, size on disk) and appended to a journal; the Pareto front is confirmed on the
/// full evaluation set and judged like any candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchStage {
    /// The precisions a layer group may take.
    pub space: Vec<Precision>,
    pub strategy: Strategy,
    /// Measured trials at most (the per-group sensitivity probes are not counted; they are
    /// metric-only and cached).
    pub budget_trials: usize,
    /// Wall-clock cap in minutes: no new batch of trials starts after it. A timing-dependent
    /// stop, so a run cut by it is not reproducible trial for trial (the trial budget is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_minutes: Option<f64>,
    /// Seeds the metric subset and the evolutionary search.
    pub seed: u64,
    /// Rows of the evaluation set each trial is scored on (a seeded subset). Default: as many
    /// as the input model scores in about two seconds on one thread (at least 256, at most
    /// all), so small models search on the whole set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// What the front trades off (at least two of `metric`, `latency`, `size`).
    pub objectives: Vec<Objective>,
    /// NSGA-II population (and the number of trials measured per generation).
    pub population: usize,
    /// Trials measured at once (local worker processes, or Batch jobs).
    pub workers: usize,
    /// Front points confirmed on the full evaluation set (and judged as candidates).
    pub confirm: usize,
    /// Timed single-row runs per trial for its P50.
    pub latency_runs: usize,
    /// Calibration methods the search tries (one more gene of every config; static PTQ only;
    /// at most three). `percentile` uses `ptq.calibration.percentile`.
    pub calibration_methods: Vec<CalibrationMethod>,
    /// Dynamic int8 (transformers): the first gene also tries activation smoothing
    /// (`ptq.smooth_activations`), which needs calibration data; without it, or when `ptq`
    /// already smooths, the gene has one value.
    pub smoothing: bool,
    /// Where the search runs: its trials measure latency on ONNX Runtime's CPU provider, so
    /// `auto` is the CPU queue; `gpu` puts it on the GPU queue.
    pub device: super::DeviceChoice,
    /// How each layer is quantized (calibration rows, symmetry, pre-passes); `bits`, `layers`
    /// and `keep_float` are the search's to set.
    pub ptq: PtqStage,
}

impl Default for SearchStage {
    fn default() -> Self {
        Self {
            space: vec![Precision::Float, Precision::Int8, Precision::Int4],
            strategy: Strategy::Greedy,
            budget_trials: 40,
            budget_minutes: Some(10.0),
            seed: 0,
            rows: None,
            objectives: vec![Objective::Metric, Objective::Latency, Objective::Size],
            population: 8,
            workers: 1,
            confirm: 10,
            latency_runs: 40,
            calibration_methods: vec![CalibrationMethod::Minmax, CalibrationMethod::Kl, CalibrationMethod::Percentile],
            smoothing: true,
            device: super::DeviceChoice::Auto,
            ptq: PtqStage::default(),
        }
    }
}

/// How the search walks the space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Per-group sensitivity, then the greedy curves from all-int8 toward smaller (int4
    /// where it costs least metric per byte saved) and toward better (float where it gains
    /// most per byte spent), as AIMET's AMP does.
    #[default]
    Greedy,
    /// The greedy curves, then NSGA-II generations (seeded) until the budget is spent.
    Nsga2,
}

impl StageSettings for SearchStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        let mut space = self.space.clone();
        space.sort();
        space.dedup();
        if space.len() < 2 || space.len() != self.space.len() {
            return Err(at.invalid(&["space"], "list at least two different precisions from [float, int8, int4]"));
        }
        let mut objectives = self.objectives.clone();
        objectives.sort_by_key(|o| *o as u8);
        objectives.dedup();
        if objectives.len() < 2 || objectives.len() != self.objectives.len() {
            return Err(at.invalid(&["objectives"], "list at least two different objectives from [metric, latency, size]"));
        }
        if !(1..=100_000).contains(&self.budget_trials) {
            return Err(at.invalid(&["budget_trials"], format!("{} is outside 1..=100000", self.budget_trials)));
        }
        if self.budget_minutes.is_some_and(|m| !(m > 0.0 && m.is_finite())) {
            return Err(at.invalid(&["budget_minutes"], "must be a positive number of minutes"));
        }
        for (key, v, range) in [
            ("rows", self.rows.unwrap_or(256), 1..=1_000_000),
            ("population", self.population, 2..=1_000),
            ("workers", self.workers, 1..=256),
            ("confirm", self.confirm, 1..=64),
            ("latency_runs", self.latency_runs, 5..=100_000),
        ] {
            if !range.contains(&v) {
                return Err(at.invalid(&[key], format!("{v} is outside {}..={}", range.start(), range.end())));
            }
        }
        let mut methods = self.calibration_methods.clone();
        methods.sort_by_key(|m| *m as u8);
        methods.dedup();
        if methods.contains(&CalibrationMethod::Auto) {
            return Err(at.invalid(
                &["calibration_methods"],
                "`auto` chooses a method by itself; the search measures each method it lists, so list them: [minmax, kl, percentile, mse]",
            ));
        }
        if methods.is_empty() || methods.len() > 3 || methods.len() != self.calibration_methods.len() {
            return Err(at.invalid(&["calibration_methods"], "list one to three different methods from [minmax, kl, percentile, mse]"));
        }
        if self.ptq.fine_tune.is_some() {
            return Err(
                at.invalid(&["ptq", "fine_tune"], "the search measures post-training trials; fine-tune the chosen config afterwards with a `qat:` stage")
            );
        }
        if !self.ptq.layers.is_empty() {
            return Err(at.invalid(&["ptq", "layers"], "the search chooses the per-layer precision; remove `layers`"));
        }
        self.ptq.validate(at)
    }
}
