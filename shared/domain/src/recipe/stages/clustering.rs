//! The `clustering` (alias `cluster`) stage: k-means weight clustering settings and their
//! validation.

use serde::{Deserialize, Serialize};

use super::{At, FineTune, StageSettings};
use crate::recipe::RecipeError;

/// Weight clustering: each layer's weights become indices into a small codebook (k-means,
/// k-means++ initialisation, seeded), stored as uint8 indices + float codebook and rebuilt
/// with standard ops (ONNX Runtime folds them at load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterStage {
    /// Codebook size per group: 2..=256 (16, 64, 256 are the usual ones).
    pub clusters: u32,
    pub granularity: ClusterGranularity,
    /// Layers with fewer weights than this stay as they are.
    pub min_elements: usize,
    pub seed: u64,
    /// Lloyd iterations at most.
    pub iterations: u32,
    /// Fold BatchNorm into the preceding Conv/Gemm first (so the clustered weights carry it).
    pub fold_batch_norm: bool,
    /// Fine-tune after the stage's pass (`true` takes the defaults).
    #[serde(alias = "finetune", deserialize_with = "super::finetune::deserialize_opt", skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

impl Default for ClusterStage {
    fn default() -> Self {
        Self { clusters: 16, granularity: ClusterGranularity::PerLayer, min_elements: 256, seed: 0, iterations: 30, fold_batch_norm: true, fine_tune: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterGranularity {
    /// One codebook per layer.
    PerLayer,
    /// One codebook per output channel.
    PerChannel,
}

impl StageSettings for ClusterStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        if let Some(ft) = &self.fine_tune {
            ft.validate(at)?;
        }
        if !(2..=256).contains(&self.clusters) {
            return Err(at.invalid(&["clusters"], format!("{} is outside 2..=256 (indices are stored as uint8)", self.clusters)));
        }
        if !(1..=10_000).contains(&self.iterations) {
            return Err(at.invalid(&["iterations"], format!("{} is outside 1..=10000", self.iterations)));
        }
        Ok(())
    }
}
