//! Mixed-precision search under constraints. Each layer group (the layers reading one
//! activation share its quantization, so they share a precision) takes a precision from the
//! stage's space; every trial is built by the same code a `ptq: {layers: …}` recipe runs,
//! measured (task metric on a seeded subset, P50 on ONNX Runtime, size on disk) and appended
//! to a journal. The Pareto front is confirmed on the full evaluation set and each confirmed
//! point judged as a candidate, with its config written as a recipe.
//!
//! Strategies: the greedy curves (AIMET AMP style: per-group sensitivity probes, then walks
//! ordered by metric cost per byte), and NSGA-II generations seeded from them.
//!
//! Resume: every decision is a function of the seed and the journal's records, so a killed
//! search re-run on the same journal replays its decisions, re-measures nothing it finished,
//! and continues where it stopped.

mod confirm;
mod journal;
mod nsga;
pub mod trial;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tamp_domain::recipe::{Calibration, Objective, Precision, PtqStage, SearchStage, Strategy};
use tamp_domain::results::Candidate;
use tamp_engine::EngineError;
use tamp_engine::passes::quantize;
use tamp_onnx::{Model, SaveOptions};

pub use journal::{Kind, Record};
pub use trial::{InProcess, JournalSink, Subprocess, TrialResult, TrialSpec, Trials};

use journal::{Header, JOURNAL_FORMAT, code, open_journal, precision};

use crate::stages::Mixer;
use crate::{Context, Result, io_err, metric_drop_pct};

/// Groups of layers that read the same activation (one quantized input, so one precision),
/// in graph order.
pub fn groups(model: &Model, units: &[String]) -> Vec<Vec<String>> {
    let g = model.graph();
    let by_key: HashMap<&str, &tamp_onnx::proto::NodeProto> = g.node.iter().map(|n| (quantize::node_key(n), n)).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut by_input: HashMap<String, usize> = HashMap::new();
    for u in units {
        let input = by_key.get(u.as_str()).and_then(|n| n.input.first().cloned()).unwrap_or_default();
        match by_input.get(&input) {
            Some(&k) if !input.is_empty() => out[k].push(u.clone()),
            _ => {
                by_input.insert(input, out.len());
                out.push(vec![u.clone()]);
            }
        }
    }
    out
}

/// Weight elements each group carries (what a precision change saves or spends).
fn group_weights(model: &Model, groups: &[Vec<String>]) -> Vec<u64> {
    let g = model.graph();
    let sizes: HashMap<&str, u64> = g
        .initializer
        .iter()
        .filter(|t| t.dims.len() >= 2)
        .filter_map(|t| Some((t.name.as_deref()?, t.dims.iter().map(|&d| d.max(0) as u64).product())))
        .collect();
    let by_key: HashMap<&str, &tamp_onnx::proto::NodeProto> = g.node.iter().map(|n| (quantize::node_key(n), n)).collect();
    groups
        .iter()
        .map(|members| members.iter().filter_map(|m| by_key.get(m.as_str())).flat_map(|n| n.input.iter().filter_map(|i| sizes.get(i.as_str()))).sum())
        .collect()
}

/// The search's state: the space, the journal and how trials run.
struct Search<'s, 'c, 'a, 'o> {
    cx: &'c mut Context<'a, 'o>,
    s: &'s SearchStage,
    /// One per calibration method (static), or plain and smoothed (dynamic): gene 0 of a
    /// config picks it.
    mixers: Vec<Mixer>,
    groups: Vec<Vec<String>>,
    /// Allowed precision codes per group.
    allowed: Vec<Vec<u8>>,
    dir: PathBuf,
    journal: PathBuf,
    records: Vec<Record>,
    rows: Vec<usize>,
    reference: Option<f64>,
    baseline_size: u64,
    deadline: Option<Instant>,
    history: Vec<serde_json::Value>,
    /// Whether the smallest config of the space meets `min_compression_ratio` (else no
    /// trial is ruled out by size: the search then gets as close as it can).
    size_feasible: Option<bool>,
    /// The config the walks start from (the best all-int8 start).
    start: Option<String>,
    /// Configs where single recipes sit (see `explore`).
    anchors: Vec<String>,
}

/// Runs a `search` stage: returns the confirmed front points as candidates.
pub fn run(cx: &mut Context<'_, '_>, index: usize, s: &SearchStage, input: &Model) -> Result<Vec<Candidate>> {
    let started = Instant::now();
    let mut mixers =
        vec![Mixer::new(cx, &PtqStage { calibration: Calibration { method: s.calibration_methods[0], ..s.ptq.calibration.clone() }, ..s.ptq.clone() }, input)?];
    if mixers[0].calibrated() {
        for &method in &s.calibration_methods[1..] {
            mixers.push(Mixer::new(cx, &PtqStage { calibration: Calibration { method, ..s.ptq.calibration.clone() }, ..s.ptq.clone() }, input)?);
        }
    }
    // Dynamic int8: gene 0 picks between plain and smoothed activations instead.
    if !mixers[0].calibrated() && s.smoothing && !s.ptq.smooth_activations && cx.job.calibration.rows > 0 {
        mixers.push(Mixer::new(cx, &PtqStage { smooth_activations: true, ..s.ptq.clone() }, input)?);
    }
    let mixer = &mixers[0];
    let units = mixer.units();
    if units.is_empty() {
        return cx.not_applied("search skipped: the model has no layer with a constant weight to quantize");
    }
    // Gene 0 is the calibration method (no layers); then one gene per layer group.
    let mut groups = groups(mixer.base(), &units);
    let mut allowed: Vec<Vec<u8>> = groups
        .iter()
        .map(|members| {
            let mut v: Vec<u8> = s.space.iter().filter(|&&p| members.iter().all(|m| mixer.allows(m, p))).map(|&p| code(p) as u8).collect();
            if v.is_empty() {
                v.push(b'f');
            }
            v.sort_unstable();
            v
        })
        .collect();
    groups.insert(0, Vec::new());
    allowed.insert(0, (0..mixers.len()).map(|i| b'0' + i as u8).collect());
    let dir = cx.job.search_dir.map_or_else(|| cx.job.out_dir.join("search"), Path::to_path_buf);
    std::fs::create_dir_all(dir.join("trials")).map_err(io_err(&dir))?;
    let data = cx.job.evaluation;
    let auto = (2000.0 / cx.baseline().latency_ms_p50.max(1e-3)) as usize;
    let rows = data.sample(s.rows.unwrap_or(auto.max(256)).min(data.rows), s.seed);
    let header = Header {
        format: JOURNAL_FORMAT,
        model_sha256: mixers[0].base().sha256()?,
        data_sha256: data.sha256.clone(),
        metric: cx.metric.clone(),
        output: cx.eval_cfg.output.clone(),
        seed: s.seed,
        rows: rows.len(),
        latency_runs: s.latency_runs,
        threads: cx.eval_cfg.session.intra_threads,
        groups: groups.clone(),
        allowed: allowed.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect(),
        ptq: serde_json::to_value((&s.ptq, &s.calibration_methods)).unwrap_or_default(),
    };
    let journal = dir.join("journal.jsonl");
    let records = open_journal(&journal, &header, cx)?;
    let baseline_size = cx.baseline().size_bytes;
    let deadline = s.budget_minutes.map(|m| started + std::time::Duration::from_secs_f64(m * 60.0));
    let mut search = Search {
        cx,
        s,
        mixers,
        groups,
        allowed,
        dir,
        journal,
        records,
        rows,
        reference: None,
        baseline_size,
        deadline,
        history: Vec::new(),
        size_feasible: None,
        start: None,
        anchors: Vec::new(),
    };
    search.explore()?;
    search.confirm(index)
}

impl Search<'_, '_, '_, '_> {
    fn layers(&self, config: &str) -> BTreeMap<String, Precision> {
        self.groups.iter().zip(config.bytes()).flat_map(|(members, c)| members.iter().map(move |m| (m.clone(), precision(c)))).collect()
    }

    /// The builder for a config (its gene 0: the calibration method).
    fn mixer(&self, config: &str) -> &Mixer {
        let i = config.as_bytes().first().map_or(0, |c| c.saturating_sub(b'0') as usize);
        &self.mixers[i.min(self.mixers.len() - 1)]
    }

    fn trials_done(&self) -> usize {
        self.records.iter().filter(|r| r.kind == Kind::Trial && r.pruned.is_none()).count()
    }

    fn out_of_budget(&self) -> bool {
        self.trials_done() >= self.s.budget_trials || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The record that answers `config` at `kind`: a trial for a trial (measured, or pruned
    /// before measuring), any measured record for a probe.
    fn find(&self, config: &str, kind: Kind) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.config == config
                && match kind {
                    Kind::Trial => r.kind == Kind::Trial,
                    Kind::Reference => r.kind == Kind::Reference,
                    Kind::Probe => r.pruned.is_none(),
                }
        })
    }

    /// Measures the configs not yet in the journal (trials only while budget is left) and
    /// returns the record of each config that has one.
    fn measure(&mut self, configs: &[String], kind: Kind, label: &str) -> Result<Vec<Option<Record>>> {
        let min_ratio = self.cx.job.recipe.constraints.min_compression_ratio;
        if kind == Kind::Trial && min_ratio.is_some() && self.size_feasible.is_none() {
            let smallest: String = self
                .allowed
                .iter()
                .map(|a| {
                    if a.contains(&b'4') {
                        '4'
                    } else if a.contains(&b'8') {
                        '8'
                    } else {
                        'f'
                    }
                })
                .collect();
            let bytes = self.mixer(&smallest).build(&self.layers(&smallest))?.to_bytes()?.len() as u64;
            self.size_feasible = Some(min_ratio.is_some_and(|m| self.baseline_size as f64 / bytes.max(1) as f64 >= m));
        }
        // The starting points are always measured: the front needs somewhere to start.
        let prune_by_size = kind == Kind::Trial && self.size_feasible == Some(true) && self.trials_done() > 0;
        let mut todo: Vec<(usize, String)> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut budget = self.s.budget_trials.saturating_sub(self.trials_done());
        for (i, c) in configs.iter().enumerate() {
            if self.find(c, kind).is_some() || !seen.insert(c.clone()) {
                continue;
            }
            if kind == Kind::Trial {
                if budget == 0 || self.deadline.is_some_and(|d| Instant::now() >= d) {
                    continue;
                }
                budget -= 1;
            }
            todo.push((i, c.clone()));
        }
        if !todo.is_empty() {
            self.cx.obs.begin(&format!("{label} ({} to measure)", todo.len()), todo.len() as u64);
            let mut specs = Vec::new();
            let mut pending = Vec::new();
            for (_, config) in &todo {
                let n = self.records.len() + pending.len() + specs.len();
                let file = self.dir.join("trials").join(format!("{n}.onnx"));
                let model = self.mixer(config).build(&self.layers(config))?;
                model.save(&file, &SaveOptions::default())?;
                let size = std::fs::metadata(&file).map_err(io_err(&file))?.len();
                let ratio = self.baseline_size as f64 / size.max(1) as f64;
                if prune_by_size && let Some(min) = min_ratio.filter(|&m| ratio < m) {
                    let _ = std::fs::remove_file(&file);
                    pending.push(Record {
                        n,
                        kind,
                        config: config.clone(),
                        metric: f64::NAN,
                        drop_pct: f64::NAN,
                        latency_ms_p50: None,
                        size_bytes: size,
                        sha256: String::new(),
                        pruned: Some(format!("{ratio:.2}x smaller, under min_compression_ratio {min}")),
                        seconds: 0.0,
                    });
                    continue;
                }
                specs.push((
                    config.clone(),
                    size,
                    TrialSpec {
                        id: format!("{n}"),
                        file,
                        data: self.cx.job.evaluation.path.clone(),
                        rows: self.rows.clone(),
                        metric: self.cx.metric.clone(),
                        output: self.cx.eval_cfg.output.clone(),
                        latency_runs: if kind == Kind::Reference { 0 } else { self.s.latency_runs },
                        threads: self.cx.eval_cfg.session.intra_threads,
                        lock: Some(self.dir.join("latency.lock")),
                    },
                ));
            }
            let only: Vec<TrialSpec> = specs.iter().map(|s| s.2.clone()).collect();
            let obs = &mut *self.cx.obs;
            let results = match self.cx.job.trials {
                Some(t) if self.s.workers > 1 => t.measure(&only, self.s.workers, &mut |k| obs.advance(k as u64))?,
                _ => InProcess { data: self.cx.job.evaluation }.measure(&only, 1, &mut |k| obs.advance(k as u64))?,
            };
            let reference = self.reference.unwrap_or(f64::NAN);
            let metric = self.cx.metric.clone();
            for ((config, size, spec), r) in specs.into_iter().zip(results) {
                let _ = std::fs::remove_file(&spec.file);
                let drop_pct = if kind == Kind::Reference { 0.0 } else { metric_drop_pct(&metric, reference, r.metric) };
                pending.push(Record {
                    n: 0,
                    kind,
                    config,
                    metric: r.metric,
                    drop_pct,
                    latency_ms_p50: r.latency_ms_p50,
                    size_bytes: size,
                    sha256: r.sha256,
                    pruned: None,
                    seconds: r.seconds,
                });
            }
            // Journal order is the order asked, so a resumed search reads what it would
            // have measured.
            let order: HashMap<&str, usize> = todo.iter().map(|(i, c)| (c.as_str(), *i)).collect();
            pending.sort_by_key(|r| order.get(r.config.as_str()).copied().unwrap_or(usize::MAX));
            for mut r in pending {
                r.n = self.records.len();
                let line = serde_json::to_string(&r).map_err(|e| EngineError::Config(e.to_string()))?;
                trial::append_line(&self.journal, &line)?;
                self.records.push(r);
            }
            let front = self.front();
            self.history.push(serde_json::json!({"trials": self.trials_done(), "front_size": front.len()}));
            self.write_front()?;
            if let Some(sink) = self.cx.job.journal_sink {
                sink.save(&self.journal)?;
            }
            let measured = self.trials_done();
            self.cx.obs.end(&format!("{label}: {measured} trial(s) measured of {}", self.s.budget_trials));
        }
        Ok(configs.iter().map(|c| self.find(c, kind).cloned()).collect())
    }

    /// The point a record makes for the front (objectives minimised) and how far it is from
    /// meeting the job's constraints.
    fn point(&self, r: &Record) -> nsga::Point {
        let c = &self.cx.job.recipe.constraints;
        let latency = r.latency_ms_p50.unwrap_or(f64::INFINITY);
        let objectives = self
            .s
            .objectives
            .iter()
            .map(|o| match o {
                Objective::Metric => r.drop_pct,
                Objective::Latency => latency,
                Objective::Size => r.size_bytes as f64,
            })
            .collect();
        let ratio = self.baseline_size as f64 / r.size_bytes.max(1) as f64;
        let mut violation = (r.drop_pct - c.max_metric_drop_pct).max(0.0) / c.max_metric_drop_pct.max(0.01);
        if let Some(l) = c.max_latency_ms_p50 {
            violation += (latency - l).max(0.0) / l;
        }
        if let Some(m) = c.min_compression_ratio {
            violation += (m - ratio).max(0.0) / m;
        }
        nsga::Point { objectives, violation }
    }

    fn measured_trials(&self) -> Vec<&Record> {
        self.records.iter().filter(|r| r.kind == Kind::Trial && r.pruned.is_none()).collect()
    }

    /// The non-dominated trials (constrained dominance), in journal order.
    fn front(&self) -> Vec<&Record> {
        let trials = self.measured_trials();
        let points: Vec<nsga::Point> = trials.iter().map(|r| self.point(r)).collect();
        // Feasibility aside: the front a user reads is the plain Pareto front.
        let plain: Vec<nsga::Point> = points.iter().map(|p| nsga::Point { objectives: p.objectives.clone(), violation: 0.0 }).collect();
        nsga::fronts(&plain).into_iter().next().unwrap_or_default().into_iter().map(|i| trials[i]).collect()
    }

    /// The best trial on the subset: meeting every constraint, best by the recipe's
    /// objective; else the closest to meeting them.
    fn best(&self) -> Option<&Record> {
        let objective = self.cx.job.recipe.objective;
        let key = |r: &Record| match objective {
            Objective::Metric => r.drop_pct,
            Objective::Latency => r.latency_ms_p50.unwrap_or(f64::INFINITY),
            Objective::Size => r.size_bytes as f64,
        };
        self.measured_trials().into_iter().min_by(|a, b| {
            let (pa, pb) = (self.point(a), self.point(b));
            pa.violation.total_cmp(&pb.violation).then(key(a).total_cmp(&key(b))).then(a.drop_pct.total_cmp(&b.drop_pct)).then(a.n.cmp(&b.n))
        })
    }

    /// `front.json`: the current front and best, written after every batch of trials.
    fn write_front(&self) -> Result<()> {
        let row = |r: &Record| {
            serde_json::json!({
                "trial": r.n, "config": r.config, "metric": r.metric, "drop_pct": r.drop_pct,
                "latency_ms_p50": r.latency_ms_p50, "size_bytes": r.size_bytes,
                "compression_ratio": self.baseline_size as f64 / r.size_bytes.max(1) as f64,
                "meets_constraints": self.point(r).violation == 0.0,
            })
        };
        let v = serde_json::json!({
            "objectives": self.s.objectives,
            "groups": self.groups,
            "trials": self.trials_done(),
            "probes": self.records.iter().filter(|r| r.kind == Kind::Probe).count(),
            "subset_rows": self.rows.len(),
            "front": self.front().into_iter().map(row).collect::<Vec<_>>(),
            "best": self.best().map(row),
            "proxy": self.proxy_quality(),
            "history": self.history,
        });
        let path = self.dir.join("front.json");
        trial::write_atomic(&path, &serde_json::to_vec_pretty(&v).map_err(|e| EngineError::Config(e.to_string()))?)
    }

    /// Per-group drop of each probe against the starting config (`start`).
    fn sensitivities(&self, start: &str) -> Option<Vec<[f64; 3]>> {
        let base = self.find(start, Kind::Probe)?.drop_pct;
        let mut out = Vec::new();
        for (g, allowed) in self.allowed.iter().enumerate() {
            let mut d = [0.0; 3];
            for &c in allowed {
                if c == start.as_bytes()[g] {
                    continue;
                }
                let mut probe = start.as_bytes().to_vec();
                probe[g] = c;
                let r = self.find(std::str::from_utf8(&probe).ok()?, Kind::Probe)?;
                d[slot(c)] = r.drop_pct - base;
            }
            out.push(d);
        }
        Some(out)
    }

    /// Per-group P50 change (ms) of each probe against the starting config.
    fn latency_deltas(&self, start: &str) -> Option<Vec<[f64; 3]>> {
        let base = self.find(start, Kind::Probe)?.latency_ms_p50?;
        let mut out = Vec::new();
        for (g, allowed) in self.allowed.iter().enumerate() {
            let mut d = [0.0; 3];
            for &c in allowed {
                if c == start.as_bytes()[g] {
                    continue;
                }
                let mut probe = start.as_bytes().to_vec();
                probe[g] = c;
                d[slot(c)] = self.find(std::str::from_utf8(&probe).ok()?, Kind::Probe)?.latency_ms_p50? - base;
            }
            out.push(d);
        }
        Some(out)
    }

    /// The additive proxy (start's drop + each changed group's probe drop) and how well it
    /// ranked the measured trials (Spearman).
    fn proxy_quality(&self) -> serde_json::Value {
        let start = self.start();
        let (Some(sens), Some(base)) = (self.sensitivities(&start), self.find(&start, Kind::Probe).map(|r| r.drop_pct)) else {
            return serde_json::Value::Null;
        };
        let trials = self.measured_trials();
        let predicted: Vec<f64> = trials
            .iter()
            .map(|r| base + r.config.bytes().zip(start.bytes()).enumerate().filter(|(_, (a, b))| a != b).map(|(g, (a, _))| sens[g][slot(a)]).sum::<f64>())
            .collect();
        let measured: Vec<f64> = trials.iter().map(|r| r.drop_pct).collect();
        serde_json::json!({
            "name": "additive per-group sensitivity (sum of single-group probe drops)",
            "spearman": nsga::spearman(&predicted, &measured),
            "trials": trials.len(),
        })
    }

    /// All int8 where a group may take it (else its first allowed precision).
    fn start(&self) -> String {
        self.start.clone().unwrap_or_else(|| self.starts().into_iter().next().unwrap_or_default())
    }

    /// All int8 under each calibration method.
    fn starts(&self) -> Vec<String> {
        (0..self.mixers.len())
            .map(|m| {
                let rest: String = self.allowed[1..].iter().map(|a| if a.contains(&b'8') { '8' } else { a[a.len() - 1] as char }).collect();
                format!("{}{rest}", (b'0' + m as u8) as char)
            })
            .collect()
    }

    fn explore(&mut self) -> Result<()> {
        let n = self.groups.len();
        let float: String = format!("0{}", "f".repeat(n - 1));
        let r = self.measure(std::slice::from_ref(&float), Kind::Reference, "score the input model on the search subset")?;
        self.reference = r[0].as_ref().map(|r| r.metric);
        let starts = self.starts();
        let measured = self.measure(&starts, Kind::Trial, "starting points (all int8, each calibration method)")?;
        // The walks start from the best of them (metric, then P50).
        let start = measured
            .iter()
            .flatten()
            .min_by(|a, b| {
                a.drop_pct
                    .total_cmp(&b.drop_pct)
                    .then(a.latency_ms_p50.unwrap_or(f64::MAX).total_cmp(&b.latency_ms_p50.unwrap_or(f64::MAX)))
                    .then(a.n.cmp(&b.n))
            })
            .map_or_else(|| starts[0].clone(), |r| r.config.clone());
        self.start = Some(start.clone());
        let mut probes: Vec<String> = Vec::new();
        for g in 0..n {
            for &c in &self.allowed[g] {
                if c != start.as_bytes()[g] {
                    let mut p = start.as_bytes().to_vec();
                    p[g] = c;
                    probes.push(String::from_utf8_lossy(&p).into_owned());
                }
            }
        }
        self.measure(&probes, Kind::Probe, "sensitivity probes (one group changed at a time)")?;
        let sens = self.sensitivities(&start).ok_or_else(|| EngineError::Config("the sensitivity probes are incomplete".into()))?;
        let lat = self.latency_deltas(&start).ok_or_else(|| EngineError::Config("the sensitivity probes have no latency".into()))?;
        let base_p50 = self.find(&start, Kind::Trial).and_then(|r| r.latency_ms_p50).unwrap_or(f64::INFINITY);
        // Float where a group runs faster in float (measured by its probe, beyond 3 %), or where
        // the engine's fixed rule says so: what the single-recipe PTQ leaves float for speed.
        let speed: String = (0..n)
            .map(|g| {
                let faster = lat[g][slot(b'f')] < -0.03 * base_p50 && sens[g][slot(b'f')] <= 0.0;
                let by_rule = self.groups[g].iter().any(|m| self.mixer(&start).float_for_speed.contains(m));
                if self.allowed[g].contains(&b'f') && (faster || by_rule) { 'f' } else { start.as_bytes()[g] as char }
            })
            .collect();
        let weights = group_weights(self.mixers[0].base(), &self.groups);
        let knees = self.knees(&start, &sens, &weights);
        // The points single recipes make (all int8 under each calibration method, the knees
        // a drop budget makes, all int4): confirm looks for front points that beat them.
        let int4: String = start.bytes().enumerate().map(|(g, c)| if g > 0 && self.allowed[g].contains(&b'4') { '4' } else { c as char }).collect();
        self.anchors = starts.iter().cloned().chain([int4]).chain(knees.iter().cloned()).collect();
        let walks = self.walks(&start, &speed, &sens, &lat, &weights, &knees);
        self.measure(&walks, Kind::Trial, "greedy curves")?;
        // Gene 0 across the front: every walk keeps the best start's calibration method (or
        // smoothing choice), and one that lost on all int8 can win on a mixed config (with the
        // stem float, ResNet-8's other methods rank differently).
        let swaps = self.gene0_swaps();
        self.measure(&swaps, Kind::Trial, "the front under gene 0's other choices")?;
        if self.s.strategy == Strategy::Nsga2 {
            self.evolve()?;
        }
        self.write_front()
    }

    /// Each front point with gene 0 (calibration method, or plain/smoothed) set to each of
    /// its other choices, front order.
    fn gene0_swaps(&self) -> Vec<String> {
        let front: Vec<String> = self.front().into_iter().map(|r| r.config.clone()).collect();
        front
            .iter()
            .flat_map(|c| {
                let (first, rest) = c.split_at(1);
                self.allowed[0].iter().filter(move |&&m| first.as_bytes()[0] != m).map(move |&m| format!("{}{rest}", m as char))
            })
            .collect()
    }

    /// The greedy curves' points, evenly spaced along each walk within the budget:
    /// - from the speed config toward int4, cheapest in P50 per byte saved first (then metric);
    /// - from all int8 toward int4, cheapest in metric per byte saved first (AMP's curve);
    /// - from all int8 toward float, most metric gained per byte spent first;
    /// - from where that walk first meets the metric budget (by the proxy) toward int4 again;
    /// - and the knees toward float (`knees`).
    fn walks(&self, start: &str, speed: &str, sens: &[[f64; 3]], lat: &[[f64; 3]], weights: &[u64], knees: &[String]) -> Vec<String> {
        let n = start.len();
        let elems = |g: usize| weights[g].max(1) as f64;
        let per_byte = |v: f64, g: usize| v.max(0.0) / elems(g);
        let i4 = slot(b'4');
        let cheapest = |from: &str, key: &dyn Fn(usize) -> (f64, f64)| -> Vec<usize> {
            let mut v: Vec<usize> = (0..n).filter(|&g| self.allowed[g].contains(&b'4') && !matches!(from.as_bytes()[g], b'4' | b'f')).collect();
            v.sort_by(|&a, &b| {
                let (ka, kb) = (key(a), key(b));
                ka.0.total_cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(elems(b).total_cmp(&elems(a))).then(a.cmp(&b))
            });
            v
        };
        let by_metric = |g: usize| (per_byte(sens[g][i4], g), per_byte(lat[g][i4], g));
        let by_speed = |g: usize| (per_byte(lat[g][i4], g), per_byte(sens[g][i4], g));
        let mut up: Vec<usize> = (0..n).filter(|&g| self.allowed[g].contains(&b'f') && start.as_bytes()[g] != b'f' && sens[g][slot(b'f')] < 0.0).collect();
        up.sort_by(|&a, &b| (sens[a][slot(b'f')] / elems(a)).total_cmp(&(sens[b][slot(b'f')] / elems(b))).then(a.cmp(&b)));
        let apply = |from: &str, moves: &[usize], to: u8| -> String {
            let mut b = from.as_bytes().to_vec();
            for &g in moves {
                b[g] = to;
            }
            String::from_utf8_lossy(&b).into_owned()
        };
        let left = self.s.budget_trials.saturating_sub(self.trials_done()).max(1);
        let per = (left / 4).max(1);
        let prefixes = |len: usize| -> Vec<usize> {
            if len == 0 {
                return Vec::new();
            }
            // Dense at both ends of a walk: the cheap first moves, and the last few (everything
            // but the dearest groups, next to the single-precision extreme).
            let k = per.min(len);
            let h = k.div_ceil(2).max(1);
            let step = |i: usize| ((i * i * len) as f64 / (2 * h * h) as f64).ceil() as usize;
            let mut v: Vec<usize> = (1..=h).map(|i| step(i).clamp(1, len)).chain((0..k - h.min(k)).map(|i| len - step(i).min(len - 1))).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let limit = self.cx.job.recipe.constraints.max_metric_drop_pct;
        let base = self.find(start, Kind::Probe).map_or(0.0, |r| r.drop_pct);
        let mut fixed = start.to_owned();
        let mut predicted = base;
        for &g in &up {
            if predicted <= limit * 0.5 {
                break;
            }
            predicted += sens[g][slot(b'f')];
            fixed = apply(&fixed, &[g], b'f');
        }
        let walk = |from: &str, order: Vec<usize>| -> Vec<String> { prefixes(order.len()).into_iter().map(|k| apply(from, &order[..k], b'4')).collect() };
        let walks: [Vec<String>; 6] = [
            vec![speed.to_owned()],
            knees.to_vec(),
            walk(speed, cheapest(speed, &by_speed)),
            walk(start, cheapest(start, &by_metric)),
            prefixes(up.len()).into_iter().map(|k| apply(start, &up[..k], b'f')).collect(),
            walk(&fixed, cheapest(&fixed, &by_metric)),
        ];
        let mut out = Vec::new();
        // Interleaved, so a budget cut keeps the spread of every walk.
        let longest = walks.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for w in &walks {
                if let Some(c) = w.get(i)
                    && !out.contains(c)
                {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    /// The knees toward float: for each drop of the ladder, the shortest run of groups turned
    /// float from `start` that the proxy predicts within it, ordered by gain per weight
    /// (smallest) and by gain alone (fewest float groups: how `ptq` with a drop budget picks).
    /// Single recipes with a tight drop budget sit there, and the evenly spaced walks may step
    /// over them.
    fn knees(&self, start: &str, sens: &[[f64; 3]], weights: &[u64]) -> Vec<String> {
        let f = slot(b'f');
        let gain: Vec<usize> = (0..start.len()).filter(|&g| self.allowed[g].contains(&b'f') && start.as_bytes()[g] != b'f' && sens[g][f] < 0.0).collect();
        let mut per_weight = gain.clone();
        per_weight.sort_by(|&a, &b| (sens[a][f] / weights[a].max(1) as f64).total_cmp(&(sens[b][f] / weights[b].max(1) as f64)).then(a.cmp(&b)));
        let mut by_gain = gain;
        by_gain.sort_by(|&a, &b| sens[a][f].total_cmp(&sens[b][f]).then(a.cmp(&b)));
        let base = self.find(start, Kind::Probe).map_or(0.0, |r| r.drop_pct);
        let mut out = Vec::new();
        for level in DROP_LADDER {
            for order in [&per_weight, &by_gain] {
                let (mut predicted, mut c) = (base, start.as_bytes().to_vec());
                for &g in order.iter() {
                    if predicted <= level {
                        break;
                    }
                    predicted += sens[g][f];
                    c[g] = b'f';
                }
                let c = String::from_utf8_lossy(&c).into_owned();
                if c != start && !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// NSGA-II generations from every trial so far, until the budget is spent. Generation
    /// `k`'s random stream is seeded by (seed, k), so a resumed search makes the same children.
    fn evolve(&mut self) -> Result<()> {
        let mut generation = 0u64;
        while !self.out_of_budget() {
            let trials: Vec<Record> = self.measured_trials().into_iter().cloned().collect();
            if trials.is_empty() {
                break;
            }
            let points: Vec<nsga::Point> = trials.iter().map(|r| self.point(r)).collect();
            let pool = nsga::select(&points, self.s.population.min(trials.len()));
            let mut rng = ChaCha8Rng::seed_from_u64(self.s.seed ^ (generation.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut children: Vec<String> = Vec::new();
            let mut tries = 0;
            while children.len() < self.s.population && tries < self.s.population * 20 {
                tries += 1;
                let a = nsga::tournament(&mut rng, &pool).0;
                let b = nsga::tournament(&mut rng, &pool).0;
                let child = nsga::offspring(&mut rng, trials[a].config.as_bytes(), trials[b].config.as_bytes(), &self.allowed);
                let child = String::from_utf8_lossy(&child).into_owned();
                if self.find(&child, Kind::Trial).is_none() && !children.contains(&child) {
                    children.push(child);
                }
            }
            if children.is_empty() {
                break;
            }
            let before = self.trials_done();
            self.measure(&children, Kind::Trial, &format!("NSGA-II generation {}", generation + 1))?;
            generation += 1;
            if self.trials_done() == before && !self.out_of_budget() {
                break;
            }
        }
        Ok(())
    }
}

/// Metric drops (%) where the search makes sure of a point: the knees of the walk toward
/// float are trials, and the smallest front point within each is confirmed. Dense below
/// 0.25 %: the proxy (a sum of single-group drops) is off by a few hundredths of a point
/// there, and a knee one group short of a single recipe's point does not beat it (MiniLM's
/// 0.25 % knee measured 0.9976 against `ptq_accuracy_first`'s 0.9977).
const DROP_LADDER: [f64; 6] = [0.1, 0.15, 0.2, 0.25, 0.5, 1.0];

/// Where a gene value's probe sits in a group's `[f64; 3]` (calibration genes: their digit).
fn slot(c: u8) -> usize {
    match c {
        b'f' | b'0' => 0,
        b'8' | b'1' => 1,
        _ => 2,
    }
}
