//! The `early_exit` stage: classifier heads after chosen blocks, trained by distillation from
//! the model's own output (the backbone frozen), and a cascade that answers from the first
//! confident head.
//!
//! ```yaml
//! - early_exit:
//!     after: []            # values the heads read; empty: every residual block but the last
//!     thresholds: [0.5, 0.7, 0.9, 0.95, 0.99]
//!     head_channels: 32    # a 3×3 stride-2 Conv + Relu before pooling (0: linear head)
//!     head_grid: 7         # average-pool to at most 7×7 cells, then flatten (1: global pool)
//!     fine_tune: {epochs: 1, lr: 0.01}
//! ```

use serde::{Deserialize, Serialize};

use super::{At, FineTune, LearningRate, StageSettings};
use crate::recipe::RecipeError;

/// Early exits with a confidence cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyExitStage {
    /// Value names (4-D feature maps) a head reads; empty: residual block outputs but the last.
    pub after: Vec<String>,
    /// Softmax-probability thresholds to measure; the cascade takes the fastest one that meets
    /// the metric constraint.
    pub thresholds: Vec<f64>,
    /// Channels of a 3×3 stride-2 Conv + Relu each head runs before pooling (0: a linear head
    /// on the pooled features).
    pub head_channels: usize,
    /// The head's linear layer reads the feature map average-pooled to at most `head_grid` ×
    /// `head_grid` cells, flattened: where things are in the image matters to a classifier
    /// this early, and a global pool (`1`) throws that away. ResNet-8's stem: 88.6 % top-1
    /// with the 7×7 grid against 73.7 % with the global pool (the same 3-epoch training).
    pub head_grid: usize,
    /// Training of the heads (the backbone stays frozen).
    #[serde(alias = "finetune")]
    pub fine_tune: FineTune,
}

impl Default for EarlyExitStage {
    fn default() -> Self {
        Self {
            after: Vec::new(),
            thresholds: vec![0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999],
            head_channels: 0,
            head_grid: 7,
            fine_tune: FineTune { lr: LearningRate::Value(0.01), ..FineTune::default() },
        }
    }
}

impl StageSettings for EarlyExitStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        self.fine_tune.validate(at)?;
        if self.thresholds.is_empty() || self.thresholds.len() > 1000 || self.thresholds.iter().any(|t| !(*t > 0.0 && *t <= 1.0)) {
            return Err(at.invalid(&["thresholds"], "list probabilities in (0, 1], e.g. [0.5, 0.9, 0.99]"));
        }
        if self.head_channels > 4096 {
            return Err(at.invalid(&["head_channels"], "at most 4096"));
        }
        if !(1..=64).contains(&self.head_grid) {
            return Err(at.invalid(&["head_grid"], "cells per side of the pooled feature map, 1 (a global pool) to 64"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::recipe::{Recipe, Stage};

    fn recipe(stage: &str) -> String {
        format!("policy:\n  name: e\n  stages:\n    - early_exit: {stage}\n")
    }

    /// The grid defaults to 7×7 cells; 1 (a global pool) to 64 are taken, and anything else is
    /// refused at its key, with the range.
    #[test]
    fn the_head_grid_defaults_to_seven_and_is_bounded() {
        let r = Recipe::from_yaml(&recipe("{head_channels: 32}")).unwrap();
        let Stage::EarlyExit(e) = &r.policy.stages[0] else { panic!("{:?}", r.policy.stages) };
        assert_eq!((e.head_grid, e.head_channels), (7, 32));
        assert!(Recipe::from_yaml(&recipe("{head_grid: 1}")).is_ok());
        for bad in [0, 65] {
            let err = Recipe::from_yaml(&recipe(&format!("{{head_grid: {bad}}}"))).unwrap_err().to_string();
            assert!(err.contains("head_grid") && err.contains("1 (a global pool) to 64"), "{err}");
        }
    }
}
