//! The accuracy-aware fallback: when a quantized candidate misses the metric constraint,
//! rank its layers by how much keeping each in float helps, then return the fewest, most
//! sensitive ones to float until the constraint holds on a seeded subset.

use std::collections::BTreeSet;

use tamp_engine::eval;
use tamp_engine::runtime::SessionConfig;
use tamp_onnx::Model;

use crate::{Context, Result, metric_drop_pct};

/// Rows the fallback scores each trial on.
const SENSITIVITY_ROWS: usize = 256;

/// Builds a candidate with the given layers kept in float.
pub type BuildFn<'m> = dyn Fn(&BTreeSet<String>) -> Result<Model> + 'm;

/// The layers to keep in float (beyond `keep`) for the metric constraint to hold, or `None`
/// when no subset short of all of them does. `input` is this stage's input model.
pub fn float_layers(cx: &mut Context<'_, '_>, input: &Model, units: &[String], keep: &BTreeSet<String>, build: &BuildFn<'_>) -> Result<Option<Vec<String>>> {
    let data = cx.job.evaluation;
    let rows = data.sample(SENSITIVITY_ROWS.min(data.rows), cx.eval_cfg.seed);
    let session = SessionConfig::default();
    let metric = cx.metric.clone();
    let output = cx.eval_cfg.output.clone();
    let reference = eval::score(cx.model, data, &rows, &metric, output.as_deref(), 32, &session)?;
    let limit = cx.job.recipe.constraints.max_metric_drop_pct;
    if !std::ptr::eq(input, cx.model) && metric_drop_pct(&metric, reference, eval::score(input, data, &rows, &metric, output.as_deref(), 32, &session)?) > limit
    {
        // An earlier stage already spent the budget: no set of float layers can help.
        cx.obs.begin("rank layer sensitivity", 0);
        cx.obs.end("skipped: this stage's input already misses max_metric_drop_pct");
        return Ok(None);
    }
    let units: Vec<&String> = units.iter().filter(|u| !keep.contains(*u)).collect();
    cx.obs.begin("rank layer sensitivity", units.len() as u64 + 1);
    let all = eval::score(&build(keep)?, data, &rows, &metric, output.as_deref(), 32, &session)?;
    let mut gains = Vec::new();
    for (i, u) in units.iter().enumerate() {
        let mut ex = keep.clone();
        ex.insert((*u).clone());
        let s = eval::score(&build(&ex)?, data, &rows, &metric, output.as_deref(), 32, &session)?;
        // Improvement from keeping `u` in float, in the metric's direction.
        gains.push((metric_drop_pct(&metric, reference, all) - metric_drop_pct(&metric, reference, s), (*u).clone()));
        cx.obs.advance(i as u64 + 1);
    }
    gains.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    cx.obs.end(&format!("{} layers ranked", gains.len()));
    cx.obs.begin("return layers to float", gains.len() as u64);
    // Up to all but one: every layer in float is the stage's input, not a candidate.
    for k in 1..gains.len() {
        let mut ex = keep.clone();
        ex.extend(gains[..k].iter().map(|g| g.1.clone()));
        let s = eval::score(&build(&ex)?, data, &rows, &metric, output.as_deref(), 32, &session)?;
        cx.obs.advance(k as u64);
        if metric_drop_pct(&metric, reference, s) <= limit {
            cx.obs.end(&format!("{k} layer(s) in float"));
            return Ok(Some(ex.into_iter().collect()));
        }
    }
    cx.obs.end("no subset of layers meets the metric constraint");
    Ok(None)
}
