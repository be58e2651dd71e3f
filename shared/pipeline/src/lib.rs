//! The stage runner behind `tamp compress` and a service job's compress stage: measure the
//! baseline, run each recipe stage through the technique that claims it (the [`stages`]
//! registry), judge every candidate against the recipe's constraints, choose the best, and
//! write the output folder.
//!
//! Output folder:
//! - `candidates/<id>.onnx` and `candidates.json` (metric, latency, size, ratio, flags);
//! - `best.onnx` + `best.json` (the chosen artifact and its metadata: runtime, opset,
//!   compression, metrics, compatibility with ONNX Runtime's optimized op types);
//! - `analysis.json` (what the report needs beyond the table: latency distributions,
//!   robustness, cohorts, calibration coverage, per-layer error; [`analysis`]);
//! - `manifest.json` (sha256 of every input and output, the recipe, seeds, versions), last.
//!
//! Sensitivity curves are cached under `tamp_engine::cache::dir()` (`TAMP_CACHE_DIR`), and
//! nowhere else; the observer's summary line says where.

pub mod analysis;
pub mod artifacts;
mod context;
pub mod export;
mod fallback;
pub mod judge;
pub mod search;
pub mod sensitivity;
pub mod stages;

use std::path::{Path, PathBuf};

use tamp_data::Dataset;
use tamp_domain::Recipe;
pub use tamp_domain::results::{Candidate, Details, Measured, Outcome};
use tamp_engine::EngineError;
use tamp_engine::eval::{self, EvalConfig};
use tamp_engine::perf::LatencyConfig;
use tamp_engine::runtime::SessionConfig;
use tamp_onnx::Model;

pub use context::{Context, TrainSpec};
pub use judge::{choose, metric_drop_pct};
pub use stages::resolve_mode;

/// Results of the runner (engine errors: bad input, runtime failures, I/O).
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What the runner reports while it works (progress bars in the CLI, events in a worker).
pub trait Observer {
    /// A step starts; `total` units of work (0: unknown).
    fn begin(&mut self, label: &str, total: u64);
    fn advance(&mut self, done: u64);
    /// The step ended, with a one-line summary.
    fn end(&mut self, summary: &str);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn begin(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
    fn end(&mut self, _: &str) {}
}

/// One compression job on one machine.
#[derive(Debug)]
pub struct Job<'a> {
    pub model_path: &'a Path,
    pub recipe: &'a Recipe,
    /// Where the recipe came from (recorded in the manifest with its hash).
    pub recipe_path: Option<&'a Path>,
    pub calibration: &'a Dataset,
    pub evaluation: &'a Dataset,
    /// Training rows (`train.npz`) for stages that fine-tune; `None` when the job has none.
    pub train: Option<&'a Dataset>,
    pub out_dir: &'a Path,
    /// Artifacts must not depend on timing: a service stage's Batch retry runs in another
    /// container and must write the same bytes (artifacts are content-addressed). Layers
    /// then stay float by the fixed rule, not by measured kernel times.
    pub reproducible: bool,
    /// Run the report's analysis (`analysis.json`) after the outcome is written.
    pub analyse: bool,
    /// Where a `search` stage keeps its journal (default `<out_dir>/search`): a folder that
    /// outlives a killed run, so the next run resumes from it.
    pub search_dir: Option<&'a Path>,
    /// Told after every batch of trials a `search` stage appends to its journal (the
    /// service keeps the journal in its object store, so a retried attempt resumes mid-way).
    pub journal_sink: Option<&'a dyn search::JournalSink>,
    /// How search trials run (default: in this process, one after another).
    pub trials: Option<&'a dyn search::Trials>,
    /// Convert the chosen candidate for the recipe's other targets here (`tamp compress`).
    /// The service's stage workers leave it to the export function, which converts the
    /// job's final artifact once the job has succeeded.
    pub export: bool,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Io { path: path.to_owned(), source: e }
}

/// Runs every stage of the recipe and writes the output folder.
pub fn run(job: &Job<'_>, obs: &mut dyn Observer) -> Result<Outcome> {
    let out = job.out_dir;
    std::fs::create_dir_all(out.join("candidates")).map_err(io_err(out))?;
    let (original, _) = Model::load_with_info(job.model_path)?;
    // Models from other toolchains: opset upgrade, constants folded for the declared shapes.
    // Exact, so the baseline is still measured on the file the user gave.
    let (model, preparation) = tamp_engine::prepare::prepare(&original)?;
    if !preparation.is_empty() {
        obs.begin("prepare the model", 0);
        obs.end(&format!("prepared: {}", preparation.steps.join("; ")));
    }
    let ev = &job.recipe.evaluation;
    let metric = match &ev.metric {
        Some(m) => m.clone(),
        None => eval::default_metric(job.evaluation)
            .ok_or_else(|| {
                EngineError::Config(format!(
                    "{} has no `labels` array, so no task metric can be computed; add labels or name `evaluation.metric`",
                    job.evaluation.path.display()
                ))
            })?
            .to_owned(),
    };
    let eval_cfg = EvalConfig {
        metrics: vec![metric.clone()],
        output: ev.output.clone(),
        samples: ev.samples,
        latency: LatencyConfig { warmup: 10, runs: ev.latency_runs },
        throughput_batches: vec![32],
        throughput_runs: 10,
        session: SessionConfig { intra_threads: ev.threads, ..SessionConfig::default() },
        ..EvalConfig::default()
    };
    preflight_devices(job)?;
    preflight_training(job, &model)?;
    let mut runtimes = export::preflight(job, &model)?;
    let mut cx = Context::new(job, &model, obs, metric, eval_cfg)?;
    let mut candidates = Vec::new();
    // Stages compose: each starts from the previous stage's choice (prune → cluster → quantize).
    let mut current = model.clone();
    let recipe_stages = &job.recipe.policy.stages;
    let mut warnings = Vec::new();
    for (i, stage) in recipe_stages.iter().enumerate() {
        cx.nothing_because = None;
        // Training stages take the GPU where there is one (the planner routed them to it).
        let chosen = tamp_train::device::choose(stage.resources()).map_err(|e| EngineError::Config(format!("stage {i} (`{}`): {e}", stage.kind())))?;
        if let Some(w) = &chosen.warning {
            cx.obs.begin(&format!("stage {i} ({}): device", stage.kind()), 0);
            cx.obs.end(w);
            warnings.push(format!("stage {i} (`{}`) {w}", stage.kind()));
        }
        tamp_train::device::use_device(chosen.device);
        cx.fine_tune = stage.fine_tune().cloned();
        let made = stages::run_stage(&mut cx, i, stage, &current)?;
        if made.is_empty() {
            let why = cx.nothing_because.take().unwrap_or_else(|| "it made no candidate".into());
            return Err(EngineError::Config(format!(
                "stage {i} (`{}`) changed nothing: {why}. Remove the stage from the recipe, or use a technique that applies to this model",
                stage.kind()
            )));
        }
        if i + 1 < recipe_stages.len()
            && let Some((k, _)) = choose(&made, job.recipe.objective)
        {
            current = Model::load(out.join(&made[k].file))?;
        }
        candidates.extend(made);
    }
    let not_applied = std::mem::take(&mut cx.skipped);
    let (chosen, reason) = choose(&candidates, job.recipe.objective).ok_or_else(|| EngineError::Config("the recipe produced no candidates".into()))?;
    let baseline = cx.baseline().clone();
    let preparation = (!preparation.is_empty()).then_some(preparation);
    let outcome = Outcome { baseline, candidates, chosen: String::new(), reason, objective: job.recipe.objective, preparation, not_applied, warnings };
    let outcome = artifacts::write(job, outcome, chosen)?;
    for name in ["best.tflite", "best.tflite.json"] {
        let _ = std::fs::remove_file(out.join(name));
    }
    if job.export {
        export::export_targets(job, &mut runtimes)?;
    }
    artifacts::record_runtimes(out, &runtimes)?;
    // A searched candidate's config, as a recipe, beside the best artifact.
    let searched = out.join("search").join(format!("{}.yaml", outcome.chosen));
    if searched.exists() {
        std::fs::copy(&searched, out.join("best.recipe.yaml")).map_err(io_err(&searched))?;
    }
    // The report's analysis: a failure here costs the report its analysis sections, not the run.
    let _ = std::fs::remove_file(out.join("analysis.json"));
    if job.analyse {
        obs.begin("analyse the chosen candidate (latency, robustness, cohorts, calibration, layers)", 0);
        match analysis::analyse(job, &model, &outcome, &outcome.baseline.metric) {
            Ok(a) => {
                artifacts::write_json(&out.join("analysis.json"), &a)?;
                obs.end(&format!("analysed in {:.1} s", a.seconds));
            }
            Err(e) => obs.end(&format!("analysis skipped: {e}")),
        }
    }
    artifacts::finish(job, &outcome)?;
    Ok(outcome)
}

/// Before any compute: a stage that demands a GPU (`device: gpu`) finds one.
fn preflight_devices(job: &Job<'_>) -> Result<()> {
    for (i, stage) in job.recipe.policy.stages.iter().enumerate() {
        let needs = stage.resources();
        if needs.required && needs.device == tamp_domain::recipe::Device::Gpu {
            tamp_train::device::choose(needs).map_err(|e| EngineError::Config(format!("stage {i} (`{}`): {e}", stage.kind())))?;
        }
    }
    Ok(())
}

/// Before any compute: a stage that trains needs training rows, and every node of the model
/// must have a candle mapping (the error names the op and the node).
fn preflight_training(job: &Job<'_>, model: &Model) -> Result<()> {
    let Some((i, stage)) = job.recipe.policy.stages.iter().enumerate().find(|(_, s)| s.fine_tune().is_some()) else { return Ok(()) };
    let Some(train) = job.train else {
        return Err(EngineError::Config(format!(
            "stage {i} (`{}`) fine-tunes, which needs training rows: pass `--train train.npz` (the service: upload train.npz beside calib.npz), or remove `fine_tune`",
            stage.kind()
        )));
    };
    stages::distill_preflight(job, model)?;
    tamp_train::graph::TrainGraph::new(model, &tamp_train::graph::GraphOptions::default())
        .map_err(|e| EngineError::Config(format!("stage {i} cannot fine-tune: {e}")))?;
    let inputs: Vec<&str> = train.input_names().collect();
    let g = model.graph();
    let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    for input in g.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !inits.contains(n)) {
        if !inputs.contains(&input) {
            return Err(EngineError::Config(format!("{} has no array '{input}' (a model input); it has {inputs:?}", train.path.display())));
        }
    }
    Ok(())
}

/// Where a path given in a recipe points: absolute, or relative to the recipe's folder.
pub fn resolve_from_recipe(recipe_path: Option<&Path>, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    match recipe_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}
