//! The technique registry: one line per technique in [`REGISTRY`], in the spirit of tract's
//! optimizer pass list. A technique claims the recipe stages it runs ([`Technique::settings`])
//! and turns one into candidates ([`Technique::candidates`]); the runner hands each stage to
//! the first technique that claims it. Adding one: docs/adding-a-technique.md.

mod cluster;
mod distill;
mod early_exit;
mod heads;
mod lowrank;
mod prune;
mod ptq;
mod search;
mod sparsity;

use tamp_domain::recipe::Stage;
use tamp_domain::results::Candidate;
use tamp_engine::EngineError;
use tamp_onnx::Model;

pub(crate) use distill::preflight as distill_preflight;
pub(crate) use ptq::Mixer;
pub use ptq::resolve_mode;

use crate::{Context, Result};

/// Every technique this build runs, in the order they are asked.
pub const REGISTRY: &[&dyn Runs] = &[
    &ptq::Ptq,
    &prune::Channels,
    &heads::Heads,
    &sparsity::Sparsity,
    &lowrank::LowRank,
    &cluster::Cluster,
    &distill::Distill,
    &early_exit::EarlyExit,
    &search::Search,
];

/// One compression technique.
pub trait Technique: Sync {
    /// The recipe settings it reads.
    type Settings;
    /// Shown in errors and in the list of what this build runs.
    const NAME: &'static str;
    /// Its settings, when `stage` is one this technique runs.
    fn settings(stage: &Stage) -> Option<&Self::Settings>;
    /// Builds, measures and judges this stage's candidates, starting from `input` (the
    /// previous stage's choice, or the job's model). `index` is the stage's place in the recipe.
    fn candidates(&self, cx: &mut Context<'_, '_>, index: usize, settings: &Self::Settings, input: &Model) -> Result<Vec<Candidate>>;
}

/// The object-safe face of [`Technique`], so the registry can list them.
pub trait Runs: Sync {
    fn name(&self) -> &'static str;
    /// Whether this technique runs `stage`.
    fn claims(&self, stage: &Stage) -> bool;
    /// `None` when this technique does not run `stage`.
    fn try_run(&self, cx: &mut Context<'_, '_>, index: usize, stage: &Stage, input: &Model) -> Option<Result<Vec<Candidate>>>;
}

impl<T: Technique> Runs for T {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn claims(&self, stage: &Stage) -> bool {
        T::settings(stage).is_some()
    }

    fn try_run(&self, cx: &mut Context<'_, '_>, index: usize, stage: &Stage, input: &Model) -> Option<Result<Vec<Candidate>>> {
        T::settings(stage).map(|s| self.candidates(cx, index, s, input))
    }
}

/// Runs recipe stage `index` through the technique that claims it.
pub fn run_stage(cx: &mut Context<'_, '_>, index: usize, stage: &Stage, input: &Model) -> Result<Vec<Candidate>> {
    REGISTRY.iter().find_map(|t| t.try_run(cx, index, stage, input)).unwrap_or_else(|| {
        let available: Vec<&str> = REGISTRY.iter().map(|t| t.name()).collect();
        Err(EngineError::Config(format!("stage {index} (`{}`) is not available in this build; it runs: {}", stage.kind(), available.join(", "))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_domain::Recipe;

    #[test]
    fn every_runnable_recipe_stage_has_exactly_one_technique() {
        let stages = [
            "ptq: {}",
            "pruning: {type: structured_channel}",
            "pruning: {type: attention_head}",
            "pruning: {type: unstructured}",
            "pruning: {type: block, pattern: 2:4}",
            "lowrank: {}",
            "clustering: {}",
            "distill: {student: {width: 0.5}}",
            "early_exit: {}",
            "search: {}",
        ];
        for s in stages {
            let r = Recipe::from_yaml(&format!("policy:\n  name: p\n  stages:\n    - {s}\n")).unwrap();
            let stage = &r.policy.stages[0];
            let claims: Vec<&str> = REGISTRY.iter().filter(|t| t.claims(stage)).map(|t| t.name()).collect();
            assert_eq!(claims.len(), 1, "{s}: {claims:?}");
        }
        let mut names: Vec<&str> = REGISTRY.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len(), "names are unique");
    }
}
