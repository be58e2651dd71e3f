//! The stage runner behind `tamp compress` (and, later, one stage of a service job): measure
//! the baseline, build one candidate per combination a recipe stage lists, return the most
//! sensitive layers to float while the metric constraint fails, time every candidate on the
//! target runtime (flagging those that are not faster), choose the best under the recipe's
//! constraints and objective, and write the artifacts with their metadata and a manifest.
//!
//! Output folder:
//! - `candidates/<id>.onnx` and `candidates.json` (metric, latency, size, ratio, flags);
//! - `best.onnx` + `best.json` (the chosen artifact and its metadata: runtime, opset,
//!   compression, metrics, compatibility with ONNX Runtime's optimized op types);
//! - `manifest.json` (sha256 of every input and output, the recipe, seeds, versions), last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tamp_domain::Recipe;
use tamp_domain::recipe::{CalibrationMethod, ClusterStage, LowrankStage, Objective, PruningScope, PruningStage, PruningType, PtqMode, PtqStage, Stage};
use tamp_onnx::{Model, Pass, SaveOptions};

use crate::calibrate::Method;
use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::eval::{self, EvalConfig};
use crate::metrics;
use crate::passes::{ClusterWeights, DynamicConfig, LowRank, NBitsConfig, QuantizeConfig, QuantizeNBits, cluster, dynamic, quantize};
use crate::perf::LatencyConfig;
use crate::ptq::{self, PtqConfig};
use crate::runtime::{self, SessionConfig};

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
    pub out_dir: &'a Path,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Technique-specific facts (per-layer ranks, cluster entropy, coded size, …).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub baseline: Measured,
    pub candidates: Vec<Candidate>,
    /// Candidate id of `best.onnx`.
    pub chosen: String,
    /// Why it was chosen (and which constraints it misses, if every candidate misses some).
    pub reason: String,
    pub objective: Objective,
}

/// How [`Runner::uniform_and_allocated`] names its candidates: id part, mode prefix,
/// sensitivity-cache tag and the unit's key in the curves.
struct Allocated {
    id: &'static str,
    mode: &'static str,
    tag: &'static str,
    key: &'static str,
}

/// Builds a candidate with the given layers kept in float.
type BuildFn<'m> = dyn Fn(&BTreeSet<String>) -> Result<Model> + 'm;

/// Minimum speed-up counted as "faster": timing noise on a shared machine is a few percent.
const FASTER_THAN: f64 = 1.02;
/// Rows the accuracy-aware fallback scores each trial on.
const SENSITIVITY_ROWS: usize = 256;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Io { path: path.to_owned(), source: e }
}

fn method(m: CalibrationMethod, percentile: f64) -> Method {
    match m {
        CalibrationMethod::Minmax => Method::MinMax,
        CalibrationMethod::Kl => Method::Entropy,
        CalibrationMethod::Percentile => Method::Percentile { percentile },
        CalibrationMethod::Mse => Method::Mse,
    }
}

/// Relative metric drop in percent, honouring the metric's direction.
pub fn metric_drop_pct(metric: &str, baseline: f64, value: f64) -> f64 {
    let delta = if metrics::higher_is_better(metric) { baseline - value } else { value - baseline };
    if baseline.abs() > f64::EPSILON { 100.0 * delta / baseline.abs() } else { 100.0 * delta }
}

/// `static` for graphs with convolutions, `dynamic` for transformer-style graphs.
pub fn resolve_mode(model: &Model, mode: PtqMode) -> PtqMode {
    match mode {
        PtqMode::Auto => {
            let has_conv = model.graph().node.iter().any(|n| n.op_type.as_deref() == Some("Conv"));
            let dynamic_units = dynamic::quantizable_nodes(model, &DynamicConfig::default()).map(|v| v.len()).unwrap_or(0);
            if !has_conv && dynamic_units > 0 { PtqMode::Dynamic } else { PtqMode::Static }
        }
        m => m,
    }
}

struct Runner<'a, 'o> {
    job: &'a Job<'a>,
    /// The input model, loaded once.
    model: &'a Model,
    obs: &'o mut dyn Observer,
    metric: String,
    eval_cfg: EvalConfig,
    baseline: Option<Measured>,
}

impl Runner<'_, '_> {
    fn measure(&mut self, path: &Path, model: &Model, label: &str) -> Result<Measured> {
        let rows = self.eval_cfg.samples.unwrap_or(self.job.evaluation.rows).min(self.job.evaluation.rows) as u64;
        self.obs.begin(&format!("evaluate {label}"), rows);
        let obs = &mut *self.obs;
        let mut outputs = Vec::new();
        let keep = (label == "baseline").then_some(&mut outputs);
        let r = eval::evaluate(path, self.job.evaluation, &self.eval_cfg, keep, &mut |done, _| obs.advance(done as u64))?;
        if label == "baseline" {
            check_baseline(&self.metric, r.metrics.get(&self.metric).copied(), &outputs, self.job.evaluation)?;
        }
        let value = r.metrics.get(&self.metric).copied().ok_or_else(|| EngineError::Config(format!("metric '{}' produced no value", self.metric)))?;
        let macs = crate::flops::count(model, self.job.evaluation, 0)?;
        let m = Measured {
            metric: self.metric.clone(),
            value,
            latency_ms_p50: r.latency.p50_ms,
            latency_ms_p95: r.latency.p95_ms,
            throughput_b32: r.throughput.iter().find(|t| t.batch_size == 32 && t.skipped.is_none()).and_then(|t| t.samples_per_s),
            size_bytes: r.model.size_bytes,
            sha256: r.model.sha256,
            eval_rows: r.dataset.evaluated_rows,
            macs_per_sample: Some(macs.per_sample),
        };
        self.obs.end(&format!("{label}: {} {:.4}, P50 {:.3} ms", self.metric, m.value, m.latency_ms_p50));
        Ok(m)
    }

    fn baseline(&self) -> &Measured {
        // Set before any candidate is built.
        self.baseline.as_ref().unwrap_or_else(|| unreachable!("baseline measured first"))
    }

    /// Saves, measures and judges one PTQ candidate model (`bits`: weights, activations).
    #[allow(clippy::too_many_arguments)]
    fn candidate(
        &mut self,
        model: &Model,
        id: String,
        stage: usize,
        p: &PtqStage,
        mode: PtqMode,
        float_nodes: Vec<String>,
        bits: (u8, u8),
    ) -> Result<Candidate> {
        let mut c = self.judge(model, id, stage, "ptq")?;
        c.mode = if bits.0 == 4 { "weight_only".into() } else { format!("{mode:?}").to_lowercase() };
        c.weights_bits = bits.0;
        c.activations_bits = bits.1;
        c.calibration = (mode == PtqMode::Static && bits.0 != 4).then(|| format!("{:?}", p.calibration.method).to_lowercase());
        c.per_channel_weights = p.per_channel_weights;
        c.float_nodes = float_nodes;
        Ok(c)
    }

    /// Saves, measures and judges one candidate model against the baseline and the constraints.
    fn judge(&mut self, model: &Model, id: String, stage: usize, technique: &str) -> Result<Candidate> {
        let file = format!("candidates/{id}.onnx");
        let path = self.job.out_dir.join(&file);
        model.save(&path, &SaveOptions::default())?;
        let measured = self.measure(&path, model, &id)?;
        let coded_size_bytes = cluster::deflated_size(&std::fs::read(&path).map_err(io_err(&path))?);
        let base = self.baseline().clone();
        let c = &self.job.recipe.constraints;
        let ratio = base.size_bytes as f64 / measured.size_bytes.max(1) as f64;
        let drop = metric_drop_pct(&self.metric, base.value, measured.value);
        let speedup = base.latency_ms_p50 / measured.latency_ms_p50.max(1e-9);
        let faster = speedup >= FASTER_THAN;
        let mut missed = Vec::new();
        if drop > c.max_metric_drop_pct {
            missed.push(format!("max_metric_drop_pct: {} dropped {drop:.2}% (limit {}%)", self.metric, c.max_metric_drop_pct));
        }
        if let Some(limit) = c.max_latency_ms_p50.filter(|l| measured.latency_ms_p50 > *l) {
            missed.push(format!("max_latency_ms_p50: {:.3} ms (limit {limit} ms)", measured.latency_ms_p50));
        }
        if let Some(limit) = c.min_compression_ratio.filter(|l| ratio < *l) {
            missed.push(format!("min_compression_ratio: {ratio:.2}x (limit {limit}x)"));
        }
        let mut flags = Vec::new();
        if !faster {
            flags.push(format!(
                "not faster than the baseline on onnxruntime (P50 {:.3} ms vs {:.3} ms): never chosen for a latency objective",
                measured.latency_ms_p50, base.latency_ms_p50
            ));
        }
        Ok(Candidate {
            id,
            stage,
            technique: technique.into(),
            mode: String::new(),
            weights_bits: 32,
            activations_bits: 32,
            calibration: None,
            per_channel_weights: false,
            float_nodes: Vec::new(),
            file,
            measured,
            compression_ratio: ratio,
            metric_drop_pct: drop,
            speedup_p50: speedup,
            faster,
            missed,
            flags,
            coded_size_bytes,
            details: serde_json::Value::Null,
        })
    }

    /// Weight clustering: one candidate; details carry per-layer entropy and the coded
    /// (deflated) sizes of the artifact and of the baseline.
    fn cluster(&mut self, stage: usize, cfg: &ClusterStage, model: &Model) -> Result<Vec<Candidate>> {
        self.obs.begin(&format!("cluster weights ({} clusters, {:?})", cfg.clusters, cfg.granularity), 0);
        let started = std::time::Instant::now();
        let pass = ClusterWeights { config: cfg.clone() };
        let folded = if cfg.fold_batch_norm {
            tamp_onnx::patch::run_to_fixpoint(model, &[&crate::passes::FoldBatchNorm], 4).map_err(ptq::patch_err)?
        } else {
            model.clone()
        };
        let model = &folded;
        let Some((patch, layers)) = pass.build(model)? else {
            self.obs.end("no layer to cluster");
            return Ok(Vec::new());
        };
        let clustered = patch.apply(model, pass.name()).map_err(ptq::patch_err)?;
        let pass_seconds = started.elapsed().as_secs_f64();
        self.obs.end(&format!("{} layers clustered", layers.len()));
        let id = format!("s{stage}-cluster-k{}", cfg.clusters);
        let mut c = self.judge(&clustered, id, stage, "clustering")?;
        let coded = c.coded_size_bytes;
        let base_bytes = std::fs::read(self.job.model_path).map_err(io_err(self.job.model_path))?;
        let base_coded = cluster::deflated_size(&base_bytes);
        let weights: usize = layers.iter().map(|l| l.elements).sum();
        let entropy = layers.iter().map(|l| l.index_entropy_bits * l.elements as f64).sum::<f64>() / weights.max(1) as f64;
        c.mode = format!("{:?}", cfg.granularity).to_lowercase();
        c.details = serde_json::json!({
            "clusters": cfg.clusters,
            "layers": layers,
            "index_entropy_bits_per_weight": entropy,
            "coded_size_bytes": coded,
            "baseline_coded_size_bytes": base_coded,
            "coded_compression_ratio": base_bytes.len() as f64 / coded.max(1) as f64,
            "coding": "deflate (level 6) of the ONNX file",
            "pass_seconds": pass_seconds,
        });
        Ok(vec![c])
    }

    /// Structured channel pruning: a uniform candidate (every group at `target_sparsity`)
    /// and, with `sensitivity`, one whose per-group levels come from measured sensitivity
    /// curves (greedy: the cheapest predicted drop per removed channel first).
    fn prune(&mut self, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        use crate::passes::prune::{self as pr, ChannelGroup};
        match cfg.kind {
            PruningType::StructuredChannel => {}
            PruningType::AttentionHead => return self.prune_heads(stage, cfg, model),
            _ => return self.sparsify(stage, cfg, model),
        }
        self.obs.begin("find channel groups", 0);
        let groups = pr::analyze(model);
        if groups.is_empty() {
            self.obs.end("no prunable channel group (every channel feeds a Concat, Reshape, output …)");
            return Ok(Vec::new());
        }
        let total: usize = groups.iter().map(|g| g.channels).sum();
        self.obs.end(&format!("{} channel groups, {total} prunable channels", groups.len()));
        let imps: Vec<Vec<f64>> = groups.iter().map(|g| pr::importance(model, g)).collect();
        let min_keep = cfg.min_channels.max(1);
        let step = cfg.round_to.max(1);
        let removable = |g: &ChannelGroup, level: f64| {
            let want = ((g.channels as f64 * level).round() as usize).min(g.channels.saturating_sub(min_keep));
            if g.channels < 2 * step {
                return want;
            }
            // Keep a multiple of `step` channels: round the kept count to the nearest one.
            let keep = (((g.channels - want) as f64 / step as f64).round() as usize * step).clamp(step, g.channels);
            g.channels - keep
        };
        let build = |levels: &[f64]| -> Result<Model> {
            let keep: BTreeMap<usize, Vec<usize>> =
                groups.iter().zip(&imps).zip(levels).map(|((g, imp), &l)| (g.id, pr::keep_set(imp, removable(g, l)))).collect();
            Ok(pr::prune(model, &groups, &keep)?)
        };
        let params_before = pr::parameter_count(model);
        let describe = |levels: &[f64], m: &Model| {
            let removed: usize = groups.iter().zip(levels).map(|(g, &l)| removable(g, l)).sum();
            serde_json::json!({
                "groups": groups.iter().zip(levels).map(|(g, &l)| serde_json::json!({ "group": g.name, "channels": g.channels, "level": l, "removed": removable(g, l) })).collect::<Vec<_>>(),
                "removed_channels": removed,
                "prunable_channels": total,
                "achieved_sparsity": removed as f64 / total as f64,
                "params_before": params_before,
                "params_after": pr::parameter_count(m),
            })
        };
        if cfg.schedule == tamp_domain::recipe::PruningSchedule::Iterative {
            return self.prune_iterative(stage, cfg, model, &groups, &removable);
        }
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let shape = Allocated { id: "prune", mode: "structured_channel", tag: "", key: "group" };
        self.uniform_and_allocated(stage, cfg, model, &shape, &names, &|g, l| removable(&groups[g], l), &build, &describe)
    }

    /// A uniform candidate (every unit at `target_sparsity`) and, with `sensitivity`, one whose
    /// per-unit levels come from sensitivity curves, removing as much in all with the least
    /// predicted drop (structured channels and attention heads share this).
    #[allow(clippy::too_many_arguments)]
    fn uniform_and_allocated(
        &mut self,
        stage: usize,
        cfg: &PruningStage,
        model: &Model,
        shape: &Allocated,
        names: &[String],
        removable: &dyn Fn(usize, f64) -> usize,
        build: &(dyn Fn(&[f64]) -> Result<Model> + Sync),
        describe: &dyn Fn(&[f64], &Model) -> serde_json::Value,
    ) -> Result<Vec<Candidate>> {
        let t = cfg.target_sparsity;
        let uniform = vec![t; names.len()];
        let started = std::time::Instant::now();
        let m = build(&uniform)?;
        let uniform_seconds = started.elapsed().as_secs_f64();
        let mut c = self.judge(&m, format!("s{stage}-{}-uniform-{t}", shape.id), stage, "pruning")?;
        c.mode = format!("{}/uniform", shape.mode);
        c.details = describe(&uniform, &m);
        c.details["pass_seconds"] = serde_json::json!(uniform_seconds);
        let mut out = vec![c];
        if cfg.sensitivity {
            let started = std::time::Instant::now();
            let curves = self.sensitivity(cfg, model, shape.tag, names, build)?;
            // As much as the uniform candidate removes, so the two compare.
            let goal: usize = (0..names.len()).map(|u| removable(u, t)).sum();
            let alloc = allocate(&curves, &cfg.levels, goal, removable);
            let m = build(&alloc)?;
            let pass_seconds = started.elapsed().as_secs_f64();
            let mut c = self.judge(&m, format!("s{stage}-{}-sensitivity-{t}", shape.id), stage, "pruning")?;
            c.mode = format!("{}/sensitivity", shape.mode);
            let mut d = describe(&alloc, &m);
            d["pass_seconds"] = serde_json::json!(pass_seconds);
            d["sensitivity"] = serde_json::json!(
                names.iter().zip(&curves).map(|(n, cv)| serde_json::json!({ shape.key: n, "levels": cfg.levels, "metric_drop_pct": cv })).collect::<Vec<_>>()
            );
            c.details = d;
            out.push(c);
        }
        Ok(out)
    }

    /// Iterative structured pruning: `steps` steps to `target_sparsity` (uniform), each
    /// re-analysing the pruned graph and re-ranking channels on its weights, with the metric
    /// measured on the sensitivity rows after every step (the trajectory is in the details).
    /// Fine-tuning between steps arrives with training; until then a step changes only which
    /// channels the next one sees.
    fn prune_iterative(
        &mut self,
        stage: usize,
        cfg: &PruningStage,
        model: &Model,
        groups: &[crate::passes::prune::ChannelGroup],
        removable: &dyn Fn(&crate::passes::prune::ChannelGroup, f64) -> usize,
    ) -> Result<Vec<Candidate>> {
        use crate::passes::prune as pr;
        let original: BTreeMap<String, &pr::ChannelGroup> = groups.iter().map(|g| (g.name.clone(), g)).collect();
        let data = self.job.evaluation;
        let rows = data.sample(cfg.sensitivity_rows.min(data.rows), cfg.seed);
        let session = SessionConfig::default();
        let started = std::time::Instant::now();
        let mut current = model.clone();
        let mut trajectory = vec![
            serde_json::json!({ "step": 0, "level": 0.0, "metric": eval::score(model, data, &rows, &self.metric, 64, &session)?, "params": pr::parameter_count(model) }),
        ];
        self.obs.begin(&format!("prune in {} steps", cfg.steps), cfg.steps as u64);
        for step in 1..=cfg.steps {
            let level = cfg.target_sparsity * step as f64 / cfg.steps as f64;
            let now = pr::analyze(&current);
            let keep: BTreeMap<usize, Vec<usize>> = now
                .iter()
                .filter_map(|g| {
                    let orig = original.get(&g.name)?;
                    let target_keep = orig.channels - removable(orig, level);
                    Some((g.id, pr::keep_set(&pr::importance(&current, g), g.channels.saturating_sub(target_keep))))
                })
                .collect();
            current = pr::prune(&current, &now, &keep)?;
            let metric = eval::score(&current, data, &rows, &self.metric, 64, &session)?;
            trajectory.push(serde_json::json!({ "step": step, "level": level, "metric": metric, "params": pr::parameter_count(&current) }));
            self.obs.advance(step as u64);
        }
        self.obs.end(&format!("{} steps", cfg.steps));
        let pass_seconds = started.elapsed().as_secs_f64();
        let t = cfg.target_sparsity;
        let mut c = self.judge(&current, format!("s{stage}-prune-iterative{}-{t}", cfg.steps), stage, "pruning")?;
        c.mode = "structured_channel/iterative".into();
        let after = pr::analyze(&current);
        let removed: usize = after.iter().filter_map(|g| original.get(&g.name).map(|o| o.channels - g.channels)).sum();
        let total: usize = groups.iter().map(|g| g.channels).sum();
        c.details = serde_json::json!({
            "steps": cfg.steps,
            "trajectory": trajectory,
            "trajectory_rows": rows.len(),
            "fine_tuning": "not between steps (arrives with training)",
            "groups": after.iter().map(|g| serde_json::json!({ "group": g.name, "channels": original.get(&g.name).map_or(g.channels, |o| o.channels), "kept": g.channels })).collect::<Vec<_>>(),
            "removed_channels": removed,
            "prunable_channels": total,
            "achieved_sparsity": removed as f64 / total.max(1) as f64,
            "params_before": pr::parameter_count(model),
            "params_after": pr::parameter_count(&current),
            "pass_seconds": pass_seconds,
        });
        Ok(vec![c])
    }

    /// Attention-head pruning: a uniform candidate (every block loses `target_sparsity` of
    /// its heads) and, with `sensitivity`, per-block head counts from sensitivity curves
    /// removing as many heads in all.
    fn prune_heads(&mut self, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        use crate::passes::heads;
        self.obs.begin("find self-attention blocks", 0);
        let groups = heads::find(model);
        if groups.is_empty() {
            self.obs.end("no self-attention block in the BERT-style pattern (Reshape → Transpose heads, Softmax, merge Reshape, output MatMul)");
            return Ok(Vec::new());
        }
        let total: usize = groups.iter().map(|g| g.heads).sum();
        self.obs.end(&format!("{} attention blocks, {total} heads", groups.len()));
        let imps: Vec<Vec<f64>> = groups.iter().map(|g| heads::importance(model, g)).collect();
        let removable = |g: &heads::HeadGroup, level: f64| ((g.heads as f64 * level).round() as usize).min(g.heads - 1);
        let build = |levels: &[f64]| -> Result<Model> {
            let keep: BTreeMap<usize, Vec<usize>> =
                groups.iter().zip(&imps).zip(levels).map(|((g, imp), &l)| (g.id, crate::passes::prune::keep_set(imp, removable(g, l)))).collect();
            Ok(heads::prune(model, &groups, &keep)?)
        };
        let params_before = crate::passes::prune::parameter_count(model);
        let describe = |levels: &[f64], m: &Model| {
            let removed: usize = groups.iter().zip(levels).map(|(g, &l)| removable(g, l)).sum();
            serde_json::json!({
                "blocks": groups.iter().zip(levels).map(|(g, &l)| serde_json::json!({ "block": g.name, "heads": g.heads, "head_dim": g.head_dim, "removed": removable(g, l) })).collect::<Vec<_>>(),
                "removed_heads": removed,
                "heads": total,
                "params_before": params_before,
                "params_after": crate::passes::prune::parameter_count(m),
            })
        };
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let shape = Allocated { id: "prune-heads", mode: "attention_head", tag: "heads", key: "block" };
        self.uniform_and_allocated(stage, cfg, model, &shape, &names, &|g, l| removable(&groups[g], l), &build, &describe)
    }

    /// Unstructured or block/N:M magnitude pruning (zeros in dense weights: the graph and its
    /// speed stay, the coded artifact shrinks). Unstructured `global`: one threshold for all
    /// layers; `per_layer`: every layer at the target and, with `sensitivity`, per-layer levels
    /// from sensitivity curves removing the same number of weights; block RxC: per layer
    /// (with the same sensitivity option); N:M: one candidate at 1 − N/M.
    fn sparsify(&mut self, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        use crate::passes::sparsity::{self as sp, Pattern};
        let pattern = cfg.sparsity_pattern();
        let units = sp::units(model, cfg.min_elements);
        self.obs.begin("find prunable weights", 0);
        if units.is_empty() {
            self.obs.end(&format!("no Conv/Gemm/MatMul weight with ≥ {} elements", cfg.min_elements));
            return Ok(Vec::new());
        }
        let total: usize = units.iter().map(|u| u.elements).sum();
        self.obs.end(&format!("{} layers, {total} weights", units.len()));
        let base_coded = cluster::deflated_size(&std::fs::read(self.job.model_path).map_err(io_err(self.job.model_path))?);
        let t = cfg.target_sparsity;
        let label = match pattern {
            Pattern::Unstructured => "unstructured".to_owned(),
            Pattern::Block { rows, cols } => format!("block{rows}x{cols}"),
            Pattern::NOfM { n, m } => format!("{n}of{m}"),
        };
        let mut out = Vec::new();
        let mut make = |this: &mut Self, levels: Vec<f64>, global: bool, how: &str, extra: serde_json::Value| -> Result<()> {
            let started = std::time::Instant::now();
            let (m, layers) = sp::sparsify(model, &units, &levels, pattern, global)?;
            let pass_seconds = started.elapsed().as_secs_f64();
            let id = match pattern {
                Pattern::NOfM { .. } => format!("s{stage}-prune-{label}"),
                _ => format!("s{stage}-prune-{label}-{how}-{t}"),
            };
            let mut c = this.judge(&m, id, stage, "pruning")?;
            c.mode = format!("{label}/{how}");
            let zeros: usize = layers.iter().map(|l| l.zeros).sum();
            let mut d = serde_json::json!({
                "pattern": label,
                "layers": layers,
                "zeros": zeros,
                "weights": total,
                "achieved_sparsity": zeros as f64 / total.max(1) as f64,
                "coded_size_bytes": c.coded_size_bytes,
                "baseline_coded_size_bytes": base_coded,
                "coded_compression_ratio": this.baseline().size_bytes as f64 / c.coded_size_bytes.max(1) as f64,
                "coding": "deflate (level 6) of the ONNX file",
                "pass_seconds": pass_seconds,
            });
            if let (Some(d), serde_json::Value::Object(e)) = (d.as_object_mut(), extra) {
                d.extend(e);
            }
            c.details = d;
            out.push(c);
            Ok(())
        };
        match pattern {
            Pattern::NOfM { .. } => make(self, vec![0.0; units.len()], false, "n_of_m", serde_json::Value::Null)?,
            Pattern::Unstructured if cfg.scope == PruningScope::Global => make(self, vec![t; units.len()], true, "global", serde_json::Value::Null)?,
            _ => {
                make(self, vec![t; units.len()], false, "uniform", serde_json::Value::Null)?;
                if cfg.sensitivity {
                    let started = std::time::Instant::now();
                    let build = |levels: &[f64]| -> Result<Model> { Ok(sp::sparsify(model, &units, levels, pattern, false)?.0) };
                    let names: Vec<String> = units.iter().map(|u| u.node.clone()).collect();
                    let curves = self.sensitivity(cfg, model, &label, &names, &build)?;
                    let removable = |u: usize, l: f64| (units[u].elements as f64 * l).round() as usize;
                    let goal: usize = (0..units.len()).map(|u| removable(u, t)).sum();
                    let alloc = allocate(&curves, &cfg.levels, goal, &removable);
                    let extra = serde_json::json!({
                        "allocation_seconds": started.elapsed().as_secs_f64(),
                        "sensitivity": units.iter().zip(&curves).zip(&alloc).map(|((u, cv), l)| serde_json::json!({ "layer": u.node, "levels": cfg.levels, "metric_drop_pct": cv, "chosen": l })).collect::<Vec<_>>(),
                    });
                    make(self, alloc, false, "sensitivity", extra)?;
                }
            }
        }
        Ok(out)
    }

    /// Metric drop (percent) of pruning each group alone at each level, on a seeded subset;
    /// computed on two threads and cached by (model sha, data sha, group, level, rows, seed)
    /// under `~/.cache/tamp/sensitivity/`.
    fn sensitivity(
        &mut self,
        cfg: &PruningStage,
        model: &Model,
        tag: &str,
        names: &[String],
        build: &(dyn Fn(&[f64]) -> Result<Model> + Sync),
    ) -> Result<Vec<Vec<f64>>> {
        let data = self.job.evaluation;
        let rows = data.sample(cfg.sensitivity_rows.min(data.rows), cfg.seed);
        let session = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
        let reference = eval::score(model, data, &rows, &self.metric, 64, &session)?;
        let cache_dir = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tamp/sensitivity"));
        let key = format!("{}-{}-r{}-s{}", &model.sha256()?[..16], &data.sha256[..16], rows.len(), cfg.seed);
        let cache_path = cache_dir.as_ref().map(|d| d.join(format!("{key}.json")));
        let mut cache: BTreeMap<String, f64> =
            cache_path.as_ref().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        // Structured groups keep their historical keys (`name@level`); other kinds are tagged.
        let entry = |g: usize, level: f64| if tag.is_empty() { format!("{}@{level}", names[g]) } else { format!("{tag}/{}@{level}", names[g]) };
        let points: Vec<(usize, usize)> = (0..names.len()).flat_map(|g| (0..cfg.levels.len()).map(move |l| (g, l))).collect();
        let todo: Vec<(usize, usize)> = points.iter().copied().filter(|&(g, l)| !cache.contains_key(&entry(g, cfg.levels[l]))).collect();
        self.obs.begin("sensitivity curves", todo.len() as u64);
        let metric = self.metric.clone();
        let results: Vec<Result<(usize, usize, f64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .chunks(todo.len().div_ceil(2).max(1))
                .map(|chunk| {
                    let (metric, rows, session) = (&metric, &rows, &session);
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|&(g, l)| {
                                let mut levels = vec![0.0; names.len()];
                                levels[g] = cfg.levels[l];
                                let s = eval::score(&build(&levels)?, data, rows, metric, 64, session)?;
                                Ok((g, l, metric_drop_pct(metric, reference, s)))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(EngineError::Config("a sensitivity worker panicked".into()))])).collect()
        });
        for r in results {
            let (g, l, drop) = r?;
            cache.insert(entry(g, cfg.levels[l]), drop);
        }
        self.obs.end(&format!("{} points ({} cached)", points.len(), points.len() - todo.len()));
        if let (Some(dir), Some(path)) = (&cache_dir, &cache_path)
            && std::fs::create_dir_all(dir).is_ok()
        {
            let _ = std::fs::write(path, serde_json::to_vec_pretty(&cache).unwrap_or_default());
        }
        Ok((0..names.len()).map(|g| cfg.levels.iter().map(|&l| cache[&entry(g, l)]).collect()).collect())
    }

    /// How closely `candidate`'s first output follows `reference`'s on the evaluation rows the
    /// metric uses: mean cosine similarity per row and, for class scores, top-1 agreement.
    fn agreement(&self, reference: &Model, candidate: &Model) -> Result<serde_json::Value> {
        let data = self.job.evaluation;
        let rows: Vec<usize> = match self.eval_cfg.samples {
            Some(n) => data.sample(n.min(data.rows), self.eval_cfg.seed),
            None => (0..data.rows).collect(),
        };
        let a = eval::first_output_rows(reference, data, &rows, &self.eval_cfg.session)?;
        let b = eval::first_output_rows(candidate, data, &rows, &self.eval_cfg.session)?;
        let (cos, top1) = eval::agreement(&a, &b);
        Ok(serde_json::json!({ "rows": rows.len(), "mean_cosine": cos, "top1_agreement": top1 }))
    }

    /// Low-rank factorisation (SVD of MatMul weights or Tucker-2 of Conv weights): one
    /// candidate with per-layer ranks and how closely its outputs follow the input model's.
    fn lowrank(&mut self, stage: usize, cfg: &LowrankStage, model: &Model) -> Result<Vec<Candidate>> {
        let tucker = cfg.method == tamp_domain::recipe::LowrankMethod::Tucker;
        self.obs.begin(if tucker { "factorise Conv weights (Tucker-2)" } else { "factorise MatMul weights (SVD)" }, 0);
        let started = std::time::Instant::now();
        let pass = LowRank::new(cfg.clone());
        let Some((patch, layers)) = pass.build(model)? else {
            self.obs.end(if tucker { "no Conv layer worth factorising (group 1, k > 1, channels ≥ min_dim)" } else { "no MatMul layer worth factorising" });
            return Ok(Vec::new());
        };
        let factored = patch.apply(model, pass.name()).map_err(ptq::patch_err)?;
        let pass_seconds = started.elapsed().as_secs_f64();
        let (before, after): (usize, usize) = layers.iter().fold((0, 0), |(b, a), l| (b + l.params_before, a + l.params_after));
        self.obs.end(&format!("{} layers factorised: {before} → {after} parameters", layers.len()));
        let method = if tucker { "tucker2" } else { "svd" };
        let id = match cfg.energy {
            Some(e) => format!("s{stage}-{method}-e{e}"),
            None => format!("s{stage}-{method}-r{}", cfg.target_ratio),
        };
        let mut c = self.judge(&factored, id, stage, "lowrank")?;
        c.mode = method.into();
        let agreement = self.agreement(model, &factored)?;
        c.details = serde_json::json!({ "layers": layers, "params_before": before, "params_after": after, "pass_seconds": pass_seconds, "output_agreement": agreement });
        let mut out = vec![c];
        if cfg.sensitivity {
            let started = std::time::Instant::now();
            let eligible = pass.eligible(model)?;
            let names: Vec<String> = eligible.iter().map(|(n, _)| n.clone()).collect();
            let with_levels = |levels: &[f64]| LowRank {
                config: cfg.clone(),
                ratios: names.iter().zip(levels).map(|(n, &l)| (n.clone(), if l <= 0.0 { 1.0 } else { 1.0 - l })).collect(),
            };
            let build = |levels: &[f64]| -> Result<Model> {
                let p = with_levels(levels);
                Ok(match p.build(model)? {
                    Some((patch, _)) => patch.apply(model, p.name()).map_err(ptq::patch_err)?,
                    None => model.clone(),
                })
            };
            let ladder = PruningStage { levels: cfg.levels.clone(), sensitivity_rows: cfg.sensitivity_rows, seed: cfg.seed, ..PruningStage::default() };
            let curves = self.sensitivity(&ladder, model, method, &names, &build)?;
            // Parameters a layer gives up at a level (what the uniform ratio removes is the goal).
            let removable = |u: usize, l: f64| (eligible[u].1 as f64 * l).round() as usize;
            let goal = before - after;
            let alloc = allocate(&curves, &cfg.levels, goal, &removable);
            let p = with_levels(&alloc);
            let (m, layers) = match p.build(model)? {
                Some((patch, layers)) => (patch.apply(model, p.name()).map_err(ptq::patch_err)?, layers),
                None => (model.clone(), Vec::new()),
            };
            let pass_seconds = started.elapsed().as_secs_f64();
            let (b2, a2): (usize, usize) = layers.iter().fold((0, 0), |(b, a), l| (b + l.params_before, a + l.params_after));
            let mut c = self.judge(&m, format!("s{stage}-{method}-sensitivity-r{}", cfg.target_ratio), stage, "lowrank")?;
            c.mode = format!("{method}/sensitivity");
            let agreement = self.agreement(model, &m)?;
            c.details = serde_json::json!({
                "layers": layers, "params_before": b2, "params_after": a2, "pass_seconds": pass_seconds, "output_agreement": agreement,
                "sensitivity": names.iter().zip(&curves).zip(&alloc).map(|((n, cv), l)| serde_json::json!({ "layer": n, "levels": cfg.levels, "metric_drop_pct": cv, "chosen": l })).collect::<Vec<_>>(),
            });
            out.push(c);
        }
        Ok(out)
    }

    /// Returns the fewest, most sensitive layers to float until the metric constraint holds
    /// on the sensitivity rows; `build` makes a model with a given set of float layers.
    fn fallback(&mut self, input: &Model, units: &[String], keep: &BTreeSet<String>, build: &BuildFn<'_>) -> Result<Option<Vec<String>>> {
        let data = self.job.evaluation;
        let rows = data.sample(SENSITIVITY_ROWS.min(data.rows), self.eval_cfg.seed);
        let session = SessionConfig::default();
        let reference = eval::score(self.model, data, &rows, &self.metric, 32, &session)?;
        let limit = self.job.recipe.constraints.max_metric_drop_pct;
        if !std::ptr::eq(input, self.model) && metric_drop_pct(&self.metric, reference, eval::score(input, data, &rows, &self.metric, 32, &session)?) > limit {
            // An earlier stage already spent the budget: no set of float layers can help.
            self.obs.begin("rank layer sensitivity", 0);
            self.obs.end("skipped: this stage's input already misses max_metric_drop_pct");
            return Ok(None);
        }
        let units: Vec<&String> = units.iter().filter(|u| !keep.contains(*u)).collect();
        self.obs.begin("rank layer sensitivity", units.len() as u64 + 1);
        let all = eval::score(&build(keep)?, data, &rows, &self.metric, 32, &session)?;
        let mut gains = Vec::new();
        for (i, u) in units.iter().enumerate() {
            let mut ex = keep.clone();
            ex.insert((*u).clone());
            let s = eval::score(&build(&ex)?, data, &rows, &self.metric, 32, &session)?;
            // Improvement from keeping `u` in float, in the metric's direction.
            gains.push((metric_drop_pct(&self.metric, reference, all) - metric_drop_pct(&self.metric, reference, s), (*u).clone()));
            self.obs.advance(i as u64 + 1);
        }
        gains.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        self.obs.end(&format!("{} layers ranked", gains.len()));
        self.obs.begin("return layers to float", gains.len() as u64);
        // Up to all but one: every layer in float is the stage's input, not a candidate.
        for k in 1..gains.len() {
            let mut ex = keep.clone();
            ex.extend(gains[..k].iter().map(|g| g.1.clone()));
            let s = eval::score(&build(&ex)?, data, &rows, &self.metric, 32, &session)?;
            self.obs.advance(k as u64);
            if metric_drop_pct(&self.metric, reference, s) <= limit {
                self.obs.end(&format!("{k} layer(s) in float"));
                return Ok(Some(ex.into_iter().collect()));
            }
        }
        self.obs.end("no subset of layers meets the metric constraint");
        Ok(None)
    }

    fn ptq(&mut self, stage: usize, p: &PtqStage, model: &Model) -> Result<Vec<Candidate>> {
        let mode = resolve_mode(model, p.mode);
        let keep: BTreeSet<String> = p.keep_float.iter().cloned().collect();
        let mut out = Vec::new();
        let build: Box<BuildFn<'_>>;
        let units: Vec<String>;
        let mut pre_passes = serde_json::Value::Null;
        let mut first8: Option<Model> = None;
        match mode {
            PtqMode::Static => {
                let cfg = PtqConfig {
                    method: method(p.calibration.method, p.calibration.percentile),
                    samples: p.calibration.samples,
                    seed: p.calibration.seed,
                    bins: p.calibration.bins,
                    fold_batch_norm: p.fold_batch_norm,
                    cross_layer_equalization: p.cross_layer_equalization,
                    bias_correction: p.bias_correction,
                    ..PtqConfig::default()
                };
                let rows = p.calibration.samples.min(self.job.calibration.rows);
                self.obs.begin(&format!("calibrate ({:?}, {rows} rows)", cfg.method), 0);
                let calibrated = ptq::calibrate(model, self.job.calibration, &cfg)?;
                self.obs.end(&format!("{} activations calibrated on {} rows", calibrated.ranges.len(), calibrated.calibration_rows));
                units = quantize::weighted_nodes(&calibrated.folded);
                let qc = QuantizeConfig {
                    per_channel: p.per_channel_weights,
                    symmetric: p.symmetric,
                    bias_correction: p.bias_correction,
                    exclude: BTreeSet::new(),
                    float_slow_layers: p.float_slow_layers,
                    activations: p.activation_type,
                    symmetric_activations: p.symmetric_activations,
                };
                // The first static candidate, built once; its report says what the pre-passes did.
                let (model8, probe) = calibrated.quantize(&QuantizeConfig { exclude: keep.clone(), ..qc.clone() })?;
                first8 = Some(model8);
                pre_passes = serde_json::json!({
                    "fold_batch_norm": calibrated.folded_batch_norms,
                    "cross_layer_equalization": probe.equalized,
                    "bias_correction": probe.bias_corrected,
                    "symmetric_weights": p.symmetric,
                    "float_for_speed": probe.float_for_speed,
                });
                build = Box::new(move |ex| Ok(calibrated.quantize(&QuantizeConfig { exclude: ex.clone(), ..qc.clone() })?.0));
            }
            PtqMode::Dynamic | PtqMode::Auto => {
                let base = DynamicConfig { per_channel: p.per_channel_weights, ..DynamicConfig::default() };
                units = dynamic::quantizable_nodes(model, &base)?;
                build = Box::new(move |ex| Ok(ptq::quantize_dynamic(model, &DynamicConfig { exclude: ex.clone(), ..base.clone() })?.0));
            }
        }
        let build4: Box<BuildFn<'_>> = Box::new(move |ex| Ok(ptq::quantize_4bit(model, &NBitsConfig { exclude: ex.clone(), ..NBitsConfig::default() })?.0));
        let mut combos: Vec<(u8, u8)> = Vec::new();
        for &wb in &p.bits.weights {
            if wb == 4 {
                combos.push((4, 32)); // weight-only: activations stay float
            } else {
                combos.extend(p.bits.activations.iter().map(|&ab| (wb, ab)));
            }
        }
        combos.dedup();
        for (wb, ab) in combos {
            let (label, build_fn, units_for): (String, &BuildFn<'_>, Vec<String>) = if wb == 4 {
                ("weightonly".into(), build4.as_ref(), nbits_units(model)?)
            } else {
                (format!("{mode:?}").to_lowercase(), build.as_ref(), units.clone())
            };
            let id = format!("s{stage}-ptq-{label}-w{wb}a{ab}");
            let q = match first8.take() {
                Some(m) if wb == 8 => m,
                _ => build_fn(&keep)?,
            };
            let mut c = self.candidate(&q, id.clone(), stage, p, mode, keep.iter().cloned().collect(), (wb, ab))?;
            if wb == 8 && !pre_passes.is_null() {
                c.details = serde_json::json!({ "pre_passes": pre_passes });
            }
            let drop_missed = c.metric_drop_pct > self.job.recipe.constraints.max_metric_drop_pct;
            out.push(c);
            if drop_missed && let Some(float) = self.fallback(model, &units_for, &keep, build_fn)? {
                let set: BTreeSet<String> = float.iter().cloned().collect();
                let q = build_fn(&set)?;
                out.push(self.candidate(&q, format!("{id}-fallback{}", float.len()), stage, p, mode, float, (wb, ab))?);
            }
        }
        Ok(out)
    }
}

/// The MatMuls the 4-bit pass would quantize (the fallback's units for 4-bit candidates).
fn nbits_units(model: &Model) -> Result<Vec<String>> {
    let Some((patch, _)) = QuantizeNBits::default().build(model)? else { return Ok(Vec::new()) };
    Ok(patch.remove_nodes.iter().map(|&i| quantize::node_key(&model.graph().node[i]).to_owned()).collect())
}

/// Per-unit levels removing at least `goal` channels (or weights) in all, greedily taking
/// the step with the smallest predicted metric drop per removed unit of work;
/// `removable(unit, level)` is what a unit removes at a level.
fn allocate(curves: &[Vec<f64>], levels: &[f64], goal: usize, removable: &dyn Fn(usize, f64) -> usize) -> Vec<f64> {
    let mut at: Vec<Option<usize>> = vec![None; curves.len()]; // index into levels
    let level = |a: Option<usize>| a.map_or(0.0, |i| levels[i]);
    let drop = |g: usize, a: Option<usize>| a.map_or(0.0, |i| curves[g][i].max(0.0));
    loop {
        let removed: usize = at.iter().enumerate().map(|(g, a)| removable(g, level(*a))).sum();
        if removed >= goal {
            break;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for (g, &here) in at.iter().enumerate() {
            // The next level that removes more (rounding can make some steps empty).
            let now = removable(g, level(here));
            let Some(next) = (here.map_or(0, |i| i + 1)..levels.len()).find(|&j| removable(g, levels[j]) > now) else { continue };
            let gained = removable(g, levels[next]) - now;
            let cost = (drop(g, Some(next)) - drop(g, here)).max(0.0) / gained as f64;
            if best.is_none_or(|(c, _, _)| cost < c) {
                best = Some((cost, g, next));
            }
        }
        match best {
            Some((_, g, next)) => at[g] = Some(next),
            None => break,
        }
    }
    at.iter().map(|a| level(*a)).collect()
}

/// Picks the best candidate: among those meeting every constraint (and faster than the
/// baseline when the objective is latency), the best by the objective; when none does, the
/// one missing the fewest constraints, with the reason saying what it misses.
pub fn choose(candidates: &[Candidate], objective: Objective) -> Option<(usize, String)> {
    let key = |c: &Candidate| -> f64 {
        match objective {
            Objective::Latency => c.measured.latency_ms_p50,
            Objective::Size => c.measured.size_bytes as f64,
            Objective::Metric => c.metric_drop_pct,
        }
    };
    let eligible = |c: &Candidate| c.missed.is_empty() && (objective != Objective::Latency || c.faster);
    // Ties on the objective (e.g. equal sizes of sparsified models) go to the better metric.
    let best = |pool: Vec<usize>| {
        pool.into_iter()
            .min_by(|&a, &b| key(&candidates[a]).total_cmp(&key(&candidates[b])).then(candidates[a].metric_drop_pct.total_cmp(&candidates[b].metric_drop_pct)))
    };
    if let Some(i) = best((0..candidates.len()).filter(|&i| eligible(&candidates[i])).collect()) {
        return Some((i, format!("meets every constraint; best {objective:?} among {} candidate(s)", candidates.len()).to_lowercase()));
    }
    let fewest = candidates.iter().map(|c| c.missed.len() + usize::from(objective == Objective::Latency && !c.faster)).min()?;
    let i = best(
        (0..candidates.len())
            .filter(|&i| candidates[i].missed.len() + usize::from(objective == Objective::Latency && !candidates[i].faster) == fewest)
            .collect(),
    )?;
    let mut misses = candidates[i].missed.clone();
    if objective == Objective::Latency && !candidates[i].faster {
        misses.push("not faster than the baseline".into());
    }
    Some((i, format!("no candidate meets every constraint; kept the best so far, which misses: {}", misses.join("; "))))
}

/// Refuses a baseline nothing can be judged against: every row giving the same output (all-zero
/// inputs, a dead model), or a higher-is-better metric of 0 (labels from another task). A job
/// on such data once became its model's "best" on speed alone.
fn check_baseline(metric: &str, value: Option<f64>, outputs: &[ndarray::Array2<f32>], data: &Dataset) -> Result<()> {
    let rows: Vec<ndarray::ArrayView1<'_, f32>> = outputs.iter().flat_map(|b| b.rows().into_iter()).collect();
    if let Some(first) = rows.first()
        && rows.len() > 1
    {
        let scale = first.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let constant = rows.iter().all(|r| r.iter().zip(first.iter()).all(|(a, b)| (a - b).abs() <= 1e-6 * scale));
        if constant {
            return Err(EngineError::Config(format!(
                "the input model gives the same output for all {} evaluated rows of {}: the data cannot tell a good model from a bad one (all-zero or constant inputs? inputs not preprocessed as the model expects?); evaluate on real, varied inputs",
                rows.len(),
                data.path.display()
            )));
        }
    }
    if metrics::higher_is_better(metric) && value.is_some_and(|v| v <= 0.0) {
        return Err(EngineError::Config(format!(
            "the input model scores {metric} = 0 on {}: the labels do not match the model's outputs (another task? another class order?), so no drop can be measured; check `labels`",
            data.path.display()
        )));
    }
    Ok(())
}

/// Runs every stage of the recipe and writes the output folder.
pub fn run(job: &Job<'_>, obs: &mut dyn Observer) -> Result<Outcome> {
    let out = job.out_dir;
    std::fs::create_dir_all(out.join("candidates")).map_err(io_err(out))?;
    let (model, _) = Model::load_with_info(job.model_path)?;
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
        samples: ev.samples,
        latency: LatencyConfig { warmup: 10, runs: ev.latency_runs },
        throughput_batches: vec![32],
        throughput_runs: 10,
        session: SessionConfig { intra_threads: ev.threads, ..SessionConfig::default() },
        ..EvalConfig::default()
    };
    let mut runner = Runner { job, model: &model, obs, metric, eval_cfg, baseline: None };
    let baseline = runner.measure(job.model_path, &model, "baseline")?;
    runner.baseline = Some(baseline.clone());
    let mut candidates = Vec::new();
    // Stages compose: each starts from the previous stage's choice (prune → cluster → quantize).
    let mut current = model.clone();
    let stages = &job.recipe.policy.stages;
    for (i, stage) in stages.iter().enumerate() {
        let made = match stage {
            Stage::Ptq(p) => runner.ptq(i, p, &cluster::materialize(&current)?)?,
            Stage::Clustering(c) => runner.cluster(i, c, &current)?,
            Stage::Lowrank(l) => runner.lowrank(i, l, &current)?,
            Stage::Pruning(p) => runner.prune(i, p, &current)?,
            other => return Err(EngineError::Config(format!("stage {i} (`{}`) is not available in this build", other.kind()))),
        };
        if i + 1 < stages.len()
            && let Some((k, _)) = choose(&made, job.recipe.objective)
        {
            current = Model::load(out.join(&made[k].file))?;
        }
        candidates.extend(made);
    }
    let (chosen, reason) = choose(&candidates, job.recipe.objective).ok_or_else(|| EngineError::Config("the recipe produced no candidates".into()))?;
    let best = &candidates[chosen];
    let best_path = out.join("best.onnx");
    std::fs::copy(out.join(&best.file), &best_path).map_err(io_err(&best_path))?;
    let ops = runtime::optimized_op_types(&best_path, &SessionConfig::default())?;
    let best_model = Model::load(&best_path)?;
    let artifact = artifact_metadata(job, &best_model, best, &baseline, &ops)?;
    write_json(&out.join("best.json"), &artifact)?;
    let outcome = Outcome { baseline, candidates: candidates.clone(), chosen: best.id.clone(), reason, objective: job.recipe.objective };
    write_json(&out.join("candidates.json"), &outcome)?;
    write_manifest(job, &outcome)?;
    Ok(outcome)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EngineError::Config(e.to_string()))? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The artifact record (the PRD's artifact JSON).
fn artifact_metadata(job: &Job<'_>, model: &Model, c: &Candidate, base: &Measured, ops: &BTreeMap<String, usize>) -> Result<serde_json::Value> {
    const INTEGER_KERNELS: &[&str] = &[
        "QLinearConv",
        "QGemm",
        "QLinearMatMul",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearMul",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearConcat",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "MatMulNBits",
    ];
    let ort = runtime::runtime_info()?;
    let opsets: BTreeMap<String, i64> = model
        .proto
        .opset_import
        .iter()
        .map(|o| (o.domain.clone().filter(|d| !d.is_empty()).unwrap_or_else(|| "ai.onnx".into()), o.version.unwrap_or(0)))
        .collect();
    let integer: BTreeMap<&String, &usize> = ops.iter().filter(|(k, _)| INTEGER_KERNELS.contains(&k.as_str())).collect();
    Ok(serde_json::json!({
        "artifact_id": format!("sha256:{}", c.measured.sha256),
        "format": "onnx",
        "uri": "best.onnx",
        "sha256": c.measured.sha256,
        "size_bytes": c.measured.size_bytes,
        "runtime": "onnxruntime",
        "opset": opsets,
        "source": { "model": job.model_path.display().to_string(), "sha256": base.sha256, "size_bytes": base.size_bytes },
        "policy": job.recipe.policy.name,
        "candidate": c.id,
        "compression": {
            "technique": c.technique,
            "mode": c.mode,
            "weights_bits": c.weights_bits,
            "activations_bits": c.activations_bits,
            "calibration": c.calibration,
            "per_channel_weights": c.per_channel_weights,
            "float_nodes": c.float_nodes,
            "ratio": c.compression_ratio,
        },
        "metrics": {
            "task": { "name": c.measured.metric, "value": c.measured.value, "baseline": base.value, "drop_pct": c.metric_drop_pct, "eval_rows": c.measured.eval_rows },
            "latency_ms_p50": c.measured.latency_ms_p50,
            "latency_ms_p95": c.measured.latency_ms_p95,
            "baseline_latency_ms_p50": base.latency_ms_p50,
            "speedup_p50": c.speedup_p50,
            "throughput_b32": c.measured.throughput_b32,
            "baseline_throughput_b32": base.throughput_b32,
        },
        "compatibility": {
            "onnxruntime": {
                "version": ort.version,
                "execution_provider": "CPUExecutionProvider",
                "loads": true,
                "optimized_op_types": ops,
                "integer_kernels": integer,
            }
        },
        "flags": c.flags,
        "missed_constraints": c.missed,
        "created_by": format!("tamp {}", crate::TAMP_VERSION),
    }))
}

/// A manifest entry; `shown` is the path recorded (outputs relative to the output folder).
fn file_entry(role: &str, path: &Path, shown: &str) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    use sha2::Digest;
    Ok(serde_json::json!({ "role": role, "path": shown, "sha256": hex::encode(sha2::Sha256::digest(&bytes)), "size_bytes": bytes.len() }))
}

fn input_entry(role: &str, path: &Path) -> Result<serde_json::Value> {
    file_entry(role, path, &path.display().to_string())
}

fn write_manifest(job: &Job<'_>, outcome: &Outcome) -> Result<()> {
    let mut inputs =
        vec![input_entry("model", job.model_path)?, input_entry("calibration", &job.calibration.path)?, input_entry("evaluation", &job.evaluation.path)?];
    if let Some(r) = job.recipe_path {
        inputs.push(input_entry("recipe", r)?);
    }
    let mut outputs = Vec::new();
    for c in &outcome.candidates {
        outputs.push(file_entry("candidate", &job.out_dir.join(&c.file), &c.file)?);
    }
    for (role, name) in [("artifact", "best.onnx"), ("artifact_metadata", "best.json"), ("candidates", "candidates.json")] {
        outputs.push(file_entry(role, &job.out_dir.join(name), name)?);
    }
    let seeds: Vec<serde_json::Value> = job.recipe.ptq_stages().map(|p| serde_json::json!({ "calibration": p.calibration.seed })).collect();
    let ort = runtime::runtime_info()?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let manifest = serde_json::json!({
        "tamp_version": crate::TAMP_VERSION,
        "onnxruntime": ort.version,
        "created_unix": created,
        "recipe": job.recipe,
        "seeds": { "stages": seeds, "evaluation": 0 },
        "inputs": inputs,
        "outputs": outputs,
        "chosen": outcome.chosen,
        "cpu": eval::cpu_info(),
    });
    write_json(&job.out_dir.join("manifest.json"), &manifest)
}

/// Where a path given in a recipe points: absolute, or relative to the recipe's folder.
pub fn resolve_from_recipe(recipe_path: Option<&Path>, value: &str) -> PathBuf {
    let p = PathBuf::from(value);
    match recipe_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    }
}
