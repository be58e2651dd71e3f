//! Early exits (AF-001): a classifier head after each chosen block, trained by distillation
//! from the model's own output with the backbone frozen; the accuracy-vs-average-latency
//! curve over thresholds on the evaluation rows; and the cascade at the fastest threshold
//! that meets the metric constraint, judged like any candidate.

use std::collections::HashSet;

use tamp_domain::recipe::{BatchNormMode, EarlyExitStage, Stage};
use tamp_domain::results::{Candidate, CascadeTiming, Details, EarlyExitDetails, ExitCurvePoint};
use tamp_engine::passes::exits;
use tamp_engine::perf::{self, LatencyConfig};
use tamp_engine::{EngineError, Session, eval};
use tamp_onnx::{Model, TensorValue};

use super::Technique;
use crate::{Context, Result, TrainSpec};

/// Early-exit heads and the confidence cascade.
pub struct EarlyExit;

impl Technique for EarlyExit {
    type Settings = EarlyExitStage;
    const NAME: &'static str = "early_exit";

    fn settings(stage: &Stage) -> Option<&EarlyExitStage> {
        match stage {
            Stage::EarlyExit(e) => Some(e),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, index: usize, e: &EarlyExitStage, input: &Model) -> Result<Vec<Candidate>> {
        let data = cx.job.evaluation;
        let rows: Vec<usize> = match cx.eval_cfg.samples {
            Some(n) => data.sample(n.min(data.rows), cx.eval_cfg.seed),
            None => (0..data.rows).collect(),
        };
        let Some(labels) = data.class_labels(&rows) else {
            return cx.not_applied("early exits need class labels in the evaluation set (they answer with a class)");
        };
        let session = Session::from_model(input, &cx.eval_cfg.session)?;
        let final_out = eval::metric_output(&session.outputs, cx.eval_cfg.output.as_deref())?;
        drop(session);
        let points = if e.after.is_empty() { exits::residual_points(input) } else { e.after.clone() };
        if points.is_empty() {
            return cx.not_applied("no residual block before the last to attach a head to (name values with `after:`)");
        }
        // Channels at each point and the class count, from one row through ONNX Runtime.
        let wanted: Vec<String> = points.iter().cloned().chain(std::iter::once(final_out.clone())).collect();
        let probe = exits::keep_outputs(input, &wanted)?;
        let feeds = data.select(&[0])?;
        let named: Vec<(&str, &TensorValue)> = feeds.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let shapes: Vec<Vec<usize>> = Session::from_model(&probe, &cx.eval_cfg.session)?.run(&named)?.into_iter().map(|(_, v)| v.shape().to_vec()).collect();
        let mut sites = Vec::new();
        for (p, s) in points.iter().zip(&shapes) {
            if s.len() != 4 {
                return Err(EngineError::Config(format!("stage {index} (`early_exit`): '{p}' has shape {s:?}; a head reads a 4-D feature map [N, C, H, W]")));
            }
            sites.push(exits::ExitPoint { value: p.clone(), shape: [s[1], s[2], s[3]] });
        }
        let classes = shapes.last().and_then(|s| s.last().copied()).unwrap_or(0);
        let seed = e.fine_tune.seed;
        let (mut model, names, params) =
            exits::attach_heads(input, &sites, classes, exits::HeadForm { conv_channels: e.head_channels, grid: e.head_grid }, seed)?;
        // Each head learns the full model's answer; the backbone and its statistics stay.
        let Some(mut ft) = cx.fine_tune.take() else {
            return Err(EngineError::Config(format!("stage {index} (`early_exit`) has no training settings")));
        };
        ft.batch_norm = BatchNormMode::Frozen;
        let mut reports = Vec::new();
        for (exit, head) in names.iter().zip(&params) {
            let spec = TrainSpec {
                output: Some(exit.clone()),
                teacher_output: Some(final_out.clone()),
                train_only: Some(head.iter().cloned().collect::<HashSet<_>>()),
                ..TrainSpec::default()
            };
            let trained = cx.train_with(&model, &ft, &format!("s{index}-{exit}"), spec);
            match trained {
                Ok((m, r)) => {
                    model = m;
                    reports.push(r);
                }
                Err(err) => {
                    cx.fine_tune = Some(ft);
                    return Err(err);
                }
            }
        }
        cx.fine_tune = Some(ft);
        cx.obs.begin("early-exit curve", 0);
        let mut preds: Vec<Vec<(usize, f32)>> = Vec::new();
        for out in names.iter().chain(std::iter::once(&final_out)) {
            let y = eval::output_rows(&model, data, &rows, Some(out), &cx.eval_cfg.session)?;
            preds.push(y.outer_iter().map(|r| top_class(&r.to_vec())).collect());
        }
        let exit_top1: Vec<f64> = preds.iter().map(|p| top1(p.iter().map(|(c, _)| *c), &labels)).collect();
        // Batch-1 P50 up to each exit (earlier heads included), of everything, and of the input.
        let lat_cfg = LatencyConfig { warmup: 10, runs: cx.eval_cfg.latency.runs.max(50) };
        let p50 = |m: &Model, cx: &Context<'_, '_>| -> Result<f64> {
            let mut s = Session::from_model(m, &cx.eval_cfg.session)?;
            Ok(perf::latency(&mut s, data, lat_cfg)?.p50_ms)
        };
        let mut latency_ms = Vec::new();
        for k in 1..=names.len() {
            latency_ms.push(p50(&exits::keep_outputs(&model, &names[..k])?, cx)?);
        }
        latency_ms.push(p50(&model, cx)?);
        let baseline_latency_ms = p50(input, cx)?;
        let base = cx.baseline().value;
        let limit = cx.job.recipe.constraints.max_metric_drop_pct;
        // The class the cascade gives row `r` at threshold τ, and the exit that answers.
        let answer = |tau: f64, r: usize| -> (usize, usize) {
            let k = (0..names.len()).find(|&k| f64::from(preds[k][r].1) >= tau).unwrap_or(names.len());
            (preds[k][r].0, k)
        };
        let curve: Vec<ExitCurvePoint> = e
            .thresholds
            .iter()
            .map(|&tau| {
                let mut answered = vec![0usize; preds.len()];
                let mut correct = 0usize;
                for (r, &label) in labels.iter().enumerate() {
                    let (class, k) = answer(tau, r);
                    answered[k] += 1;
                    correct += usize::from(class as i64 == label);
                }
                let n = labels.len().max(1) as f64;
                let shares: Vec<f64> = answered.iter().map(|&a| a as f64 / n).collect();
                let avg: f64 = shares.iter().zip(&latency_ms).map(|(s, l)| s * l).sum();
                let value = 100.0 * correct as f64 / n;
                let drop = if base > 0.0 { 100.0 * (base - value) / base } else { 0.0 };
                ExitCurvePoint {
                    threshold: tau,
                    top1: value,
                    answered: shares,
                    average_latency_ms: avg,
                    latency_ratio: avg / baseline_latency_ms.max(1e-9),
                    meets_constraint: drop <= limit,
                }
            })
            .collect();
        let chosen = curve
            .iter()
            .filter(|p| p.meets_constraint)
            .min_by(|a, b| a.average_latency_ms.total_cmp(&b.average_latency_ms))
            .or_else(|| curve.iter().max_by(|a, b| a.threshold.total_cmp(&b.threshold)))
            .map_or(1.0, |p| p.threshold);
        cx.obs.end(&format!(
            "{} exits; threshold {chosen}: {}",
            names.len(),
            curve
                .iter()
                .find(|p| p.threshold == chosen)
                .map_or(String::new(), |p| format!("top1 {:.2}, average latency {:.2}× the model's", p.top1, p.latency_ratio))
        ));
        let cascade = exits::cascade(&model, &names, &final_out, chosen as f32)?;
        cx.obs.begin("cascade timed row by row", 0);
        let predicted: Vec<usize> = (0..labels.len()).map(|r| answer(chosen, r).0).collect();
        let measured = time_cascade(&cascade, input, cx, &rows, &labels, &predicted)?;
        cx.obs.end(&format!(
            "{} rows: {:.4} ms a row against the model's {:.4} ({:.3}×); top1 {:.2} (curve {:.2})",
            measured.rows, measured.average_latency_ms, measured.baseline_average_latency_ms, measured.latency_ratio, measured.top1, measured.curve_top1
        ));
        let mut c = cx.judge_as_is(&cascade, format!("s{index}-early-exit"), index, "early_exit")?;
        c.mode = "cascade".into();
        c.training = reports.pop();
        c.details = Some(Details::EarlyExit(EarlyExitDetails {
            exits: points,
            exit_top1,
            latency_ms,
            baseline_latency_ms,
            curve,
            threshold: chosen,
            batching: "per batch: the early answer needs every row of the batch confident (batch 1: per row)".into(),
            measured: Some(measured),
        }));
        Ok(vec![c])
    }
}

/// Rows and rounds of the cascade's own timing.
const TIMED_ROWS: usize = 1000;
const TIMED_ROUNDS: usize = 5;

/// The emitted cascade and the model it came from, each run at batch 1 on up to
/// [`TIMED_ROWS`] evaluation rows (evenly spaced), so that every row takes the path its
/// confidence picks. Per row the two alternate which goes first; the round with the median
/// ratio of summed times is reported. `rows` are dataset indices, `labels` and `predicted`
/// are by position in `rows`.
fn time_cascade(cascade: &Model, input: &Model, cx: &Context<'_, '_>, rows: &[usize], labels: &[i64], predicted: &[usize]) -> Result<CascadeTiming> {
    let data = cx.job.evaluation;
    let step = rows.len().div_ceil(TIMED_ROWS).max(1);
    let picked: Vec<usize> = (0..rows.len()).step_by(step).collect();
    let feeds = picked.iter().map(|&p| data.select(&[rows[p]])).collect::<std::result::Result<Vec<_>, _>>()?;
    let named: Vec<Vec<(&str, &TensorValue)>> = feeds.iter().map(|f| f.iter().map(|(k, v)| (k.as_str(), v)).collect()).collect();
    let mut sc = Session::from_model(cascade, &cx.eval_cfg.session)?;
    let mut sb = Session::from_model(input, &cx.eval_cfg.session)?;
    let mut hits = 0usize;
    for (i, feed) in named.iter().enumerate() {
        let out = sc.run(feed)?;
        sb.run(feed)?;
        let class = match out.first().map(|(_, v)| v) {
            Some(TensorValue::F32(a)) => top_class(&a.iter().copied().collect::<Vec<_>>()).0,
            _ => return Err(EngineError::Config("the cascade's output is not float class scores".into())),
        };
        hits += usize::from(class as i64 == labels[picked[i]]);
    }
    let timed = |s: &mut Session, feed: &[(&str, &TensorValue)]| -> Result<f64> {
        let t = std::time::Instant::now();
        s.run(feed)?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let mut rounds = Vec::with_capacity(TIMED_ROUNDS);
    for round in 0..TIMED_ROUNDS {
        let (mut c, mut b) = (0.0, 0.0);
        for (i, feed) in named.iter().enumerate() {
            if (i + round) % 2 == 0 {
                b += timed(&mut sb, feed)?;
                c += timed(&mut sc, feed)?;
            } else {
                c += timed(&mut sc, feed)?;
                b += timed(&mut sb, feed)?;
            }
        }
        rounds.push((c / b.max(1e-12), c, b));
    }
    rounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (ratio, c, b) = rounds[rounds.len() / 2];
    let n = picked.len().max(1) as f64;
    let curve_hits = picked.iter().filter(|&&p| predicted[p] as i64 == labels[p]).count();
    Ok(CascadeTiming {
        rows: picked.len(),
        rounds: TIMED_ROUNDS,
        average_latency_ms: c / n,
        baseline_average_latency_ms: b / n,
        latency_ratio: ratio,
        top1: 100.0 * hits as f64 / n,
        curve_top1: 100.0 * curve_hits as f64 / n,
    })
}

/// The arg-max class and its softmax probability.
fn top_class(scores: &[f32]) -> (usize, f32) {
    let (k, &m) = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap_or((0, &0.0));
    let sum: f32 = scores.iter().map(|v| (v - m).exp()).sum();
    (k, 1.0 / sum.max(1e-30))
}

fn top1(pred: impl Iterator<Item = usize>, labels: &[i64]) -> f64 {
    let hits = pred.zip(labels).filter(|(p, l)| *p as i64 == **l).count();
    100.0 * hits as f64 / labels.len().max(1) as f64
}
