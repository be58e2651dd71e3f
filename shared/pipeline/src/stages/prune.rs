//! Structured channel pruning: a uniform candidate (every group at `target_sparsity`) and,
//! with `sensitivity`, one whose per-group levels come from measured sensitivity curves; or,
//! with `schedule: iterative`, one candidate pruned in steps. Also the uniform-and-allocated
//! routine that attention-head pruning shares.

use std::collections::BTreeMap;

use tamp_domain::recipe::{FineTune, PruningSchedule, PruningStage, PruningType, Stage};
use tamp_domain::results::{Candidate, ChannelGroupLevel, ChannelPruning, Details, GroupCurve, IterativeGroup, IterativePruning, TrainReport, TrajectoryStep};
use tamp_engine::eval;
use tamp_engine::passes::prune::{self as pr, ChannelGroup};
use tamp_engine::runtime::SessionConfig;
use tamp_onnx::Model;

use super::Technique;
use crate::sensitivity::{self, Build, Ladder};
use crate::{Context, Result};

/// Pruning settings that decide what is done with the curves, not what a curve is.
pub(super) const NOT_IN_CURVES: &[&str] = &["target_sparsity", "levels", "sensitivity", "schedule", "steps", "fine_tune", "seed", "sensitivity_rows"];

/// Removes whole channels: the graph gets smaller and faster.
pub struct Channels;

impl Technique for Channels {
    type Settings = PruningStage;
    const NAME: &'static str = "pruning (structured_channel)";

    fn settings(stage: &Stage) -> Option<&PruningStage> {
        match stage {
            Stage::Pruning(p) if p.kind == PruningType::StructuredChannel => Some(p),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        cx.obs.begin("find channel groups", 0);
        let groups = pr::analyze(model);
        if groups.is_empty() {
            return cx.not_applied("no prunable channel group (every channel feeds a Concat, Reshape, output …)");
        }
        let total: usize = groups.iter().map(|g| g.channels).sum();
        cx.obs.end(&format!("{} channel groups, {total} prunable channels", groups.len()));
        let imps: Vec<Vec<f64>> = groups.iter().map(|g| pr::importance_by(model, g, cfg.criterion)).collect();
        let removable = |g: &ChannelGroup, level: f64| removable(cfg, g, level);
        if cfg.schedule == PruningSchedule::Iterative {
            return iterative(cx, stage, cfg, model, &groups);
        }
        let build = |levels: &[f64]| -> Result<Model> {
            let keep: BTreeMap<usize, Vec<usize>> =
                groups.iter().zip(&imps).zip(levels).map(|((g, imp), &l)| (g.id, pr::keep_set(imp, removable(g, l)))).collect();
            Ok(pr::prune(model, &groups, &keep)?)
        };
        let params_before = pr::parameter_count(model);
        let describe = |levels: &[f64], m: &Model, pass_seconds: f64, curves: Option<&[Vec<f64>]>| {
            let removed: usize = groups.iter().zip(levels).map(|(g, &l)| removable(g, l)).sum();
            Details::ChannelPruning(ChannelPruning {
                groups: groups
                    .iter()
                    .zip(levels)
                    .map(|(g, &l)| ChannelGroupLevel { group: g.name.clone(), channels: g.channels, level: l, removed: removable(g, l) })
                    .collect(),
                removed_channels: removed,
                prunable_channels: total,
                achieved_sparsity: removed as f64 / total as f64,
                params_before,
                params_after: pr::parameter_count(m),
                pass_seconds,
                sensitivity: curves.map(|cv| {
                    groups.iter().zip(cv).map(|(g, c)| GroupCurve { group: g.name.clone(), levels: cfg.levels.clone(), metric_drop_pct: c.clone() }).collect()
                }),
            })
        };
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let shape = Allocated { id: "prune", mode: "structured_channel", technique: "channels" };
        uniform_and_allocated(cx, stage, cfg, model, &shape, &names, &|g, l| removable(&groups[g], l), &build, &describe)
    }
}

/// Channels a group gives up at `level`: at least `min_channels` stay, and the kept count is
/// rounded to a multiple of `round_to` (SIMD-friendly widths).
fn removable(cfg: &PruningStage, g: &ChannelGroup, level: f64) -> usize {
    let min_keep = cfg.min_channels.max(1);
    let step = cfg.round_to.max(1);
    let want = ((g.channels as f64 * level).round() as usize).min(g.channels.saturating_sub(min_keep));
    if g.channels < 2 * step {
        return want;
    }
    // Keep a multiple of `step` channels: round the kept count to the nearest one.
    let keep = (((g.channels - want) as f64 / step as f64).round() as usize * step).clamp(step, g.channels);
    g.channels - keep
}

/// How [`uniform_and_allocated`] names its candidates: id part, mode prefix, and the
/// technique its sensitivity curves are cached under.
pub(super) struct Allocated {
    pub id: &'static str,
    pub mode: &'static str,
    pub technique: &'static str,
}

/// Describes a candidate built at the given levels: the model, the pass's wall time and,
/// for the allocated candidate, the curves the levels came from.
pub(super) type Describe<'d> = dyn Fn(&[f64], &Model, f64, Option<&[Vec<f64>]>) -> Details + 'd;

/// A uniform candidate (every unit at `target_sparsity`) and, with `sensitivity`, one whose
/// per-unit levels come from sensitivity curves, removing as much in all with the least
/// predicted drop (structured channels and attention heads share this).
#[allow(clippy::too_many_arguments)]
pub(super) fn uniform_and_allocated(
    cx: &mut Context<'_, '_>,
    stage: usize,
    cfg: &PruningStage,
    model: &Model,
    shape: &Allocated,
    names: &[String],
    removable: &dyn Fn(usize, f64) -> usize,
    build: &Build<'_>,
    describe: &Describe<'_>,
) -> Result<Vec<Candidate>> {
    let t = cfg.target_sparsity;
    let uniform = vec![t; names.len()];
    let started = std::time::Instant::now();
    let m = build(&uniform)?;
    let uniform_seconds = started.elapsed().as_secs_f64();
    let mut c = cx.judge(&m, format!("s{stage}-{}-uniform-{t}", shape.id), stage, "pruning")?;
    c.mode = format!("{}/uniform", shape.mode);
    c.details = Some(describe(&uniform, &m, uniform_seconds, None));
    let mut out = vec![c];
    if cfg.sensitivity {
        let started = std::time::Instant::now();
        let ladder = Ladder { levels: &cfg.levels, rows: cfg.sensitivity_rows, seed: cfg.seed };
        let curves = sensitivity::curves(cx, model, ladder, shape.technique, sensitivity::settings(cfg, NOT_IN_CURVES), names, build)?;
        // As much as the uniform candidate removes, so the two compare.
        let goal: usize = (0..names.len()).map(|u| removable(u, t)).sum();
        let alloc = sensitivity::allocate(&curves, &cfg.levels, goal, removable);
        let m = build(&alloc)?;
        let pass_seconds = started.elapsed().as_secs_f64();
        let mut c = cx.judge(&m, format!("s{stage}-{}-sensitivity-{t}", shape.id), stage, "pruning")?;
        c.mode = format!("{}/sensitivity", shape.mode);
        c.details = Some(describe(&alloc, &m, pass_seconds, Some(&curves)));
        out.push(c);
    }
    Ok(out)
}

/// Iterative structured pruning: `steps` steps to `target_sparsity` (uniform), each
/// re-analysing the pruned graph and re-ranking channels on its weights, with the metric
/// measured on the sensitivity rows after every step (the trajectory is in the details).
/// With `fine_tune`, the model trains after every step (each step gets an equal share of
/// the epochs or steps), so the next step ranks channels of a recovered network.
fn iterative(cx: &mut Context<'_, '_>, stage: usize, cfg: &PruningStage, model: &Model, groups: &[ChannelGroup]) -> Result<Vec<Candidate>> {
    let original: BTreeMap<String, &ChannelGroup> = groups.iter().map(|g| (g.name.clone(), g)).collect();
    let data = cx.job.evaluation;
    let rows = data.sample(cfg.sensitivity_rows.min(data.rows), cfg.seed);
    // Training runs between these scores on the same cores: ORT's idle threads must not spin.
    let session = SessionConfig { intra_spinning: cx.fine_tune.is_none(), ..SessionConfig::default() };
    let started = std::time::Instant::now();
    let mut current = model.clone();
    let metric = cx.metric.clone();
    let output = cx.eval_cfg.output.clone();
    let mut trajectory = vec![TrajectoryStep {
        step: 0,
        level: 0.0,
        metric: eval::score(model, data, &rows, &metric, output.as_deref(), 64, &session)?,
        params: pr::parameter_count(model),
    }];
    // Training happens here, between steps; judging must not train once more.
    let fine_tune = cx.fine_tune.take();
    let share = fine_tune.as_ref().map(|ft| FineTune {
        epochs: ft.epochs / cfg.steps as f64,
        steps: ft.steps.map(|s| s.div_ceil(cfg.steps)),
        seed: ft.seed,
        ..ft.clone()
    });
    let mut training: Option<TrainReport> = None;
    cx.obs.begin(&format!("prune in {} steps", cfg.steps), cfg.steps as u64);
    for step in 1..=cfg.steps {
        let level = cfg.target_sparsity * step as f64 / cfg.steps as f64;
        let now = pr::analyze(&current);
        let keep: BTreeMap<usize, Vec<usize>> = now
            .iter()
            .filter_map(|g| {
                let orig = original.get(&g.name)?;
                let target_keep = orig.channels - removable(cfg, orig, level);
                Some((g.id, pr::keep_set(&pr::importance_by(&current, g, cfg.criterion), g.channels.saturating_sub(target_keep))))
            })
            .collect();
        current = pr::prune(&current, &now, &keep)?;
        if let Some(ft) = &share {
            let ft = FineTune { seed: ft.seed + step as u64, ..ft.clone() };
            let before = (step == cfg.steps).then(|| cx.quick_score(&current)).transpose()?;
            let (m, r) = cx.train(&current, &ft, &format!("after step {step}"))?;
            current = m;
            training = Some(merge(training, r, before));
        }
        let score = eval::score(&current, data, &rows, &metric, output.as_deref(), 64, &session)?;
        trajectory.push(TrajectoryStep { step, level, metric: score, params: pr::parameter_count(&current) });
        cx.obs.advance(step as u64);
    }
    cx.obs.end(&format!("{} steps", cfg.steps));
    let pass_seconds = started.elapsed().as_secs_f64();
    let t = cfg.target_sparsity;
    let judged = cx.judge(&current, format!("s{stage}-prune-iterative{}-{t}", cfg.steps), stage, "pruning");
    cx.fine_tune = fine_tune;
    let mut c = judged?;
    c.training = training;
    c.mode = "structured_channel/iterative".into();
    let after = pr::analyze(&current);
    let removed: usize = after.iter().filter_map(|g| original.get(&g.name).map(|o| o.channels - g.channels)).sum();
    let total: usize = groups.iter().map(|g| g.channels).sum();
    c.details = Some(Details::IterativePruning(IterativePruning {
        steps: cfg.steps,
        trajectory,
        trajectory_rows: rows.len(),
        fine_tuning: if share.is_some() { format!("after each of the {} steps", cfg.steps) } else { "none (no `fine_tune`)".into() },
        groups: after
            .iter()
            .map(|g| IterativeGroup { group: g.name.clone(), channels: original.get(&g.name).map_or(g.channels, |o| o.channels), kept: g.channels })
            .collect(),
        removed_channels: removed,
        prunable_channels: total,
        achieved_sparsity: removed as f64 / total.max(1) as f64,
        params_before: pr::parameter_count(model),
        params_after: pr::parameter_count(&current),
        pass_seconds,
    }));
    Ok(vec![c])
}

/// One report for the training runs between steps: totals, the first run's starting loss,
/// the last run's final loss, and the metric before the last run.
fn merge(acc: Option<TrainReport>, r: TrainReport, before_last: Option<f64>) -> TrainReport {
    let Some(mut a) = acc else { return TrainReport { metric_before: before_last, ..r } };
    a.steps += r.steps;
    a.epochs += r.epochs;
    a.wall_seconds += r.wall_seconds;
    a.loss_end = r.loss_end;
    a.peak_rss_mib = match (a.peak_rss_mib, r.peak_rss_mib) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    a.lr_trials.extend(r.lr_trials);
    if before_last.is_some() {
        a.metric_before = before_last;
    }
    a.trainable_params = r.trainable_params;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(channels: usize) -> ChannelGroup {
        ChannelGroup { id: 0, name: "g".into(), channels, ..Default::default() }
    }

    #[test]
    fn removal_keeps_the_minimum_and_rounds_kept_widths() {
        let cfg = PruningStage { min_channels: 4, round_to: 8, ..PruningStage::default() };
        // 64 channels at 0.3: want 19, keep 45 → rounded to 48 → remove 16.
        assert_eq!(removable(&cfg, &group(64), 0.3), 16);
        // Narrow groups (< 2 × round_to) are not rounded, but keep min_channels.
        assert_eq!(removable(&cfg, &group(10), 0.9), 6);
        assert_eq!(removable(&cfg, &group(64), 0.0), 0);
        let loose = PruningStage { min_channels: 1, round_to: 1, ..PruningStage::default() };
        assert_eq!(removable(&loose, &group(64), 0.3), 19);
    }
}
