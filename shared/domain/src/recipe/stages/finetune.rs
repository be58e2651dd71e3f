//! The `fine_tune` block a stage may carry: training after the stage's pass (pruning,
//! sparsity, low-rank, clustering) on `train.npz`, with what the stage made kept intact.
//! `fine_tune: true` takes every default; `finetune:` (the PRD's spelling) is the same key.

use serde::{Deserialize, Deserializer, Serialize};

use super::At;
use crate::recipe::RecipeError;

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineTune {
    /// Passes over the training rows (fractions allowed); `steps` wins when set.
    pub epochs: f64,
    pub steps: Option<usize>,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// A number, or `auto`: a seeded successive-halving search over learning rates on a
    /// held-back slice of the training rows (never the evaluation set).
    pub lr: LearningRate,
    /// SGD momentum.
    pub momentum: f64,
    pub schedule: LrSchedule,
    /// Linear warm-up, in steps.
    pub warmup_steps: usize,
    /// `step` schedule: the learning rate is multiplied by `decay` every `decay_every` steps.
    pub decay_every: usize,
    pub decay: f64,
    /// Decoupled weight decay (AdamW) or L2 (SGD), on weights of rank ≥ 2 only.
    pub weight_decay: f64,
    pub seed: u64,
    pub loss: LossKind,
    /// Softening temperature of the distillation loss.
    pub temperature: f64,
    /// With labels, the weight of distillation from the input model (0: labels only).
    pub distill_weight: f64,
    /// Train on at most this many rows of `train.npz` (a seeded subset).
    pub max_rows: Option<usize>,
    /// BatchNormalization uses batch statistics while training (`train`), or keeps its
    /// running statistics (`frozen`).
    pub batch_norm: BatchNormMode,
    /// QAT: activation quantization scales train too (LSQ style); else they stay as
    /// calibrated.
    pub learn_scales: bool,
    /// Feature distillation (FitNets): intermediate values of the student matched to the
    /// teacher's, through a learned linear projection when their widths differ.
    pub features: Vec<FeatureMatch>,
    /// Attention transfer: attention probability maps (a Softmax's output, `[N, heads, S, S]`;
    /// heads averaged when the counts differ) matched by KL divergence, row by row.
    pub attention: Vec<FeatureMatch>,
    /// Contrastive distillation for encoders: in-batch InfoNCE between the student's and the
    /// teacher's outputs (each row's own teacher embedding is its positive, the batch's
    /// others its negatives).
    pub contrastive: Option<Contrastive>,
    /// Where the training runs: `auto` (a GPU where the runner has one, else the CPU with a
    /// warning in the stage's record), `cpu`, or `gpu` (no GPU fails the stage).
    pub device: super::DeviceChoice,
}

/// One intermediate value of the student matched to one of the teacher's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureMatch {
    /// The value's name in the student graph (a node output).
    pub student: String,
    /// Its counterpart in the teacher (default: the same name, as in a layer-dropped student).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// The term's weight in the total loss.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub loss: FeatureLoss,
}

fn one() -> f64 {
    1.0
}

/// How a feature pair is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureLoss {
    /// Mean squared error after the projection (FitNets).
    #[default]
    Mse,
    /// 1 − cosine per position, after the projection.
    Cosine,
    /// KL divergence on class scores softened at the block's `temperature`: another output
    /// head of a multi-task model (each head listed with its own loss and weight).
    Kl,
    /// MiniLM's value relation: each value's scaled dot-product self-attention
    /// (`softmax(X Xᵀ/√d)` over a sequence, `[N, S, D]`) matched by KL; widths may differ
    /// without a projection.
    Relation,
}

/// In-batch InfoNCE between student and teacher outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Contrastive {
    pub weight: f64,
    /// Softmax temperature of the similarity logits.
    pub temperature: f64,
}

impl Default for Contrastive {
    fn default() -> Self {
        Self { weight: 1.0, temperature: 0.05 }
    }
}

impl Default for FineTune {
    fn default() -> Self {
        Self {
            device: super::DeviceChoice::Auto,
            epochs: 1.0,
            steps: None,
            batch_size: 64,
            optimizer: OptimizerKind::Adamw,
            lr: LearningRate::Value(1e-3),
            momentum: 0.9,
            schedule: LrSchedule::Cosine,
            warmup_steps: 0,
            decay_every: 1000,
            decay: 0.1,
            weight_decay: 1e-4,
            seed: 0,
            loss: LossKind::Auto,
            temperature: 2.0,
            distill_weight: 0.5,
            max_rows: None,
            batch_norm: BatchNormMode::Train,
            learn_scales: false,
            features: Vec::new(),
            attention: Vec::new(),
            contrastive: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Cosine,
    Step,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormMode {
    Train,
    Frozen,
}

/// What training minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Class labels in `train.npz`: cross-entropy, plus `distill_weight` of distillation
    /// from the input model. No labels: distillation only (KL on class scores, cosine on
    /// embeddings).
    Auto,
    CrossEntropy,
    Mse,
    Cosine,
    /// KL divergence to the input model's softened outputs.
    Kl,
}

/// A learning rate, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LearningRate {
    Value(f64),
    Auto,
}

impl Serialize for LearningRate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => s.serialize_f64(*v),
            Self::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for LearningRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(v) => Ok(Self::Value(v)),
            Raw::S(s) if s == "auto" => Ok(Self::Auto),
            Raw::S(s) => s.parse().map(Self::Value).map_err(|_| serde::de::Error::custom(format!("lr '{s}' is neither a number nor `auto`"))),
        }
    }
}

/// `fine_tune: true | false | {…}` (and `finetune:`): `None` when off. A map is read as
/// [`FineTune`] itself, so an unknown key or a bad value is reported as such.
pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FineTune>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<FineTune>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true, false or a map of fine-tuning settings")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(FineTune::default))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            FineTune::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

impl FineTune {
    pub fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        let key = |k: &'static str| -> Vec<&'static str> { vec!["fine_tune", k] };
        if !(self.epochs > 0.0 && self.epochs <= 1000.0) && self.steps.is_none() {
            return Err(at.invalid(&key("epochs"), format!("{} epochs: use a number in (0, 1000], or set `steps`", self.epochs)));
        }
        if self.steps == Some(0) {
            return Err(at.invalid(&key("steps"), "0 steps trains nothing; remove `steps` or set it ≥ 1"));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return Err(at.invalid(&key("batch_size"), format!("{} rows per batch: use 1–4096", self.batch_size)));
        }
        if let LearningRate::Value(lr) = self.lr
            && !(lr > 0.0 && lr < 10.0)
        {
            return Err(at.invalid(&key("lr"), format!("{lr} is not a learning rate in (0, 10); or use `auto`")));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(at.invalid(&key("momentum"), "momentum is in [0, 1)"));
        }
        if !(0.0..=1.0).contains(&self.weight_decay) {
            return Err(at.invalid(&key("weight_decay"), "weight decay is in [0, 1]"));
        }
        if !(0.0..=1.0).contains(&self.distill_weight) {
            return Err(at.invalid(&key("distill_weight"), "the distillation weight is in [0, 1]"));
        }
        if !(self.temperature > 0.0 && self.temperature <= 100.0) {
            return Err(at.invalid(&key("temperature"), "the temperature is in (0, 100]"));
        }
        if self.schedule == LrSchedule::Step && (self.decay_every == 0 || !(self.decay > 0.0 && self.decay <= 1.0)) {
            return Err(at.invalid(&key("decay"), "a step schedule needs `decay_every` ≥ 1 and `decay` in (0, 1]"));
        }
        if self.max_rows == Some(0) {
            return Err(at.invalid(&key("max_rows"), "0 rows trains nothing"));
        }
        for (k, list) in [("features", &self.features), ("attention", &self.attention)] {
            for f in list {
                if f.student.trim().is_empty() || f.teacher.as_deref().is_some_and(|t| t.trim().is_empty()) {
                    return Err(at.invalid(&key(k), "name the value in the student (`student:`) and, when it differs, in the teacher (`teacher:`)"));
                }
                if !(f.weight.is_finite() && f.weight >= 0.0) {
                    return Err(at.invalid(&key(k), format!("'{}': weight {} is not a number ≥ 0", f.student, f.weight)));
                }
            }
        }
        if let Some(c) = &self.contrastive
            && !(c.weight.is_finite() && c.weight >= 0.0 && c.temperature > 0.0 && c.temperature <= 10.0)
        {
            return Err(at.invalid(&key("contrastive"), "`weight` is a number ≥ 0 and `temperature` is in (0, 10]"));
        }
        Ok(())
    }
}
