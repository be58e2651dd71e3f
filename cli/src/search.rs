//! `tamp search`: a mixed-precision search as a one-stage recipe (or the `search` stage of
//! a given recipe, with the flags applied), run by `tamp compress`'s machinery; and
//! `tamp search-trial`, the worker one trial runs in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tamp_domain::Recipe;
use tamp_domain::recipe::{Objective, Precision, SearchStage, Stage, Strategy};

use crate::compress;

#[derive(clap::Args)]
pub struct Args {
    /// The fp32 .onnx file (default: the recipe's `model`).
    model: Option<PathBuf>,
    /// A recipe with a `search` stage (default: one search stage with the settings below).
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Calibration .npz.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluation .npz with `labels` (default: --data).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Output folder (replaced when the run succeeds). Re-running with the same --out after
    /// a kill resumes the search from its journal.
    #[arg(long)]
    out: PathBuf,
    /// Measured trials at most.
    #[arg(long)]
    trials: Option<usize>,
    /// Wall-clock cap in minutes (no new batch of trials after it).
    #[arg(long)]
    minutes: Option<f64>,
    /// `greedy` (sensitivity-guided curves) or `nsga2` (the curves, then NSGA-II).
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Trials measured at once, each in its own worker process.
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Evaluation rows each trial is scored on (a seeded subset).
    #[arg(long)]
    rows: Option<usize>,
    /// Precisions a layer may take, e.g. `float,int8,int4`.
    #[arg(long, value_delimiter = ',', value_parser = parse_precision)]
    space: Option<Vec<Precision>>,
    /// Constraint: largest metric drop in percent.
    #[arg(long)]
    max_drop: Option<f64>,
    /// Constraint: at least this many times smaller.
    #[arg(long)]
    min_ratio: Option<f64>,
    /// Constraint: P50 latency at most this many milliseconds.
    #[arg(long)]
    max_latency_ms: Option<f64>,
    /// What "best" means among the points that meet the constraints: latency, size or metric.
    #[arg(long, value_parser = parse_objective)]
    objective: Option<Objective>,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Skip the report's analysis.
    #[arg(long)]
    no_analysis: bool,
}

#[derive(clap::Args)]
pub struct TrialArgs {
    /// The trial's spec (JSON), written by the search.
    spec: PathBuf,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| format!("'{s}' is not a strategy; use greedy or nsga2"))
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| format!("'{s}' is not a precision; use float, int8 or int4"))
}

fn parse_objective(s: &str) -> Result<Objective, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| format!("'{s}' is not an objective; use latency, size or metric"))
}

pub fn trial(args: &TrialArgs) -> Result<()> {
    tamp_pipeline::search::trial::worker_main(&args.spec).with_context(|| format!("search trial {}", args.spec.display()))
}

pub fn run(args: &Args) -> Result<()> {
    let mut recipe = match &args.recipe {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading the recipe {}", p.display()))?;
            let mut r = Recipe::from_yaml(&text).with_context(|| p.display().to_string())?;
            // Paths in the recipe stay relative to where it was.
            let resolve = |v: &mut Option<String>| {
                if let Some(x) = v.as_mut() {
                    *x = tamp_pipeline::resolve_from_recipe(Some(p), x).display().to_string();
                }
            };
            resolve(&mut r.model);
            resolve(&mut r.data.calibration);
            resolve(&mut r.data.evaluation);
            resolve(&mut r.data.train);
            if !r.policy.stages.iter().any(|s| matches!(s, Stage::Search(_))) {
                bail!("{} has no `search` stage: add `- search: {{}}` to its stages, or leave out --recipe", p.display());
            }
            r
        }
        None => Recipe::from_yaml("policy:\n  name: search\n  stages:\n    - search: {}\n")?,
    };
    for stage in &mut recipe.policy.stages {
        if let Stage::Search(s) = stage {
            apply(args, s);
        }
    }
    let c = &mut recipe.constraints;
    c.max_metric_drop_pct = args.max_drop.unwrap_or(c.max_metric_drop_pct);
    c.min_compression_ratio = args.min_ratio.or(c.min_compression_ratio);
    c.max_latency_ms_p50 = args.max_latency_ms.or(c.max_latency_ms_p50);
    recipe.objective = args.objective.unwrap_or(recipe.objective);
    recipe.validate(None).context("the search settings")?;
    // The recipe this run executes, kept beside the journal (same flags: same recipe, so a
    // re-run resumes).
    let name = args.out.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = parent.join(format!(".{name}.search"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let recipe_path = dir.join("recipe.yaml");
    std::fs::write(&recipe_path, recipe.to_yaml()).with_context(|| format!("writing {}", recipe_path.display()))?;
    let eval = args.eval.clone().or_else(|| args.data.clone());
    compress::run(&compress::Args {
        model: args.model.clone(),
        recipe: recipe_path,
        data: args.data.clone(),
        eval,
        train: None,
        out: args.out.clone(),
        json: args.json,
        output: None,
        metric: None,
        samples: None,
        runs: None,
        no_analysis: args.no_analysis,
        workers: None,
    })
}

fn apply(args: &Args, s: &mut SearchStage) {
    if let Some(v) = args.trials {
        s.budget_trials = v;
    }
    if let Some(v) = args.minutes {
        s.budget_minutes = Some(v);
    }
    if let Some(v) = args.strategy {
        s.strategy = v;
    }
    if let Some(v) = args.workers {
        s.workers = v;
    }
    if let Some(v) = args.seed {
        s.seed = v;
    }
    if let Some(v) = args.rows {
        s.rows = Some(v);
    }
    if let Some(v) = &args.space {
        s.space = v.clone();
    }
}
