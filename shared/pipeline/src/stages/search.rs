//! The `search` stage: per-layer precision by a measured multi-objective search
//! ([`crate::search`]); its candidates are the confirmed front points.

use tamp_domain::recipe::{SearchStage, Stage};
use tamp_domain::results::Candidate;
use tamp_onnx::Model;

use super::Technique;
use crate::{Context, Result};

/// Mixed-precision search.
pub struct Search;

impl Technique for Search {
    type Settings = SearchStage;
    const NAME: &'static str = "search";

    fn settings(stage: &Stage) -> Option<&SearchStage> {
        match stage {
            Stage::Search(s) => Some(s),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, index: usize, settings: &SearchStage, input: &Model) -> Result<Vec<Candidate>> {
        crate::search::run(cx, index, settings, input)
    }
}
