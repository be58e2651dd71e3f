//! Attention-head pruning: a uniform candidate (every block loses `target_sparsity` of its
//! heads) and, with `sensitivity`, per-block head counts from sensitivity curves removing as
//! many heads in all.

use std::collections::BTreeMap;

use tamp_domain::recipe::{PruningStage, PruningType, Stage};
use tamp_domain::results::{BlockCurve, Candidate, Details, HeadBlockLevel, HeadPruning};
use tamp_engine::passes::heads::{self, HeadGroup};
use tamp_engine::passes::prune::{keep_set, parameter_count};
use tamp_onnx::Model;

use super::Technique;
use super::prune::{Allocated, uniform_and_allocated};
use crate::{Context, Result};

/// Removes whole attention heads from BERT-style self-attention blocks.
pub struct Heads;

impl Technique for Heads {
    type Settings = PruningStage;
    const NAME: &'static str = "pruning (attention_head)";

    fn settings(stage: &Stage) -> Option<&PruningStage> {
        match stage {
            Stage::Pruning(p) if p.kind == PruningType::AttentionHead => Some(p),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, stage: usize, cfg: &PruningStage, model: &Model) -> Result<Vec<Candidate>> {
        cx.obs.begin("find self-attention blocks", 0);
        let groups = heads::find(model);
        if groups.is_empty() {
            return cx.not_applied("no self-attention block in the BERT-style pattern (Reshape → Transpose heads, Softmax, merge Reshape, output MatMul)");
        }
        let total: usize = groups.iter().map(|g| g.heads).sum();
        cx.obs.end(&format!("{} attention blocks, {total} heads", groups.len()));
        let imps: Vec<Vec<f64>> = groups.iter().map(|g| heads::importance(model, g)).collect();
        let build = |levels: &[f64]| -> Result<Model> {
            let keep: BTreeMap<usize, Vec<usize>> = groups.iter().zip(&imps).zip(levels).map(|((g, imp), &l)| (g.id, keep_set(imp, removable(g, l)))).collect();
            Ok(heads::prune(model, &groups, &keep)?)
        };
        let params_before = parameter_count(model);
        let describe = |levels: &[f64], m: &Model, pass_seconds: f64, curves: Option<&[Vec<f64>]>| {
            Details::HeadPruning(HeadPruning {
                blocks: groups
                    .iter()
                    .zip(levels)
                    .map(|(g, &l)| HeadBlockLevel { block: g.name.clone(), heads: g.heads, head_dim: g.head_dim, removed: removable(g, l) })
                    .collect(),
                removed_heads: groups.iter().zip(levels).map(|(g, &l)| removable(g, l)).sum(),
                heads: total,
                params_before,
                params_after: parameter_count(m),
                pass_seconds,
                sensitivity: curves.map(|cv| {
                    groups.iter().zip(cv).map(|(g, c)| BlockCurve { block: g.name.clone(), levels: cfg.levels.clone(), metric_drop_pct: c.clone() }).collect()
                }),
            })
        };
        let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
        let shape = Allocated { id: "prune-heads", mode: "attention_head", technique: "heads" };
        uniform_and_allocated(cx, stage, cfg, model, &shape, &names, &|g, l| removable(&groups[g], l), &build, &describe)
    }
}

/// Heads a block gives up at `level`; every block keeps at least one.
fn removable(g: &HeadGroup, level: f64) -> usize {
    ((g.heads as f64 * level).round() as usize).min(g.heads - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_keeps_a_head() {
        let g = HeadGroup { heads: 12, head_dim: 32, ..HeadGroup::default() };
        assert_eq!(removable(&g, 0.25), 3);
        assert_eq!(removable(&g, 0.99), 11);
        assert_eq!(removable(&g, 0.0), 0);
    }
}
