//! The `lowrank` stage: SVD or Tucker-2 factorisation settings and their validation.

use serde::{Deserialize, Serialize};

use super::{At, FineTune, StageSettings};
use crate::recipe::RecipeError;

/// Low-rank factorisation of MatMul weights by truncated SVD: `x·W` becomes `(x·A)·B`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LowrankStage {
    pub method: LowrankMethod,
    /// Fraction of each factorised layer's parameters to keep (rank = ratio·m·n/(m+n)).
    pub target_ratio: f64,
    /// Instead of `target_ratio`: the smallest rank keeping this fraction of Σσ².
    pub energy: Option<f64>,
    /// Layers whose smaller side is below this stay as they are.
    pub min_dim: usize,
    /// Layers with fewer parameters than this stay as they are (e.g. to take a
    /// transformer's FFN layers and leave its attention projections).
    pub min_params: usize,
    /// Only these layers (node names); empty: every eligible MatMul.
    pub layers: Vec<String>,
    /// Measure each layer's metric drop alone at each of `levels` (fraction of its
    /// parameters removed) and build a second candidate whose per-layer ranks remove as many
    /// parameters as `target_ratio` does, with the least predicted drop.
    pub sensitivity: bool,
    pub levels: Vec<f64>,
    pub sensitivity_rows: usize,
    pub seed: u64,
    /// Fine-tune after the stage's pass (`true` takes the defaults).
    #[serde(alias = "finetune", deserialize_with = "super::finetune::deserialize_opt", skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

impl Default for LowrankStage {
    fn default() -> Self {
        Self {
            method: LowrankMethod::Svd,
            target_ratio: 0.5,
            energy: None,
            min_dim: 64,
            min_params: 0,
            layers: Vec::new(),
            sensitivity: false,
            levels: vec![0.25, 0.5, 0.75],
            sensitivity_rows: 256,
            seed: 0,
            fine_tune: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowrankMethod {
    Svd,
    Tucker,
    Cp,
}

impl StageSettings for LowrankStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        if let Some(ft) = &self.fine_tune {
            ft.validate(at)?;
        }
        if self.method == LowrankMethod::Cp && self.energy.is_some() {
            return Err(at.invalid(&["energy"], "`cp` has no singular values to keep a fraction of; set its rank with `target_ratio`"));
        }
        if !(self.target_ratio > 0.0 && self.target_ratio < 1.0) {
            return Err(at.invalid(&["target_ratio"], format!("{} is outside (0, 1): the fraction of each layer's parameters to keep", self.target_ratio)));
        }
        if self.energy.is_some_and(|e| !(e > 0.0 && e <= 1.0)) {
            return Err(at.invalid(&["energy"], "must be in (0, 1]"));
        }
        if self.levels.is_empty() || self.levels.len() > 64 || self.levels.iter().any(|v| !(*v > 0.0 && *v < 1.0)) {
            return Err(at.invalid(&["levels"], "list fractions of each layer's parameters to remove in (0, 1), e.g. [0.25, 0.5, 0.75]"));
        }
        if self.sensitivity && self.energy.is_some() {
            return Err(at.invalid(&["sensitivity"], "sensitivity allocation works from `target_ratio`; remove `energy` or set `sensitivity: false`"));
        }
        Ok(())
    }
}
