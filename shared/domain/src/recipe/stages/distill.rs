//! The `distill` stage: a student trained to match a teacher on `train.npz`.
//!
//! ```yaml
//! - distill:
//!     teacher: input               # the job's model (default), or a path to teacher.onnx
//!     student: {layers: {keep_every: 2}}   # or {layers: {keep: [1, 3, 5]}}, {width: 0.5},
//!                                          # {bottleneck: 0.5} (block-internal widths only),
//!                                          # {depthwise: {}}, {file: student.onnx}, or
//!                                          # `input` (default: the model the earlier stages
//!                                          # made, which the other forms also start from)
//!     fine_tune: {epochs: 3, lr: 0.0002, temperature: 4, distill_weight: 0.7}
//! ```
//!
//! The training settings are the `fine_tune` block's (losses: KL on softened class scores,
//! cosine or MSE to an encoder's embeddings, the labels' cross-entropy mixed by
//! `distill_weight`).

use serde::{Deserialize, Serialize};

use super::{At, FineTune, StageSettings};
use crate::recipe::RecipeError;

/// Knowledge distillation from a teacher into a student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillStage {
    /// `input` (the job's model) or a path to the teacher's ONNX file (relative to the recipe).
    pub teacher: String,
    pub student: Student,
    /// Training; distillation always trains, so this block is never off.
    #[serde(alias = "finetune")]
    pub fine_tune: FineTune,
    /// Also judge the student as made, before training (the comparison row).
    pub untrained_candidate: bool,
}

impl Default for DistillStage {
    fn default() -> Self {
        Self { teacher: "input".into(), student: Student::Input, fine_tune: FineTune::default(), untrained_candidate: true }
    }
}

/// Where the student comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Student {
    /// The model the earlier stages made (the job's model when this stage is first).
    #[default]
    Input,
    /// The stage's input (the job's model when first) with fewer transformer layers,
    /// initialised from its own.
    Layers(LayerChoice),
    /// The stage's input with this fraction of each prunable channel group (Conv channels,
    /// FFN neurons) kept: structured pruning as the initialisation.
    Width(f64),
    /// The stage's input with this fraction of each block-internal width kept: the channel
    /// groups a single Conv / MatMul produces (a transformer's FFN intermediate size, the inner
    /// Convs of residual blocks). Residual streams, which several layers write, keep their width.
    Bottleneck(f64),
    /// The stage's input with each k×k Conv replaced by a depthwise k×k and a pointwise 1×1,
    /// initialised from the weight's best separable approximation.
    Depthwise(DepthwiseChoice),
    /// A user's student model (relative to the recipe); its inputs must be the teacher's, and
    /// the output trained on must have the teacher's shape.
    File(String),
}

/// Which Convs a depthwise-separable student replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DepthwiseChoice {
    /// Node names; empty: every k×k Conv with more than one input channel.
    pub layers: Vec<String>,
}

/// Which transformer layers a layer-dropped student keeps (0-based; the last stays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LayerChoice {
    /// Keep every k-th layer counting back from the last (2 on 6 layers: 1, 3, 5).
    pub keep_every: Option<usize>,
    /// Or exactly these layers.
    pub keep: Vec<usize>,
}

impl StageSettings for DistillStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        self.fine_tune.validate(at)?;
        if self.teacher.trim().is_empty() {
            return Err(at.invalid(&["teacher"], "name the teacher: `input` (the job's model) or a path to an ONNX file"));
        }
        match &self.student {
            Student::Layers(l) => match (l.keep_every, l.keep.is_empty()) {
                (Some(_), false) => return Err(at.invalid(&["student", "layers"], "give `keep_every` or `keep`, not both")),
                (None, true) => return Err(at.invalid(&["student", "layers"], "say which layers stay: `keep_every: 2` or `keep: [1, 3, 5]`")),
                (Some(k), true) if k < 2 => return Err(at.invalid(&["student", "layers", "keep_every"], format!("{k} keeps every layer: use 2 or more"))),
                _ => {}
            },
            Student::Width(w) if !(*w > 0.0 && *w < 1.0) => {
                return Err(at.invalid(&["student", "width"], format!("{w} is outside (0, 1): the fraction of channels each group keeps")));
            }
            Student::Bottleneck(w) if !(*w > 0.0 && *w < 1.0) => {
                return Err(at.invalid(&["student", "bottleneck"], format!("{w} is outside (0, 1): the fraction of each block-internal width kept")));
            }
            Student::File(f) if f.trim().is_empty() => return Err(at.invalid(&["student", "file"], "give the student's ONNX path")),
            _ => {}
        }
        Ok(())
    }
}
