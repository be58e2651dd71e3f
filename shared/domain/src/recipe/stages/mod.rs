//! The stages a policy lists, one file each (schema, defaults, validation), and the one list
//! that names them: [`stages!`] below generates the [`Stage`] enum, its `kind()`, the list
//! of what this build runs and the validation dispatch. Adding a stage: its file, one `mod`
//! line and one line in the list (docs/adding-a-technique.md).

mod clustering;
mod distill;
mod early_exit;
mod finetune;
mod lowrank;
mod pruning;
mod ptq;
mod search;

pub use clustering::{ClusterGranularity, ClusterStage};
pub use distill::{DepthwiseChoice, DistillStage, LayerChoice, Student};
pub use early_exit::EarlyExitStage;
pub use finetune::{BatchNormMode, Contrastive, FeatureLoss, FeatureMatch, FineTune, LearningRate, LossKind, LrSchedule, OptimizerKind};
pub use lowrank::{LowrankMethod, LowrankStage};
pub use pruning::{ImportanceCriterion, MAX_BLOCK_SIDE, PruningSchedule, PruningScope, PruningStage, PruningType, SparsityPattern};
pub use ptq::{ActivationType, Bits, Calibration, CalibrationMethod, MAX_CALIBRATION_SAMPLES, Precision, PtqMode, PtqStage, TargetIsa};
pub use search::{SearchStage, Strategy};
use serde::{Deserialize, Serialize};

use super::RecipeError;
pub use super::path::At;

/// A stage's settings: checks the values the schema accepts but Tamp cannot use.
pub trait StageSettings {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError>;
}

macro_rules! stages {
    (runs: [$($(#[$m:meta])* $variant:ident($ty:ty) = $kind:literal),* $(,)?], planned: [$($planned:ident = $pkind:literal),* $(,)?] $(,)?) => {
        /// One stage of a policy: a map with one key naming the technique.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Stage {
            $($(#[$m])* $variant($ty),)*
            // Known techniques this build does not run yet (refused by name and line); their
            // settings are kept as written so a newer Tamp reads the same recipe.
            $($planned(serde_yaml_ng::Value),)*
        }

        impl Stage {
            /// The stage keys this build runs.
            pub const AVAILABLE: &'static [&'static str] = &[$($kind),*];

            /// The key naming the technique.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Stage::$variant(_) => $kind,)*
                    $(Stage::$planned(_) => $pkind,)*
                }
            }

            pub(crate) fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
                match self {
                    $(Stage::$variant(s) => s.validate(at),)*
                    $(Stage::$planned(_) => Err(at.invalid(
                        &[],
                        format!("the `{}` stage is not available in this build of Tamp; available: {}", $pkind, Self::AVAILABLE.join(", ")),
                    )),)*
                }
            }
        }
    };
}

stages! {
    runs: [
        Ptq(PtqStage) = "ptq",
        /// PTQ whose candidates train with fake quantization (`fine_tune` on by default).
        Qat(PtqStage) = "qat",
        Pruning(PruningStage) = "pruning",
        Lowrank(LowrankStage) = "lowrank",
        #[serde(alias = "cluster")]
        Clustering(ClusterStage) = "clustering",
        /// A student trained to match a teacher (`distillation:` is the same key).
        #[serde(alias = "distillation")]
        Distill(DistillStage) = "distill",
        /// Classifier heads after chosen blocks and a confidence cascade.
        EarlyExit(EarlyExitStage) = "early_exit",
        /// Per-layer precision chosen by a measured multi-objective search.
        Search(SearchStage) = "search",
    ],
    planned: [],
}

/// `device:` in a `fine_tune` block or a `search` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The stage kind's own class ([`Stage::resources`]).
    #[default]
    Auto,
    Cpu,
    /// A GPU, or the stage fails with one clear line.
    Gpu,
}

/// The class of machine a stage attempt runs on: the Batch queue and job definition it is
/// submitted to, and locally whether it takes a GPU slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    #[default]
    Cpu,
    Gpu,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// What a stage needs, as the planner records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub device: Device,
    /// The recipe demanded the device: no GPU fails the stage instead of falling back.
    pub required: bool,
}

static DEFAULT_QAT: std::sync::OnceLock<FineTune> = std::sync::OnceLock::new();

impl Stage {
    /// The stage's `fine_tune` block, where it has one and it is on.
    pub fn fine_tune(&self) -> Option<&FineTune> {
        match self {
            Stage::Pruning(p) => p.fine_tune.as_ref(),
            Stage::Lowrank(l) => l.fine_tune.as_ref(),
            Stage::Clustering(c) => c.fine_tune.as_ref(),
            Stage::Ptq(p) => p.fine_tune.as_ref(),
            Stage::Qat(p) => Some(p.fine_tune.as_ref().unwrap_or_else(|| DEFAULT_QAT.get_or_init(FineTune::default))),
            Stage::Distill(d) => Some(&d.fine_tune),
            Stage::EarlyExit(e) => Some(&e.fine_tune),
            _ => None,
        }
    }

    /// What the stage needs. Training (a `fine_tune` block that is on, QAT, distillation,
    /// early exits) is GPU-capable; PTQ, pruning and low-rank analysis, clustering and the
    /// search (whose latency objective is ONNX Runtime's CPU provider) are CPU work. The
    /// recipe's `device:` forces either.
    pub fn resources(&self) -> Resources {
        let (class, choice) = match self {
            Stage::Search(s) => (Device::Cpu, s.device),
            _ => match self.fine_tune() {
                Some(ft) => (Device::Gpu, ft.device),
                None => (Device::Cpu, DeviceChoice::Auto),
            },
        };
        match choice {
            DeviceChoice::Auto => Resources { device: class, required: false },
            DeviceChoice::Cpu => Resources { device: Device::Cpu, required: true },
            DeviceChoice::Gpu => Resources { device: Device::Gpu, required: true },
        }
    }
}
