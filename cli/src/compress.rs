//! `tamp compress`: run a recipe on a model, with progress per step, and print the
//! before/after table. The output folder is replaced only when the whole run succeeds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use tamp_domain::Recipe;
use tamp_engine::Dataset;
use tamp_pipeline::{self as compress, Job, Observer, Outcome, resolve_from_recipe};

use crate::eval::human_bytes;

#[derive(clap::Args)]
pub struct Args {
    /// The fp32 .onnx file (default: the recipe's `model`, relative to the recipe).
    pub(crate) model: Option<PathBuf>,
    /// The recipe (YAML): `policy: {name, stages: [...]}` plus optional job settings.
    #[arg(long)]
    pub(crate) recipe: PathBuf,
    /// Calibration .npz (default: the recipe's `data.calibration`).
    #[arg(long)]
    pub(crate) data: Option<PathBuf>,
    /// Evaluation .npz with `labels` (default: the recipe's `data.evaluation`, else --data).
    #[arg(long)]
    pub(crate) eval: Option<PathBuf>,
    /// Training .npz for stages that fine-tune (default: the recipe's `data.train`).
    #[arg(long)]
    pub(crate) train: Option<PathBuf>,
    /// Output folder (replaced when the run succeeds; left alone when it fails).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Print the outcome as JSON instead of progress and a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// The model output the metric scores (overrides the recipe's `evaluation.output`).
    #[arg(long)]
    pub(crate) output: Option<String>,
    /// The task metric (overrides the recipe's `evaluation.metric`).
    #[arg(long)]
    pub(crate) metric: Option<String>,
    /// Evaluate a seeded sample of this many rows (overrides `evaluation.samples`).
    #[arg(long)]
    pub(crate) samples: Option<usize>,
    /// Timed single-row runs for the latency percentiles (overrides `evaluation.latency_runs`).
    #[arg(long)]
    pub(crate) runs: Option<usize>,
    /// Skip the report's analysis (robustness, cohorts, calibration coverage, per-layer error).
    #[arg(long)]
    pub(crate) no_analysis: bool,
    /// Search trials measured at once by worker processes (overrides every `search` stage's
    /// `workers`).
    #[arg(long)]
    pub(crate) workers: Option<usize>,
}

struct Bars {
    bar: Option<ProgressBar>,
    quiet: bool,
    /// stderr is not a terminal (a log file, CI): plain lines instead of bars — the step as
    /// it starts, then its progress at most every 10 s.
    plain: bool,
    step: String,
    started: std::time::Instant,
    last_line: std::time::Instant,
    total: u64,
}

impl Observer for Bars {
    fn begin(&mut self, label: &str, total: u64) {
        if self.quiet {
            return;
        }
        if self.plain {
            eprintln!("  {label} …");
            (self.step, self.total, self.started, self.last_line) = (label.to_owned(), total, std::time::Instant::now(), std::time::Instant::now());
            return;
        }
        let bar = if total == 0 {
            let b = ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        } else {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} {elapsed}") {
                b.set_style(style.progress_chars("=> "));
            }
            b
        };
        bar.set_message(label.to_owned());
        self.bar = Some(bar);
    }

    fn advance(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if self.plain && !self.quiet && self.last_line.elapsed().as_secs() >= 10 {
            self.last_line = std::time::Instant::now();
            let of = if self.total > 0 { format!("/{}", self.total) } else { String::new() };
            eprintln!("  {}: {done}{of} ({:.0} s)", self.step, self.started.elapsed().as_secs_f64());
        }
    }

    fn end(&mut self, summary: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("  {summary}");
        }
    }
}

/// Whether any stage calibrates (static or automatic PTQ); dynamic and 4-bit PTQ and the
/// weight techniques need only evaluation data.
fn needs_calibration(recipe: &Recipe) -> bool {
    use tamp_domain::recipe::{PtqMode, Stage};
    recipe.policy.stages.iter().any(|s| matches!(s, Stage::Ptq(p) if p.mode != PtqMode::Dynamic && p.bits.weights.iter().any(|&b| b != 4)))
}

fn pick(flag: &Option<PathBuf>, from_recipe: Option<&String>, recipe: &Path, what: &str, key: &str) -> Result<PathBuf> {
    match (flag, from_recipe) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(v)) => Ok(resolve_from_recipe(Some(recipe), v)),
        (None, None) => bail!("no {what}: pass it on the command line or set `{key}` in {}", recipe.display()),
    }
}

pub fn run(args: &Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.recipe).with_context(|| format!("reading the recipe {}", args.recipe.display()))?;
    let mut recipe = Recipe::from_yaml(&text).with_context(|| args.recipe.display().to_string())?;
    if let Some(w) = args.workers {
        for stage in &mut recipe.policy.stages {
            if let tamp_domain::recipe::Stage::Search(s) = stage {
                s.workers = w.max(1);
            }
        }
    }
    let ev = &mut recipe.evaluation;
    ev.output = args.output.clone().or(ev.output.take());
    ev.metric = args.metric.clone().or(ev.metric.take());
    ev.samples = args.samples.or(ev.samples);
    ev.latency_runs = args.runs.unwrap_or(ev.latency_runs).max(1);
    let model = pick(&args.model, recipe.model.as_ref(), &args.recipe, "model", "model")?;
    // Calibration data is needed only by static PTQ; a dynamic-only recipe evaluates on --eval.
    let calib = pick(&args.data, recipe.data.calibration.as_ref(), &args.recipe, "calibration data (--data)", "data.calibration");
    let evalp = pick(&args.eval, recipe.data.evaluation.as_ref(), &args.recipe, "evaluation data (--eval)", "data.evaluation");
    let (calib_path, eval_path) = match (calib, evalp) {
        (Ok(c), Ok(e)) => (c, e),
        (Ok(c), Err(_)) => (c.clone(), c),
        (Err(_), Ok(e)) if !needs_calibration(&recipe) => (e.clone(), e),
        (Err(e), _) => return Err(e),
    };
    let calibration = Dataset::load(&calib_path)?;
    let evaluation = if eval_path == calib_path { calibration.clone() } else { Dataset::load(&eval_path)? };
    let train = match pick(&args.train, recipe.data.train.as_ref(), &args.recipe, "training data (--train)", "data.train") {
        Ok(p) => Some(Dataset::load(&p)?),
        Err(_) => None,
    };

    // Work in a sibling staging folder; swap it in only when everything succeeded.
    let name = args.out.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    // A search's journal outlives a killed run here; the next run with the same --out
    // resumes from it (the journal's header says whether it is for this model and data).
    let search_dir = parent.join(format!(".{name}.search"));
    let search_workers = recipe.policy.stages.iter().filter_map(|s| if let tamp_domain::recipe::Stage::Search(s) = s { Some(s.workers) } else { None }).max();
    let subprocess = match search_workers {
        Some(w) if w > 1 => {
            Some(compress::search::Subprocess { exe: std::env::current_exe().context("locating the tamp binary for the trial workers")?, limit: w })
        }
        _ => None,
    };
    let job = Job {
        model_path: &model,
        recipe: &recipe,
        recipe_path: Some(&args.recipe),
        calibration: &calibration,
        evaluation: &evaluation,
        train: train.as_ref(),
        out_dir: &staging,
        reproducible: false,
        analyse: !args.no_analysis,
        search_dir: search_workers.map(|_| search_dir.as_path()),
        journal_sink: None,
        trials: subprocess.as_ref().map(|s| s as &dyn compress::search::Trials),
        export: true,
    };
    use std::io::IsTerminal;
    let now = std::time::Instant::now();
    let mut bars = Bars { bar: None, quiet: args.json, plain: !std::io::stderr().is_terminal(), step: String::new(), started: now, last_line: now, total: 0 };
    if !args.json {
        eprintln!("tamp compress: {} with policy '{}' -> {}", model.display(), recipe.policy.name, args.out.display());
    }
    let outcome = match compress::run(&job, &mut bars) {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    let reproduce = std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect::<Vec<_>>().join(" ");
    let verdict = match tamp_report::Sources::from_dir(&staging)
        .map_err(anyhow::Error::from)
        .and_then(|s| crate::report::write(&staging, tamp_report::Sources { title: name.clone(), ..s }, Some(reproduce)))
    {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if args.out.exists() {
        std::fs::rename(&args.out, &old).with_context(|| format!("moving the previous {} aside", args.out.display()))?;
    }
    std::fs::rename(&staging, &args.out).with_context(|| format!("moving the results into {}", args.out.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    if search_workers.is_some() {
        // `tamp search` keeps the recipe it generated there: it travels with the results.
        if search_dir.join("recipe.yaml").exists() && args.out.join("search").is_dir() {
            let _ = std::fs::copy(search_dir.join("recipe.yaml"), args.out.join("search").join("recipe.yaml"));
        }
        let _ = std::fs::remove_dir_all(&search_dir);
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        print_table(&outcome);
        println!("chosen: {} ({})", outcome.chosen, outcome.reason);
        println!("report: {verdict} ({0}/report.html, {0}/report.pdf)", args.out.display());
        println!("wrote {0}/best.onnx, {0}/best.json, {0}/candidates.json, {0}/manifest.json", args.out.display());
        if args.out.join("best.recipe.yaml").exists() {
            println!(
                "searched: {0}/search/front.json (the Pareto front), {0}/search/journal.jsonl (every trial), {0}/best.recipe.yaml (the chosen config as a recipe)",
                args.out.display()
            );
        }
    }
    Ok(())
}

fn print_table(o: &Outcome) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    let b = &o.baseline;
    t.set_header(vec![
        "model".to_owned(),
        b.metric.clone(),
        "drop %".into(),
        "P50 ms".into(),
        "P95 ms".into(),
        "b32 rows/s".into(),
        "MMACs".into(),
        "size".into(),
        "smaller".into(),
        "faster".into(),
        "notes".into(),
    ]);
    let thr = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let macs = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.2}", v as f64 / 1e6));
    t.add_row(vec![
        "baseline (fp32)".to_owned(),
        format!("{:.4}", b.value),
        "-".into(),
        format!("{:.3}", b.latency_ms_p50),
        format!("{:.3}", b.latency_ms_p95),
        thr(b.throughput_b32),
        macs(b.macs_per_sample),
        human_bytes(b.size_bytes),
        "1.00x".into(),
        "1.00x".into(),
        String::new(),
    ]);
    for c in &o.candidates {
        let m = &c.measured;
        let mut notes: Vec<String> = c.missed.iter().map(|s| format!("misses {s}")).collect();
        if !c.faster {
            notes.push("NOT FASTER".into());
        }
        if !c.float_nodes.is_empty() {
            notes.push(format!("{} layer(s) float", c.float_nodes.len()));
        }
        let name = if c.id == o.chosen { format!("* {}", c.id) } else { c.id.clone() };
        t.add_row(vec![
            name,
            format!("{:.4}", m.value),
            format!("{:.2}", c.metric_drop_pct),
            format!("{:.3}", m.latency_ms_p50),
            format!("{:.3}", m.latency_ms_p95),
            thr(m.throughput_b32),
            macs(m.macs_per_sample),
            human_bytes(m.size_bytes),
            format!("{:.2}x", c.compression_ratio),
            format!("{:.2}x", c.speedup_p50),
            notes.join("; "),
        ]);
    }
    println!("{t}");
}
