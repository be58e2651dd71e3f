//! The `pruning` stage: structured channels, attention heads, unstructured and block/N:M
//! sparsity, one-shot or iterative, with sensitivity-allocated levels; and its validation.

use serde::{Deserialize, Serialize};

use super::{At, FineTune, StageSettings};
use crate::recipe::RecipeError;

/// Pruning. `structured_channel` removes whole channels (the graph gets smaller and
/// faster); with `sensitivity`, per-group levels are allocated from measured sensitivity
/// curves to meet `target_sparsity` (the fraction of prunable channels removed) with the
/// least predicted metric drop, and a uniform candidate is built beside it for comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruningStage {
    #[serde(rename = "type")]
    pub kind: PruningType,
    pub target_sparsity: f64,
    pub schedule: PruningSchedule,
    /// Allocate levels from measured sensitivity curves. `true`/`false`, or a ranking name
    /// as the PRD writes it (`magnitude`, `l1`, `l2`, `bn_scale`, `combined`): on.
    #[serde(deserialize_with = "sensitivity_flag")]
    pub sensitivity: bool,
    /// Sparsity levels the sensitivity curves are measured at.
    pub levels: Vec<f64>,
    /// Evaluation rows per sensitivity point (seeded subset).
    pub sensitivity_rows: usize,
    /// Every group keeps at least this many channels.
    pub min_channels: usize,
    /// Kept channel counts are rounded to a multiple of this (SIMD-friendly widths: ONNX
    /// Runtime blocks channels by 8 or 16; odd widths can make a smaller model slower).
    pub round_to: usize,
    /// Fine-tune after pruning (between steps with `schedule: iterative`); `true` takes the
    /// defaults.
    #[serde(alias = "finetune", deserialize_with = "super::finetune::deserialize_opt", skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
    pub seed: u64,
    /// `block` pruning: `RxC` blocks (`1x4`: one output × four consecutive inputs) or `N:M`
    /// (`2:4`: two of every four consecutive inputs kept).
    pub pattern: String,
    /// `unstructured` pruning: one magnitude threshold for all layers (`global`) or the
    /// same fraction of each layer (`per_layer`, with a sensitivity-allocated candidate).
    pub scope: PruningScope,
    /// `unstructured` / `block`: layers with fewer weights stay dense.
    pub min_elements: usize,
    /// `iterative`: the number of steps to reach `target_sparsity`, evaluated between steps.
    pub steps: usize,
    /// `structured_channel`: how channels are ranked before the least important go.
    pub criterion: ImportanceCriterion,
}

/// How structured pruning ranks channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceCriterion {
    /// Filter L1 norms (FFN neurons: also the rows reading them) plus the BatchNorm scale,
    /// each normalised.
    #[default]
    Combined,
    /// Filter L1 norms (magnitude).
    L1,
    /// Filter L2 norms.
    L2,
    /// BatchNorm |γ|/√(σ²+ε) (network slimming); L1 where a group has no BatchNorm.
    BnScale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningScope {
    Global,
    PerLayer,
}

/// Largest side of a pruning block (`RxC`).
pub const MAX_BLOCK_SIDE: usize = 1024;

/// How `block` pruning zeroes weights, parsed from `pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparsityPattern {
    Unstructured,
    /// Blocks of `rows` outputs × `cols` consecutive reduction elements.
    Block {
        rows: usize,
        cols: usize,
    },
    /// Of every `m` consecutive reduction elements, the `n` largest stay.
    NOfM {
        n: usize,
        m: usize,
    },
}

impl SparsityPattern {
    /// Parses `1x4` (block) or `2:4` (N:M, N kept of every M).
    pub fn parse(s: &str) -> Option<Self> {
        if let Some((n, m)) = s.split_once(':') {
            let (n, m): (usize, usize) = (n.trim().parse().ok()?, m.trim().parse().ok()?);
            return (n >= 1 && m > n && m <= 64).then_some(Self::NOfM { n, m });
        }
        let (r, c) = s.split_once(['x', '×'])?;
        let (rows, cols): (usize, usize) = (r.trim().parse().ok()?, c.trim().parse().ok()?);
        // Bounded, so no size computed from a pattern can overflow (a 2^32 x 2^32 pattern did).
        let fits = (1..=MAX_BLOCK_SIDE).contains(&rows) && (1..=MAX_BLOCK_SIDE).contains(&cols);
        (fits && rows * cols > 1).then_some(Self::Block { rows, cols })
    }
}

impl PruningStage {
    /// The weight pattern of `unstructured` / `block` pruning.
    pub fn sparsity_pattern(&self) -> SparsityPattern {
        match self.kind {
            PruningType::Block => SparsityPattern::parse(&self.pattern).unwrap_or(SparsityPattern::Block { rows: 1, cols: 4 }),
            _ => SparsityPattern::Unstructured,
        }
    }
}

impl Default for PruningStage {
    fn default() -> Self {
        Self {
            kind: PruningType::StructuredChannel,
            target_sparsity: 0.3,
            schedule: PruningSchedule::Oneshot,
            sensitivity: true,
            levels: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            sensitivity_rows: 512,
            min_channels: 4,
            round_to: 8,
            fine_tune: None,
            seed: 0,
            pattern: "1x4".into(),
            scope: PruningScope::Global,
            min_elements: 256,
            steps: 3,
            criterion: ImportanceCriterion::Combined,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningType {
    StructuredChannel,
    Unstructured,
    Block,
    AttentionHead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruningSchedule {
    Oneshot,
    Iterative,
}

impl StageSettings for PruningStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        if self.kind == PruningType::Block && SparsityPattern::parse(&self.pattern).is_none() {
            return Err(at.invalid(&["pattern"], format!("'{}' is not a pattern; use RxC blocks (e.g. 1x4) or N:M (e.g. 2:4, N < M ≤ 64)", self.pattern)));
        }
        if self.schedule == PruningSchedule::Iterative && !(2..=100).contains(&self.steps) {
            return Err(at.invalid(&["steps"], format!("{} step(s): an iterative schedule needs 2–100", self.steps)));
        }
        if self.schedule == PruningSchedule::Iterative && self.kind != PruningType::StructuredChannel {
            return Err(at.invalid(&["schedule"], "`iterative` is available for structured_channel pruning; use `schedule: oneshot`"));
        }
        if !(self.target_sparsity > 0.0 && self.target_sparsity < 1.0) {
            return Err(at.invalid(&["target_sparsity"], format!("{} is outside (0, 1): the fraction of prunable channels to remove", self.target_sparsity)));
        }
        if self.criterion != ImportanceCriterion::Combined && self.kind != PruningType::StructuredChannel {
            return Err(at.invalid(&["criterion"], "`criterion` ranks channels for structured_channel pruning; remove it for this type"));
        }
        if let Some(ft) = &self.fine_tune {
            ft.validate(at)?;
        }
        if self.levels.is_empty() || self.levels.len() > 64 || self.levels.iter().any(|l| !(*l > 0.0 && *l < 1.0)) {
            return Err(at.invalid(&["levels"], "list sparsity levels in (0, 1), e.g. [0.1, 0.2, 0.3]"));
        }
        Ok(())
    }
}

/// `sensitivity: true | false | "magnitude" | …`.
fn sensitivity_flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Flag(bool),
        Name(String),
    }
    match Raw::deserialize(d)? {
        Raw::Flag(b) => Ok(b),
        Raw::Name(n) if ["magnitude", "l1", "l2", "bn_scale", "combined", "measured"].contains(&n.as_str()) => Ok(true),
        Raw::Name(n) => Err(serde::de::Error::custom(format!("sensitivity '{n}': use true/false, or one of magnitude, l1, l2, bn_scale, combined"))),
    }
}
