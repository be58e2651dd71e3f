//! Low-rank factorisation (SVD of MatMul weights, Tucker-2 or CP of Conv weights): one candidate
//! at the stage's ratio or energy with per-layer ranks and how closely its outputs follow the
//! input model's, and, with `sensitivity`, one whose per-layer ratios come from sensitivity
//! curves removing as many parameters.

use tamp_domain::recipe::{LowrankMethod, LowrankStage, Stage};
use tamp_domain::results::{Candidate, Details, FactorisedLayer, LayerCurve, LowrankDetails};
use tamp_engine::passes::LowRank as LowRankPass;
use tamp_onnx::{Model, Pass};

use super::Technique;
use crate::sensitivity::{self, Ladder};
use crate::{Context, Result};

/// Low-rank settings that decide what is done with the curves, not what a curve is.
const NOT_IN_CURVES: &[&str] = &["target_ratio", "levels", "sensitivity", "seed", "sensitivity_rows", "energy"];

/// SVD, Tucker-2 and CP factorisation.
pub struct LowRank;

impl Technique for LowRank {
    type Settings = LowrankStage;
    const NAME: &'static str = "lowrank";

    fn settings(stage: &Stage) -> Option<&LowrankStage> {
        match stage {
            Stage::Lowrank(l) => Some(l),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, stage: usize, cfg: &LowrankStage, model: &Model) -> Result<Vec<Candidate>> {
        let (what, method) = match cfg.method {
            LowrankMethod::Tucker => ("factorise Conv weights (Tucker-2)", "tucker2"),
            LowrankMethod::Cp => ("factorise Conv weights (CP)", "cp"),
            LowrankMethod::Svd => ("factorise MatMul weights (SVD)", "svd"),
        };
        cx.obs.begin(what, 0);
        let started = std::time::Instant::now();
        let pass = LowRankPass::new(cfg.clone());
        let Some((factored, layers)) = pass.apply(model)? else {
            return cx.not_applied(match cfg.method {
                LowrankMethod::Svd => "no MatMul layer worth factorising",
                _ => "no Conv layer worth factorising (group 1, k > 1, channels ≥ min_dim, explicit pads for CP)",
            });
        };
        let pass_seconds = started.elapsed().as_secs_f64();
        let (before, after) = params(&layers);
        cx.obs.end(&format!("{} layers factorised: {before} → {after} parameters", layers.len()));
        let id = match cfg.energy {
            Some(e) => format!("s{stage}-{method}-e{e}"),
            None => format!("s{stage}-{method}-r{}", cfg.target_ratio),
        };
        let mut c = cx.judge(&factored, id, stage, "lowrank")?;
        c.mode = method.into();
        let output_agreement = cx.agreement(model, &factored)?;
        c.details =
            Some(Details::Lowrank(LowrankDetails { layers, params_before: before, params_after: after, pass_seconds, output_agreement, sensitivity: None }));
        let mut out = vec![c];
        if cfg.sensitivity {
            out.push(allocated(cx, stage, cfg, model, method, before - after)?);
        }
        Ok(out)
    }
}

/// Parameters before and after, summed over the factorised layers.
fn params(layers: &[FactorisedLayer]) -> (usize, usize) {
    layers.iter().fold((0, 0), |(b, a), l| (b + l.params_before, a + l.params_after))
}

/// The candidate whose per-layer ratios come from sensitivity curves, removing `goal`
/// parameters (what the uniform ratio removes) with the least predicted drop.
fn allocated(cx: &mut Context<'_, '_>, stage: usize, cfg: &LowrankStage, model: &Model, method: &str, goal: usize) -> Result<Candidate> {
    let started = std::time::Instant::now();
    let eligible = LowRankPass::new(cfg.clone()).eligible(model)?;
    let names: Vec<String> = eligible.iter().map(|(n, _)| n.clone()).collect();
    let with_levels = |levels: &[f64]| LowRankPass {
        config: cfg.clone(),
        ratios: names.iter().zip(levels).map(|(n, &l)| (n.clone(), if l <= 0.0 { 1.0 } else { 1.0 - l })).collect(),
    };
    let build = |levels: &[f64]| -> Result<Model> { Ok(with_levels(levels).apply(model)?.map_or_else(|| model.clone(), |(m, _)| m)) };
    let ladder = Ladder { levels: &cfg.levels, rows: cfg.sensitivity_rows, seed: cfg.seed };
    let curves = sensitivity::curves(cx, model, ladder, method, sensitivity::settings(cfg, NOT_IN_CURVES), &names, &build)?;
    // Parameters a layer gives up at a level.
    let removable = |u: usize, l: f64| (eligible[u].1 as f64 * l).round() as usize;
    let alloc = sensitivity::allocate(&curves, &cfg.levels, goal, &removable);
    let (m, layers) = with_levels(&alloc).apply(model)?.unwrap_or_else(|| (model.clone(), Vec::new()));
    let pass_seconds = started.elapsed().as_secs_f64();
    let (before, after) = params(&layers);
    let mut c = cx.judge(&m, format!("s{stage}-{method}-sensitivity-r{}", cfg.target_ratio), stage, "lowrank")?;
    c.mode = format!("{method}/sensitivity");
    let output_agreement = cx.agreement(model, &m)?;
    let sensitivity = names
        .iter()
        .zip(&curves)
        .zip(&alloc)
        .map(|((n, cv), &l)| LayerCurve { layer: n.clone(), levels: cfg.levels.clone(), metric_drop_pct: cv.clone(), chosen: l })
        .collect();
    c.details = Some(Details::Lowrank(LowrankDetails {
        layers,
        params_before: before,
        params_after: after,
        pass_seconds,
        output_agreement,
        sensitivity: Some(sensitivity),
    }));
    Ok(c)
}
