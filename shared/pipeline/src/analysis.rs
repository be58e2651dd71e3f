//! The analysis behind the report (`analysis.json`), run after the outcome is written, on
//! the baseline and the chosen candidate: latency distributions and peak memory, the metric
//! under seeded input shifts (images: Gaussian noise, brightness, contrast, blur; token
//! sequences: token dropout, word swaps), outlier inputs, per-cohort metrics, calibration
//! representativeness and per-layer error with clipping rates. Everything is seeded, so a
//! rerun reports the same metrics (timings aside).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tamp_data::Dataset;
use tamp_domain::results::{Analysis, CalibrationCoverage, CohortResult, LayerCoverage, LayerError, Outcome, OutlierResult, Profile, ShiftResult};
use tamp_engine::perf;
use tamp_engine::runtime::{Session, SessionConfig};
use tamp_engine::{EngineError, capture, eval};
use tamp_onnx::{Model, TensorValue};

use crate::{Job, Result};

/// Most values the per-layer analyses capture (first in graph order).
const MAX_VALUES: usize = 40;
/// Rows the per-layer error compares (activations of both models are held for them).
const ERROR_ROWS: usize = 8;
/// Values kept per layer and side for the coverage histograms (a strided subsample).
const KEEP_PER_VALUE: usize = 20_000;
/// Most histogram bins of the coverage distance.
const BINS: usize = 64;

/// Runs the analysis for the chosen candidate of `outcome` and returns it.
pub fn analyse(job: &Job<'_>, prepared: &Model, outcome: &Outcome, metric: &str) -> Result<Analysis> {
    let started = std::time::Instant::now();
    let settings = &job.recipe.report;
    let best = outcome.best().ok_or_else(|| EngineError::Config("no chosen candidate to analyse".into()))?;
    let chosen_path = job.out_dir.join(&best.file);
    let chosen = Model::load(&chosen_path)?;
    let output = job.recipe.evaluation.output.as_deref();
    let cfg = SessionConfig { intra_threads: job.recipe.evaluation.threads, ..SessionConfig::default() };
    let runs = job.recipe.evaluation.latency_runs.clamp(20, 500);
    let baseline_profile = profile(job.model_path, job.evaluation, runs, &cfg)?;
    let chosen_profile = profile(&chosen_path, job.evaluation, runs, &cfg)?;
    let rows = job.evaluation.sample(settings.analysis_rows.min(job.evaluation.rows), settings.seed);
    let mut a = Analysis { candidate: best.id.clone(), metric: metric.to_owned(), baseline: baseline_profile, chosen: chosen_profile, ..Analysis::default() };
    let out_rows = eval::output_rows(&chosen, job.evaluation, &rows, output, &cfg)?;
    a.non_finite_outputs = out_rows.iter().filter(|v| !v.is_finite()).count();
    if settings.robustness {
        a.robustness = robustness(job, prepared, &chosen, &rows, metric, &cfg)?;
        a.outliers = outliers(job.evaluation, prepared, &chosen, &rows[..rows.len().min(8)], &cfg)?;
    }
    a.cohorts = cohorts(job, prepared, &chosen, metric, &cfg)?;
    let values = shared_values(prepared, &chosen);
    if best.calibration.is_some() {
        let quantized: HashSet<String> = quantized_values(&chosen).into_keys().collect();
        let covered: Vec<String> = values.iter().filter(|v| quantized.contains(*v)).cloned().collect();
        if !covered.is_empty() {
            a.calibration = Some(coverage(job, prepared, &covered, &rows, &cfg)?);
        }
    }
    a.layer_errors = layer_errors(job.evaluation, prepared, &chosen, &values, &rows[..rows.len().min(ERROR_ROWS)], &cfg)?;
    a.seconds = started.elapsed().as_secs_f64();
    Ok(a)
}

/// Timed single-row runs of a model file, every sample kept, and the process's peak memory
/// while it was loaded and run.
fn profile(path: &Path, data: &Dataset, runs: usize, cfg: &SessionConfig) -> Result<Profile> {
    perf::reset_peak_rss();
    let before = perf::rss_mb();
    let mut session = Session::from_file(path, cfg)?;
    let fixed = tamp_data::fixed_batch(&session.inputs).unwrap_or(1);
    let idx: Vec<usize> = (0..fixed.min(data.rows)).collect();
    let batch = data.select(&idx)?;
    let inputs: Vec<(&str, &TensorValue)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for _ in 0..10 {
        session.run(&inputs)?;
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        session.run(&inputs)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Profile {
        latency_ms_p50: perf::percentile(&sorted, 50.0),
        latency_ms_p95: perf::percentile(&sorted, 95.0),
        latency_ms_p99: perf::percentile(&sorted, 99.0),
        latency_samples_ms: samples,
        peak_memory_mb: (perf::peak_rss_mb() - before).max(0.0),
    })
}

/// The input shifts and their levels.
const IMAGE_SHIFTS: [(&str, [f64; 3]); 4] =
    [("gaussian_noise", [0.1, 0.25, 0.5]), ("brightness", [0.1, 0.25, 0.5]), ("contrast", [0.8, 0.6, 0.4]), ("blur", [0.5, 1.0, 1.5])];
const TEXT_SHIFTS: [(&str, [f64; 3]); 2] = [("token_dropout", [0.05, 0.1, 0.2]), ("word_swap", [0.05, 0.1, 0.2])];

fn robustness(job: &Job<'_>, base: &Model, chosen: &Model, rows: &[usize], metric: &str, cfg: &SessionConfig) -> Result<Vec<ShiftResult>> {
    let data = job.evaluation;
    let seed = job.recipe.report.seed;
    let clean = data.select(rows)?;
    let labels = data.labels.as_ref().map(|l| match l {
        tamp_data::Labels::Classes(c) => tamp_data::Labels::Classes(rows.iter().map(|&i| c[i]).collect()),
        tamp_data::Labels::Values(v) => tamp_data::Labels::Values(v.select(Axis(0), rows)),
    });
    let lengths = data.sequence_lengths()?;
    let shifts: Vec<(&str, [f64; 3])> = if lengths.is_some() {
        TEXT_SHIFTS.to_vec()
    } else if clean.values().any(|v| matches!(v, TensorValue::F32(a) if a.ndim() >= 2)) {
        IMAGE_SHIFTS.to_vec()
    } else {
        return Ok(Vec::new());
    };
    let lengths: Option<Vec<usize>> = lengths.map(|l| rows.iter().map(|&i| l[i]).collect());
    let all: Vec<usize> = (0..rows.len()).collect();
    let mut out = Vec::new();
    for (shift, levels) in shifts {
        for (k, level) in levels.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (k as u64 + 1) ^ hash(shift));
            let shifted: BTreeMap<String, TensorValue> = match &lengths {
                Some(len) => shift_tokens(&clean, len, shift, level, &mut rng),
                None => clean.iter().map(|(n, v)| (n.clone(), shift_image(v, shift, level, &mut rng))).collect(),
            };
            let ds = Dataset::in_memory(data.path.join(format!("#{shift}@{level}")), shifted, labels.clone(), None)?;
            let score = |m: &Model| eval::score(m, &ds, &all, metric, job.recipe.evaluation.output.as_deref(), 32, cfg);
            out.push(ShiftResult { shift: shift.to_owned(), level, seed, rows: rows.len(), baseline: score(base)?, chosen: score(chosen)? });
        }
    }
    Ok(out)
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller.
    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// One image shift at one level; non-float inputs pass unchanged. Levels are in units of the
/// input's own standard deviation (noise, brightness), a factor (contrast) or a blur σ in pixels.
pub fn shift_image(v: &TensorValue, shift: &str, level: f64, rng: &mut ChaCha8Rng) -> TensorValue {
    let TensorValue::F32(a) = v else { return v.clone() };
    let n = a.len().max(1) as f64;
    let mean = a.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
    let std = (a.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n).sqrt() as f32;
    let (mean, level32) = (mean as f32, level as f32);
    let out = match shift {
        "gaussian_noise" => a.mapv(|x| x + level32 * std * gaussian(rng)),
        "brightness" => a.mapv(|x| x + level32 * std),
        "contrast" => a.mapv(|x| mean + level32 * (x - mean)),
        "blur" if a.ndim() >= 3 => blur(a, level32),
        _ => a.clone(),
    };
    TensorValue::F32(out)
}

/// Separable Gaussian blur over the last two axes (H, W), edges clamped.
fn blur(a: &ArrayD<f32>, sigma: f32) -> ArrayD<f32> {
    let r = (sigma * 3.0).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|x| x / sum).collect();
    let mut out = a.clone();
    for axis in [a.ndim() - 2, a.ndim() - 1] {
        let src = out.clone();
        let len = src.shape()[axis] as isize;
        for (mut dst, lane) in out.lanes_mut(Axis(axis)).into_iter().zip(src.lanes(Axis(axis))) {
            for i in 0..len {
                dst[i as usize] = (-r..=r).map(|d| k[(d + r) as usize] * lane[(i + d).clamp(0, len - 1) as usize]).sum();
            }
        }
    }
    out
}

/// Token dropout (a share of the real tokens between the first and the last is deleted, the
/// row shifted left and padded) or word swaps (a share of adjacent real tokens exchanged).
/// Every `[N, L]` integer input moves together (ids, type ids); the mask follows the length.
pub fn shift_tokens(batch: &BTreeMap<String, TensorValue>, lengths: &[usize], shift: &str, level: f64, rng: &mut ChaCha8Rng) -> BTreeMap<String, TensorValue> {
    let mut plans: Vec<Vec<usize>> = Vec::with_capacity(lengths.len());
    for &len in lengths {
        let mut order: Vec<usize> = (0..len).collect();
        let inner = len.saturating_sub(2);
        let n = ((inner as f64) * level).round() as usize;
        if shift == "token_dropout" {
            let mut drop: HashSet<usize> = HashSet::new();
            while drop.len() < n.min(inner.saturating_sub(1)) {
                drop.insert(1 + rng.random_range(0..inner));
            }
            order.retain(|i| !drop.contains(i));
        } else if inner >= 2 {
            for _ in 0..n {
                let i = 1 + rng.random_range(0..inner - 1);
                order.swap(i, i + 1);
            }
        }
        plans.push(order);
    }
    batch
        .iter()
        .map(|(name, v)| {
            let moved = match v {
                TensorValue::I64(a) if a.ndim() == 2 => {
                    let mut b = ArrayD::<i64>::zeros(a.raw_dim());
                    let mask = name == "attention_mask";
                    for (r, plan) in plans.iter().enumerate() {
                        for (j, &src) in plan.iter().enumerate() {
                            b[IxDyn(&[r, j])] = if mask { 1 } else { a[IxDyn(&[r, src])] };
                        }
                    }
                    TensorValue::I64(b)
                }
                other => other.clone(),
            };
            (name.clone(), moved)
        })
        .collect()
}

fn finite(m: &Model, inputs: &BTreeMap<String, TensorValue>, cfg: &SessionConfig) -> Result<bool> {
    let mut s = Session::from_model(m, cfg)?;
    let refs: Vec<(&str, &TensorValue)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(s.run(&refs)?.iter().all(|(_, v)| match v {
        TensorValue::F32(a) => a.iter().all(|x| x.is_finite()),
        _ => true,
    }))
}

fn outliers(data: &Dataset, base: &Model, chosen: &Model, rows: &[usize], cfg: &SessionConfig) -> Result<Vec<OutlierResult>> {
    let clean = data.select(rows)?;
    type Case = (&'static str, fn(f32) -> f32);
    let cases: [Case; 3] = [("all zeros", |_| 0.0), ("inputs × 100", |x| x * 100.0), ("constant 1e4", |_| 1e4)];
    let mut out = Vec::new();
    for (name, f) in cases {
        if !clean.values().any(|v| matches!(v, TensorValue::F32(_))) {
            break;
        }
        let batch: BTreeMap<String, TensorValue> =
            clean.iter().map(|(k, v)| (k.clone(), if let TensorValue::F32(a) = v { TensorValue::F32(a.mapv(f)) } else { v.clone() })).collect();
        out.push(OutlierResult { input: name.into(), baseline_finite: finite(base, &batch, cfg)?, chosen_finite: finite(chosen, &batch, cfg)? });
    }
    Ok(out)
}

fn cohorts(job: &Job<'_>, base: &Model, chosen: &Model, metric: &str, cfg: &SessionConfig) -> Result<Vec<CohortResult>> {
    let data = job.evaluation;
    let Some(cohort) = &data.cohort else { return Ok(Vec::new()) };
    let rows: Vec<usize> = match job.recipe.evaluation.samples {
        Some(n) => data.sample(n, 0),
        None => (0..data.rows).collect(),
    };
    let mut groups: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for &r in &rows {
        groups.entry(cohort[r]).or_default().push(r);
    }
    if groups.len() > 64 {
        return Err(EngineError::Config(format!("{}: `cohort` has {} distinct ids; at most 64 cohorts are reported", data.path.display(), groups.len())));
    }
    let output = job.recipe.evaluation.output.as_deref();
    let mut out = Vec::new();
    for (id, idx) in groups {
        let b = eval::score(base, data, &idx, metric, output, 64, cfg)?;
        let c = eval::score(chosen, data, &idx, metric, output, 64, cfg)?;
        out.push(CohortResult { cohort: id, rows: idx.len(), baseline: b, chosen: c, drop_pct: crate::metric_drop_pct(metric, b, c) });
    }
    Ok(out)
}

/// Float values produced by a Conv/Gemm/MatMul/Add/activation in the baseline that the
/// chosen graph also produces, in the baseline's graph order (at most [`MAX_VALUES`]).
fn shared_values(base: &Model, chosen: &Model) -> Vec<String> {
    let theirs: HashSet<&str> = chosen.graph().node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    let ops = ["Conv", "Gemm", "MatMul", "Add", "Relu", "Clip", "Gelu", "Sigmoid", "Mul", "GlobalAveragePool", "LayerNormalization", "Softmax"];
    base.graph()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref().is_some_and(|o| ops.contains(&o)))
        .flat_map(|n| n.output.first())
        .filter(|o| theirs.contains(o.as_str()))
        .take(MAX_VALUES)
        .cloned()
        .collect()
}

/// Quantized values of a QDQ graph: value → (scale, zero point, qmin, qmax).
fn quantized_values(m: &Model) -> HashMap<String, (f32, f32, f32, f32)> {
    let g = m.graph();
    let init: HashMap<&str, &tamp_onnx::proto::TensorProto> = g.initializer.iter().filter_map(|t| t.name.as_deref().map(|n| (n, t))).collect();
    let mut out = HashMap::new();
    for n in g.node.iter().filter(|n| n.op_type.as_deref() == Some("QuantizeLinear")) {
        let (Some(x), Some(s)) = (n.input.first(), n.input.get(1)) else { continue };
        let scalar = |name: Option<&String>| name.and_then(|z| init.get(z.as_str())).and_then(|t| TensorValue::from_proto(t).ok());
        let Some(TensorValue::F32(scale)) = scalar(Some(s)) else { continue };
        if scale.len() != 1 {
            continue;
        }
        let (zp, lo, hi) = match scalar(n.input.get(2)) {
            Some(TensorValue::I8(z)) => (f32::from(z.iter().next().copied().unwrap_or(0)), -128.0, 127.0),
            Some(TensorValue::U8(z)) => (f32::from(z.iter().next().copied().unwrap_or(0)), 0.0, 255.0),
            _ => (0.0, 0.0, 255.0),
        };
        out.insert(x.clone(), (scale.iter().next().copied().unwrap_or(1.0), zp, lo, hi));
    }
    out
}

/// Streamed statistics of one value over a capture: range, a strided subsample and (against
/// a given range) how many elements fell inside it. Memory is bounded by [`KEEP_PER_VALUE`].
#[derive(Debug, Default)]
struct Stream {
    min: f32,
    max: f32,
    seen: u64,
    inside: u64,
    stride: usize,
    /// Non-zero elements of the subsample (a ReLU's zeros would make every histogram alike).
    kept: Vec<f32>,
    /// Σ|x| per channel (axis 1 of NCHW values, the last axis otherwise).
    energy: Vec<f64>,
}

/// Channel of each element of `a` (axis 1 for rank-4 NCHW values, the last axis otherwise).
fn channel_energy(a: &ArrayD<f32>, energy: &mut Vec<f64>) {
    let axis = if a.ndim() == 4 { 1 } else { a.ndim().saturating_sub(1) };
    let n = a.shape().get(axis).copied().unwrap_or(1);
    if energy.len() != n {
        energy.resize(n, 0.0);
    }
    for (c, lane) in a.axis_iter(Axis(axis)).enumerate() {
        energy[c] += lane.iter().map(|x| f64::from(x.abs())).sum::<f64>();
    }
}

/// Jensen–Shannon distance (base 2) between two non-negative weight vectors.
fn js_weights(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if p.len() != q.len() || sp <= 0.0 || sq <= 0.0 {
        return 0.0;
    }
    let (p, q): (Vec<f64>, Vec<f64>) = (p.iter().map(|x| x / sp).collect(), q.iter().map(|x| x / sq).collect());
    let m: Vec<f64> = p.iter().zip(&q).map(|(x, y)| 0.5 * (x + y)).collect();
    let kl = |x: &[f64]| x.iter().zip(&m).filter(|(x, _)| **x > 0.0).map(|(x, m)| x * (x / m).log2()).sum::<f64>();
    (0.5 * kl(&p) + 0.5 * kl(&q)).max(0.0).sqrt()
}

fn stream(
    m: &Model,
    data: &Dataset,
    values: &[String],
    rows: &[usize],
    cfg: &SessionConfig,
    ranges: &HashMap<String, (f32, f32)>,
) -> Result<HashMap<String, Stream>> {
    let mut acc: HashMap<String, Stream> = HashMap::new();
    let total_rows = rows.len().max(1);
    capture::capture(m, data, rows, values, 16, cfg, false, |batch_rows, batch| {
        for (k, v) in batch {
            let TensorValue::F32(a) = v else { continue };
            let s = acc.entry(k.clone()).or_insert_with(|| Stream { min: f32::INFINITY, max: f32::NEG_INFINITY, ..Stream::default() });
            if s.stride == 0 {
                let per_row = a.len() / batch_rows.len().max(1);
                s.stride = (per_row * total_rows / KEEP_PER_VALUE).max(1);
            }
            let (lo, hi) = ranges.get(k).copied().unwrap_or((f32::NEG_INFINITY, f32::INFINITY));
            for (i, &x) in a.iter().enumerate() {
                s.min = s.min.min(x);
                s.max = s.max.max(x);
                s.inside += u64::from(x >= lo && x <= hi);
                if x != 0.0 && (s.seen as usize + i).is_multiple_of(s.stride) {
                    s.kept.push(x);
                }
            }
            channel_energy(a, &mut s.energy);
            s.seen += a.len() as u64;
        }
        Ok(())
    })?;
    Ok(acc)
}

/// Jensen–Shannon distance (base 2, in [0, 1]) between the histograms of two samples.
pub fn js_distance(a: &[f32], b: &[f32]) -> f64 {
    let (lo, hi) = a.iter().chain(b).fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return 0.0;
    }
    // Fewer bins for small samples: the distance between two samples of one distribution
    // grows like √(bins / n), and a few thousand values would read as a shift.
    let bins = ((a.len().min(b.len()) as f64).sqrt() / 2.0).clamp(8.0, BINS as f64) as usize;
    let hist = |v: &[f32]| {
        let mut h = vec![0.0f64; bins];
        for x in v {
            h[(((x - lo) / (hi - lo) * bins as f32) as usize).min(bins - 1)] += 1.0;
        }
        let n = v.len().max(1) as f64;
        h.iter().map(|c| c / n).collect::<Vec<f64>>()
    };
    let (p, q) = (hist(a), hist(b));
    let kl = |x: &[f64], m: &[f64]| x.iter().zip(m).filter(|(x, _)| **x > 0.0).map(|(x, m)| x * (x / m).log2()).sum::<f64>();
    let m: Vec<f64> = p.iter().zip(&q).map(|(x, y)| 0.5 * (x + y)).collect();
    (0.5 * kl(&p, &m) + 0.5 * kl(&q, &m)).max(0.0).sqrt()
}

fn coverage(job: &Job<'_>, base: &Model, values: &[String], eval_rows: &[usize], cfg: &SessionConfig) -> Result<CalibrationCoverage> {
    let calib = job.calibration;
    let calib_rows = calib.sample(job.recipe.report.analysis_rows.min(calib.rows), job.recipe.report.seed);
    let c = stream(base, calib, values, &calib_rows, cfg, &HashMap::new())?;
    let ranges: HashMap<String, (f32, f32)> = c.iter().map(|(k, s)| (k.clone(), (s.min, s.max))).collect();
    let e = stream(base, job.evaluation, values, eval_rows, cfg, &ranges)?;
    let mut layers = Vec::new();
    for v in values {
        let (Some(cs), Some(es)) = (c.get(v), e.get(v)) else { continue };
        let inside = es.inside as f64 / es.seen.max(1) as f64;
        // The larger of two distances: the values' histogram (non-zero elements) and how the
        // activation energy spreads over channels (one class lights up other channels).
        let js = js_distance(&cs.kept, &es.kept).max(js_weights(&cs.energy, &es.energy));
        layers.push(LayerCoverage { value: v.clone(), inside, js_distance: js, score: inside * (1.0 - js) });
    }
    // A calibration set is as representative as its least covered layer: a mean let the
    // deep layers one class lights up differently hide behind the shallow ones (measured on
    // ResNet-8: one-class calibration 0.88 mean vs 0.96 random, 0.72 vs 0.95 as the minimum).
    let score = layers.iter().map(|l| l.score).fold(1.0, f64::min);
    Ok(CalibrationCoverage { score, calibration_rows: calib_rows.len(), evaluation_rows: eval_rows.len(), layers })
}

/// Most elements per value the per-layer error compares (the first ones, in the same order
/// for both models), so memory stays bounded on large activations.
const ERROR_ELEMENTS: usize = 1 << 20;

fn layer_errors(data: &Dataset, base: &Model, chosen: &Model, values: &[String], rows: &[usize], cfg: &SessionConfig) -> Result<Vec<LayerError>> {
    let mut reference: HashMap<String, Vec<f32>> = HashMap::new();
    capture::capture(base, data, rows, values, 16, cfg, false, |_, batch| {
        for (k, v) in batch {
            if let TensorValue::F32(a) = v {
                let r = reference.entry(k.clone()).or_default();
                r.extend(a.iter().take(ERROR_ELEMENTS.saturating_sub(r.len())));
            }
        }
        Ok(())
    })?;
    let q = quantized_values(chosen);
    // value → (signal, noise, clipped, compared, shape agreed)
    let mut acc: HashMap<String, (f64, f64, u64, usize, bool)> = HashMap::new();
    capture::capture(chosen, data, rows, values, 16, cfg, false, |_, batch| {
        for (k, v) in batch {
            let (TensorValue::F32(a), Some(x)) = (v, reference.get(k)) else { continue };
            let e = acc.entry(k.clone()).or_insert((0.0, 0.0, 0, 0, true));
            let clip = q.get(k).map(|&(s, zp, lo, hi)| ((lo - zp) * s - s * 0.5, (hi - zp) * s + s * 0.5));
            for &y in a.iter() {
                if let Some((min, max)) = clip {
                    e.2 += u64::from(y < min || y > max);
                }
                if e.3 < x.len() {
                    let b = f64::from(x[e.3]);
                    e.0 += b * b;
                    e.1 += (b - f64::from(y)).powi(2);
                }
                e.3 += 1;
            }
        }
        Ok(())
    })?;
    let mut out = Vec::new();
    for v in values {
        let (Some(&(signal, noise, clipped, n, _)), Some(x)) = (acc.get(v), reference.get(v)) else { continue };
        if n < x.len() || (x.len() < ERROR_ELEMENTS && n != x.len()) {
            continue; // a pruned layer: another shape
        }
        out.push(LayerError {
            value: v.clone(),
            relative_error: (noise / signal.max(1e-30)).sqrt(),
            sqnr_db: 10.0 * (signal.max(1e-30) / noise.max(1e-30)).log10(),
            saturation: q.contains_key(v).then(|| clipped as f64 / n.max(1) as f64),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_distance_is_zero_for_one_sample_and_one_for_disjoint_ones() {
        let a: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert!(js_distance(&a, &a) < 1e-9);
        let b: Vec<f32> = (5000..6000).map(|i| i as f32).collect();
        assert!((js_distance(&a, &b) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn token_shifts_keep_the_first_and_last_tokens_and_the_mask_consistent() {
        let ids = ArrayD::from_shape_vec(IxDyn(&[1, 8]), vec![101, 5, 6, 7, 8, 102, 0, 0]).unwrap();
        let mask = ArrayD::from_shape_vec(IxDyn(&[1, 8]), vec![1, 1, 1, 1, 1, 1, 0, 0]).unwrap();
        let batch = BTreeMap::from([("input_ids".to_owned(), TensorValue::I64(ids)), ("attention_mask".to_owned(), TensorValue::I64(mask))]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let out = shift_tokens(&batch, &[6], "token_dropout", 0.5, &mut rng);
        let (TensorValue::I64(i), TensorValue::I64(m)) = (&out["input_ids"], &out["attention_mask"]) else { panic!() };
        assert_eq!(m.iter().sum::<i64>(), 4, "two of four inner tokens dropped: {m:?}");
        assert_eq!((i[IxDyn(&[0, 0])], i[IxDyn(&[0, 3])]), (101, 102));
        let swapped = shift_tokens(&batch, &[6], "word_swap", 0.5, &mut rng);
        let TensorValue::I64(s) = &swapped["input_ids"] else { panic!() };
        let mut sorted: Vec<i64> = s.iter().copied().collect();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 0, 5, 6, 7, 8, 101, 102], "a swap only reorders");
    }

    #[test]
    fn image_shifts_are_seeded_and_blur_keeps_the_mean() {
        let a = ArrayD::from_shape_fn(IxDyn(&[1, 1, 6, 6]), |i| (i[2] * 6 + i[3]) as f32);
        let v = TensorValue::F32(a.clone());
        let noisy = |seed| shift_image(&v, "gaussian_noise", 0.5, &mut ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(noisy(3), noisy(3));
        assert_ne!(noisy(3), noisy(4));
        let TensorValue::F32(b) = shift_image(&v, "blur", 1.0, &mut ChaCha8Rng::seed_from_u64(0)) else { panic!() };
        assert!((b.mean().unwrap() - a.mean().unwrap()).abs() < 1.0 && b != a);
    }
}
