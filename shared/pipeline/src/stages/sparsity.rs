//! Unstructured or block/N:M magnitude pruning: zeros in dense weights (the graph and its
//! speed stay, the coded artifact shrinks). Unstructured `global`: one threshold for all
//! layers; `per_layer`: every layer at the target and, with `sensitivity`, per-layer levels
//! from sensitivity curves removing the same number of weights; block RxC: per layer (with
//! the same sensitivity option); N:M: one candidate at 1 − N/M.

use tamp_domain::recipe::{PruningScope, PruningStage, PruningType, Stage};
use tamp_domain::results::{Candidate, Details, LayerCurve, SparsityDetails};
use tamp_engine::passes::sparsity::{self as sp, Pattern, SparseUnit};
use tamp_onnx::Model;

use super::Technique;
use super::prune::NOT_IN_CURVES;
use crate::sensitivity::{self, Ladder};
use crate::{Context, Result};

/// Magnitude sparsity: unstructured, RxC blocks or N:M.
pub struct Sparsity;

/// The sensitivity-allocated candidate's extra facts.
struct Allocation {
    seconds: f64,
    curves: Vec<LayerCurve>,
}

impl Technique for Sparsity {
    type Settings = PruningStage;
    const NAME: &'static str = "pruning (unstructured, block, N:M)";

    fn settings(stage: &Stage) -> Option<&PruningStage> {
        match stage {
            Stage::Pruning(p) if matches!(p.kind, PruningType::Unstructured | PruningType::Block) => Some(p),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        let pattern = cfg.sparsity_pattern();
        let units = sp::units(model, cfg.min_elements);
        cx.obs.begin("find prunable weights", 0);
        if units.is_empty() {
            return cx.not_applied(&format!("no Conv/Gemm/MatMul weight with ≥ {} elements", cfg.min_elements));
        }
        let total: usize = units.iter().map(|u| u.elements).sum();
        cx.obs.end(&format!("{} layers, {total} weights", units.len()));
        let label = match pattern {
            Pattern::Unstructured => "unstructured".to_owned(),
            Pattern::Block { rows, cols } => format!("block{rows}x{cols}"),
            Pattern::NOfM { n, m } => format!("{n}of{m}"),
        };
        let one = Sparsify { stage, cfg, model, units: &units, pattern, label: &label, base_coded: cx.baseline_coded_size()? };
        let t = cfg.target_sparsity;
        let mut out = Vec::new();
        match pattern {
            Pattern::NOfM { .. } => out.push(one.candidate(cx, vec![0.0; units.len()], false, "n_of_m", None)?),
            Pattern::Unstructured if cfg.scope == PruningScope::Global => out.push(one.candidate(cx, vec![t; units.len()], true, "global", None)?),
            _ => {
                out.push(one.candidate(cx, vec![t; units.len()], false, "uniform", None)?);
                if cfg.sensitivity {
                    let started = std::time::Instant::now();
                    let build = |levels: &[f64]| -> Result<Model> { Ok(sp::sparsify(model, &units, levels, pattern, false)?.0) };
                    let names: Vec<String> = units.iter().map(|u| u.node.clone()).collect();
                    let ladder = Ladder { levels: &cfg.levels, rows: cfg.sensitivity_rows, seed: cfg.seed };
                    let curves = sensitivity::curves(cx, model, ladder, &label, sensitivity::settings(cfg, NOT_IN_CURVES), &names, &build)?;
                    let removable = |u: usize, l: f64| (units[u].elements as f64 * l).round() as usize;
                    let goal: usize = (0..units.len()).map(|u| removable(u, t)).sum();
                    let alloc = sensitivity::allocate(&curves, &cfg.levels, goal, &removable);
                    let curves = units
                        .iter()
                        .zip(&curves)
                        .zip(&alloc)
                        .map(|((u, cv), &l)| LayerCurve { layer: u.node.clone(), levels: cfg.levels.clone(), metric_drop_pct: cv.clone(), chosen: l })
                        .collect();
                    let extra = Allocation { seconds: started.elapsed().as_secs_f64(), curves };
                    out.push(one.candidate(cx, alloc, false, "sensitivity", Some(extra))?);
                }
            }
        }
        Ok(out)
    }
}

/// One stage's sparsity settings, resolved.
struct Sparsify<'a> {
    stage: usize,
    cfg: &'a PruningStage,
    model: &'a Model,
    units: &'a [SparseUnit],
    pattern: Pattern,
    label: &'a str,
    base_coded: u64,
}

impl Sparsify<'_> {
    /// Zeroes the weights at per-layer `levels` (or one global threshold) and judges the result.
    fn candidate(&self, cx: &mut Context<'_, '_>, levels: Vec<f64>, global: bool, how: &str, allocation: Option<Allocation>) -> Result<Candidate> {
        let started = std::time::Instant::now();
        let (m, layers) = sp::sparsify(self.model, self.units, &levels, self.pattern, global)?;
        let pass_seconds = started.elapsed().as_secs_f64();
        let (stage, label, t) = (self.stage, self.label, self.cfg.target_sparsity);
        let id = match self.pattern {
            Pattern::NOfM { .. } => format!("s{stage}-prune-{label}"),
            _ => format!("s{stage}-prune-{label}-{how}-{t}"),
        };
        let mut c = cx.judge(&m, id, stage, "pruning")?;
        c.mode = format!("{label}/{how}");
        let zeros: usize = layers.iter().map(|l| l.zeros).sum();
        let weights: usize = self.units.iter().map(|u| u.elements).sum();
        let (allocation_seconds, sensitivity) = allocation.map_or((None, None), |a| (Some(a.seconds), Some(a.curves)));
        c.details = Some(Details::Sparsity(SparsityDetails {
            pattern: label.into(),
            layers,
            zeros,
            weights,
            achieved_sparsity: zeros as f64 / weights.max(1) as f64,
            coded_size_bytes: c.coded_size_bytes,
            baseline_coded_size_bytes: self.base_coded,
            coded_compression_ratio: cx.baseline().size_bytes as f64 / c.coded_size_bytes.max(1) as f64,
            coding: "deflate (level 6) of the ONNX file".into(),
            pass_seconds,
            allocation_seconds,
            sensitivity,
        }));
        Ok(c)
    }
}
