//! The report's content, built once from a run's records and rendered twice (HTML, PDF):
//! the recommendation and the risk flags behind it, the comparison table, the cost
//! projection, robustness, cohorts, calibration coverage and lineage.

use serde::Serialize;
use tamp_domain::Recipe;
use tamp_domain::results::{Analysis, ArtifactMetadata, Candidate, Details, EarlyExitDetails, Manifest, Outcome};

use crate::cost::{self, CostProjection, PriceTable};

/// What the report tells the reader to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    Ship,
    ShipWithCaveats,
    DontShip,
}

impl Recommendation {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ship => "Ship",
            Self::ShipWithCaveats => "Ship with caveats",
            Self::DontShip => "Don't ship",
        }
    }
}

/// How much a flag weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Caution,
    Block,
}

/// One risk flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    /// `metric_over_budget`, `cohort_regression`, `unstable_layers`, `non_finite_outputs`,
    /// `slower_than_baseline`, `calibration_not_representative`, `unsupported_ops`,
    /// `missed_constraint`, `robustness_gap`.
    pub kind: &'static str,
    pub severity: Severity,
    pub message: String,
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub id: String,
    pub technique: String,
    pub chosen: bool,
    pub metric: f64,
    pub drop_pct: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: Option<f64>,
    pub throughput: Option<f64>,
    pub peak_memory_mb: Option<f64>,
    pub size_bytes: u64,
    pub macs: Option<u64>,
    pub ratio: f64,
    pub speedup: f64,
    pub missed: Vec<String>,
}

/// A sensitivity curve: metric drop per level of one layer or group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    pub name: String,
    pub levels: Vec<f64>,
    pub drops: Vec<f64>,
}

/// One line of the job's event history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventLine {
    pub at: String,
    pub kind: String,
    pub detail: String,
}

/// Everything the report is built from. `outcome` is required; the rest is shown when present.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub title: String,
    pub outcome: Option<Outcome>,
    pub manifest: Option<Manifest>,
    pub artifact: Option<ArtifactMetadata>,
    pub analysis: Option<Analysis>,
    pub recipe: Option<Recipe>,
    pub events: Vec<EventLine>,
    /// The command that reproduces the run.
    pub reproduce: Option<String>,
    /// Job state and reason, for service jobs that did not succeed.
    pub state: Option<(String, Option<String>)>,
    /// A search stage's `search/front.json`.
    pub search: Option<SearchSummary>,
}

/// What the report shows of a search (`search/front.json`, written by the search stage).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SearchSummary {
    pub trials: usize,
    pub probes: usize,
    pub subset_rows: usize,
    pub front: Vec<FrontPoint>,
    pub proxy: Option<Proxy>,
}

/// One point of the search's Pareto front (metric on the search's subset).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FrontPoint {
    pub trial: usize,
    pub config: String,
    pub metric: f64,
    pub drop_pct: f64,
    pub latency_ms_p50: Option<f64>,
    pub size_bytes: u64,
    pub compression_ratio: f64,
    pub meets_constraints: bool,
}

/// The cheap predictor the search ranked with, and how well it ranked the measured trials.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Proxy {
    pub name: String,
    pub spearman: Option<f64>,
    pub trials: usize,
}

/// The report's content.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub recommendation: Recommendation,
    pub flags: Vec<Flag>,
    pub reason: String,
    pub metric: String,
    pub baseline: Row,
    pub candidates: Vec<Row>,
    pub curves: Vec<Curve>,
    /// Each early-exit cascade candidate's id and its curve over thresholds.
    pub early_exits: Vec<(String, EarlyExitDetails)>,
    pub cost: Option<CostProjection>,
    #[serde(skip)]
    pub analysis: Option<Analysis>,
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    pub events: Vec<EventLine>,
    pub reproduce: Option<String>,
    /// Constraint and thresholds used for the flags.
    pub max_drop_pct: f64,
    pub cohort_max_drop_pct: f64,
    pub min_calibration_score: f64,
    pub state: Option<(String, Option<String>)>,
    pub search: Option<SearchSummary>,
}

/// A layer whose relative output error exceeds this is called unstable.
pub const UNSTABLE_RELATIVE_ERROR: f64 = 0.25;
/// A shifted-input metric gap (relative %) below this is not flagged, whatever the budget:
/// on a few hundred rows one row is ~0.4 %, so smaller gaps are noise.
pub const ROBUSTNESS_GAP_PCT: f64 = 3.0;
/// A quantized value clipping more than this share of its activations is called unstable.
pub const UNSTABLE_SATURATION: f64 = 0.01;

fn row(c: &Candidate, chosen: bool, analysis: Option<&Analysis>) -> Row {
    let profile = analysis.filter(|_| chosen).map(|a| &a.chosen);
    Row {
        id: c.id.clone(),
        technique: format!("{} {}", c.technique, c.mode),
        chosen,
        metric: c.measured.value,
        drop_pct: c.metric_drop_pct,
        p50_ms: c.measured.latency_ms_p50,
        p95_ms: c.measured.latency_ms_p95,
        p99_ms: profile.map(|p| p.latency_ms_p99),
        throughput: c.measured.throughput_b32,
        peak_memory_mb: profile.map(|p| p.peak_memory_mb),
        size_bytes: c.measured.size_bytes,
        macs: c.measured.macs_per_sample,
        ratio: c.compression_ratio,
        speedup: c.speedup_p50,
        missed: c.missed.clone(),
    }
}

fn curves(candidates: &[Candidate]) -> Vec<Curve> {
    let mut out: Vec<Curve> = Vec::new();
    for c in candidates {
        let found: Vec<Curve> = match &c.details {
            Some(Details::ChannelPruning(d)) => {
                d.sensitivity.iter().flatten().map(|g| Curve { name: g.group.clone(), levels: g.levels.clone(), drops: g.metric_drop_pct.clone() }).collect()
            }
            Some(Details::HeadPruning(d)) => {
                d.sensitivity.iter().flatten().map(|g| Curve { name: g.block.clone(), levels: g.levels.clone(), drops: g.metric_drop_pct.clone() }).collect()
            }
            Some(Details::Sparsity(d)) => {
                d.sensitivity.iter().flatten().map(|g| Curve { name: g.layer.clone(), levels: g.levels.clone(), drops: g.metric_drop_pct.clone() }).collect()
            }
            Some(Details::Lowrank(d)) => {
                d.sensitivity.iter().flatten().map(|g| Curve { name: g.layer.clone(), levels: g.levels.clone(), drops: g.metric_drop_pct.clone() }).collect()
            }
            _ => Vec::new(),
        };
        for f in found {
            if !out.iter().any(|o| o.name == f.name) {
                out.push(f);
            }
        }
    }
    out
}

impl Report {
    /// Builds the report; `prices` is the instance price table (defaults plus the recipe's).
    pub fn build(src: Sources, prices: &PriceTable) -> Result<Self, crate::ReportError> {
        let outcome = src.outcome.ok_or_else(|| crate::ReportError::Missing("candidates.json (the run's outcome)".into()))?;
        let recipe = src.recipe.or_else(|| src.manifest.as_ref().map(|m| m.recipe.clone())).unwrap_or_else(default_recipe);
        let settings = &recipe.report;
        let analysis = src.analysis;
        let b = &outcome.baseline;
        let baseline = Row {
            id: "baseline".into(),
            technique: "fp32 input model".into(),
            chosen: false,
            metric: b.value,
            drop_pct: 0.0,
            p50_ms: b.latency_ms_p50,
            p95_ms: b.latency_ms_p95,
            p99_ms: analysis.as_ref().map(|a| a.baseline.latency_ms_p99),
            throughput: b.throughput_b32,
            peak_memory_mb: analysis.as_ref().map(|a| a.baseline.peak_memory_mb),
            size_bytes: b.size_bytes,
            macs: b.macs_per_sample,
            ratio: 1.0,
            speedup: 1.0,
            missed: Vec::new(),
        };
        let candidates: Vec<Row> = outcome.candidates.iter().map(|c| row(c, c.id == outcome.chosen, analysis.as_ref())).collect();
        let max_drop_pct = recipe.constraints.max_metric_drop_pct;
        let cohort_max_drop_pct = settings.cohort_max_drop_pct.unwrap_or(max_drop_pct);
        let best = outcome.best();
        let cost = best.and_then(|c| cost::project(&baseline, &row(c, true, analysis.as_ref()), settings, recipe.evaluation.threads, prices).ok());
        let mut report = Report {
            title: src.title,
            recommendation: Recommendation::Ship,
            flags: Vec::new(),
            reason: outcome.reason.clone(),
            metric: b.metric.clone(),
            baseline,
            curves: curves(&outcome.candidates),
            early_exits: outcome
                .candidates
                .iter()
                .filter_map(|c| match &c.details {
                    Some(Details::EarlyExit(d)) => Some((c.id.clone(), d.clone())),
                    _ => None,
                })
                .collect(),
            candidates,
            cost,
            analysis,
            manifest: src.manifest,
            events: src.events,
            reproduce: src.reproduce,
            max_drop_pct,
            cohort_max_drop_pct,
            min_calibration_score: settings.min_calibration_score,
            state: src.state,
            search: src.search,
        };
        report.flags = flags(&report, best, src.artifact.as_ref());
        report.recommendation = recommend(&report.flags, best.is_some());
        Ok(report)
    }

    /// The chosen candidate's row.
    pub fn chosen(&self) -> Option<&Row> {
        self.candidates.iter().find(|r| r.chosen)
    }
}

fn default_recipe() -> Recipe {
    Recipe::from_yaml("policy: {name: unknown, stages: [{ptq: {}}]}").unwrap_or_else(|e| unreachable!("the built-in recipe parses: {e}"))
}

/// The recommendation the flags drive: any blocking flag (or no candidate) → don't ship;
/// any caution → ship with caveats; else ship.
pub fn recommend(flags: &[Flag], has_candidate: bool) -> Recommendation {
    match flags.iter().map(|f| f.severity).max() {
        _ if !has_candidate => Recommendation::DontShip,
        Some(Severity::Block) => Recommendation::DontShip,
        Some(Severity::Caution) => Recommendation::ShipWithCaveats,
        None => Recommendation::Ship,
    }
}

fn flags(r: &Report, best: Option<&Candidate>, artifact: Option<&ArtifactMetadata>) -> Vec<Flag> {
    let mut out = Vec::new();
    let mut add = |kind, severity, message: String| out.push(Flag { kind, severity, message });
    let Some(best) = best else {
        add("no_candidate", Severity::Block, "the run chose no candidate".into());
        return out;
    };
    if let Some((state, reason)) = &r.state
        && state != "succeeded"
    {
        add("job_not_succeeded", Severity::Block, format!("the job ended {state}{}", reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default()));
    }
    if best.metric_drop_pct > r.max_drop_pct {
        add(
            "metric_over_budget",
            Severity::Block,
            format!(
                "{} drops {:.2} % against a budget of {:.2} % ({:.4} → {:.4})",
                r.metric, best.metric_drop_pct, r.max_drop_pct, r.baseline.metric, best.measured.value
            ),
        );
    }
    for m in best.missed.iter().filter(|m| !m.starts_with("max_metric_drop_pct")) {
        add("missed_constraint", Severity::Caution, format!("misses a constraint: {m}"));
    }
    if best.speedup_p50 < 1.0 && !best.faster {
        add(
            "slower_than_baseline",
            Severity::Caution,
            format!("P50 latency {:.3} ms vs baseline {:.3} ms (speed-up {:.2}×)", best.measured.latency_ms_p50, r.baseline.p50_ms, best.speedup_p50),
        );
    }
    if let Some(a) = &r.analysis {
        let bad: Vec<&tamp_domain::results::CohortResult> = a.cohorts.iter().filter(|c| c.drop_pct > r.cohort_max_drop_pct).collect();
        if !bad.is_empty() {
            let list: Vec<String> =
                bad.iter().map(|c| format!("cohort {} −{:.2} % ({:.4} → {:.4}, {} rows)", c.cohort, c.drop_pct, c.baseline, c.chosen, c.rows)).collect();
            add("cohort_regression", Severity::Caution, format!("beyond the {:.2} % cohort threshold: {}", r.cohort_max_drop_pct, list.join("; ")));
        }
        if a.non_finite_outputs > 0 {
            add("non_finite_outputs", Severity::Block, format!("{} non-finite values in the chosen model's outputs on evaluation rows", a.non_finite_outputs));
        }
        let outliers: Vec<&str> = a.outliers.iter().filter(|o| o.baseline_finite && !o.chosen_finite).map(|o| o.input.as_str()).collect();
        if !outliers.is_empty() {
            add("non_finite_outputs", Severity::Block, format!("non-finite outputs on outlier inputs the baseline survives: {}", outliers.join(", ")));
        }
        let unstable: Vec<String> = a
            .layer_errors
            .iter()
            .filter(|l| !l.relative_error.is_finite() || l.relative_error > UNSTABLE_RELATIVE_ERROR || l.saturation.is_some_and(|s| s > UNSTABLE_SATURATION))
            .map(|l| {
                format!("{} (error {:.3}{})", l.value, l.relative_error, l.saturation.map(|s| format!(", {:.1} % clipped", s * 100.0)).unwrap_or_default())
            })
            .collect();
        if !unstable.is_empty() {
            add(
                "unstable_layers",
                Severity::Caution,
                format!(
                    "{} layer(s) beyond {UNSTABLE_RELATIVE_ERROR} relative error or {:.0} % clipping: {}",
                    unstable.len(),
                    UNSTABLE_SATURATION * 100.0,
                    shorten(&unstable, 6)
                ),
            );
        }
        if let Some(c) = &a.calibration
            && c.score < r.min_calibration_score
        {
            let mut low: Vec<&tamp_domain::results::LayerCoverage> = c.layers.iter().filter(|l| l.score < r.min_calibration_score).collect();
            low.sort_by(|x, y| x.score.total_cmp(&y.score));
            let names: Vec<String> = low.iter().map(|l| format!("{} ({:.2})", l.value, l.score)).collect();
            add(
                "calibration_not_representative",
                Severity::Caution,
                format!("calibration representativeness {:.3} < {:.2}; least covered layers: {}", c.score, r.min_calibration_score, shorten(&names, 6)),
            );
        }
        let gaps: Vec<String> = a
            .robustness
            .iter()
            .filter(|s| crate::drop_pct(s.baseline, s.chosen, &a.metric) > ROBUSTNESS_GAP_PCT.max(2.0 * r.max_drop_pct))
            .map(|s| format!("{} {}: {:.4} vs {:.4}", s.shift, s.level, s.chosen, s.baseline))
            .collect();
        if !gaps.is_empty() {
            add(
                "robustness_gap",
                Severity::Caution,
                format!(
                    "under input shift the chosen model loses more than {:.1} % against the baseline: {}",
                    ROBUSTNESS_GAP_PCT.max(2.0 * r.max_drop_pct),
                    shorten(&gaps, 4)
                ),
            );
        }
    }
    if let Some(m) = artifact
        && !m.compatibility.onnxruntime.loads
    {
        add("unsupported_ops", Severity::Block, format!("ONNX Runtime {} cannot load the artifact", m.compatibility.onnxruntime.version));
    }
    out
}

fn shorten(items: &[String], n: usize) -> String {
    if items.len() <= n { items.join(", ") } else { format!("{}, and {} more", items[..n].join(", "), items.len() - n) }
}

impl Sources {
    /// Reads a run's output folder (`tamp compress --out`): `candidates.json` (required),
    /// `manifest.json`, `best.json` and `analysis.json` where present.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, crate::ReportError> {
        fn read<T: serde::de::DeserializeOwned>(dir: &std::path::Path, name: &str, required: bool) -> Result<Option<T>, crate::ReportError> {
            let path = dir.join(name);
            let err = |message: String| crate::ReportError::Read { path: path.display().to_string(), message };
            match std::fs::read(&path) {
                Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| err(format!("{e} (is this a folder `tamp compress --out` wrote?)"))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
                Err(e) => Err(err(format!("{e}; `tamp report` reads the folder `tamp compress --out DIR` wrote"))),
            }
        }
        Ok(Self {
            title: dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
            outcome: read(dir, "candidates.json", true)?,
            manifest: read(dir, "manifest.json", false)?,
            artifact: read(dir, "best.json", false)?,
            analysis: read(dir, "analysis.json", false)?,
            search: read(dir, "search/front.json", false)?,
            ..Self::default()
        })
    }
}
