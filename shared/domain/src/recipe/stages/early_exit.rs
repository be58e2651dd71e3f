//! The `early_exit` stage: classifier heads after chosen blocks, trained by distillation from
//! the model's own output (the backbone frozen), and a cascade that answers from the first
//! confident head.
//!
//! ```yaml
//! - early_exit:
//!     after: []            # values the heads read; empty: every residual block but the last
//!     thresholds: [0.5, 0.7, 0.9, 0.95, 0.99]
//!     head_channels: 32    # a 3×3 stride-2 Conv + Relu before pooling (0: linear head)
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
        Ok(())
    }
}
