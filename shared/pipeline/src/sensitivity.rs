//! Sensitivity curves and allocation, shared by every technique that spends a budget across
//! units (channel groups, attention blocks, layers): the metric drop of changing each unit
//! alone at each level, measured on a seeded subset on two threads and cached; then the
//! greedy allocation that meets a goal with the least predicted drop.
//!
//! The cache file is named by a hash of everything that changes a curve: the technique, the
//! metric, the model and data hashes, the rows and seed, and the stage's settings minus the
//! ones that only decide what is done with the curves (target, levels, schedule).

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tamp_engine::EngineError;
use tamp_engine::eval;
use tamp_engine::runtime::SessionConfig;
use tamp_onnx::Model;

use tamp_engine::cache;

use crate::{Context, Result, metric_drop_pct};

/// Bumped when the way curves are measured changes, so old cache files are not read.
const CURVE_FORMAT: u32 = 2;

/// The levels to measure and the rows to measure them on.
#[derive(Debug, Clone, Copy)]
pub struct Ladder<'a> {
    pub levels: &'a [f64],
    pub rows: usize,
    pub seed: u64,
}

/// Everything a curve depends on; its hash names the cache file.
#[derive(Debug, Clone, Serialize)]
pub struct CurveKey<'a> {
    /// The technique and unit kind (`channels`, `heads`, `unstructured`, `svd`, …).
    pub technique: &'a str,
    pub metric: &'a str,
    pub model_sha256: &'a str,
    pub data_sha256: &'a str,
    pub rows: usize,
    pub seed: u64,
    /// The stage's settings that change how a unit is built at a level ([`settings`]).
    pub settings: serde_json::Value,
}

impl CurveKey<'_> {
    /// The cache file's name (without `.json`).
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(&(CURVE_FORMAT, self)).unwrap_or_default();
        hex::encode(&Sha256::digest(text.as_bytes())[..16])
    }
}

/// A stage's settings as cache-key material, without the keys in `ignore` (those that decide
/// what is done with the curves, not what a curve is).
pub fn settings<T: Serialize>(stage: &T, ignore: &[&str]) -> serde_json::Value {
    let mut v = serde_json::to_value(stage).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for k in ignore {
            map.remove(*k);
        }
    }
    v
}

/// A model with each unit changed at the given level (0: unchanged).
pub type Build<'m> = dyn Fn(&[f64]) -> Result<Model> + Sync + 'm;

/// Metric drop (percent) of changing each unit alone at each level of the ladder, per unit.
pub fn curves(
    cx: &mut Context<'_, '_>,
    model: &Model,
    ladder: Ladder<'_>,
    technique: &str,
    settings: serde_json::Value,
    names: &[String],
    build: &Build<'_>,
) -> Result<Vec<Vec<f64>>> {
    let data = cx.job.evaluation;
    let rows = data.sample(ladder.rows.min(data.rows), ladder.seed);
    let session = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
    let output = cx.eval_cfg.output.clone();
    let reference = eval::score(model, data, &rows, &cx.metric, output.as_deref(), 64, &session)?;
    let model_sha = model.sha256()?;
    // The scored output is part of what a curve measures.
    let metric_key = output.as_ref().map_or_else(|| cx.metric.clone(), |o| format!("{}@{o}", cx.metric));
    let key = CurveKey { technique, metric: &metric_key, model_sha256: &model_sha, data_sha256: &data.sha256, rows: rows.len(), seed: ladder.seed, settings };
    let cache_dir = cache::subdir("sensitivity");
    let cache_path = cache_dir.as_ref().map(|d| d.join(format!("{}.json", key.digest())));
    let mut cached: BTreeMap<String, f64> =
        cache_path.as_ref().and_then(|p| std::fs::read(p).ok()).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let entry = |g: usize, level: f64| format!("{}@{level}", names[g]);
    let points: Vec<(usize, usize)> = (0..names.len()).flat_map(|g| (0..ladder.levels.len()).map(move |l| (g, l))).collect();
    let todo: Vec<(usize, usize)> = points.iter().copied().filter(|&(g, l)| !cached.contains_key(&entry(g, ladder.levels[l]))).collect();
    cx.obs.begin("sensitivity curves", todo.len() as u64);
    let metric = cx.metric.clone();
    let results: Vec<Result<(usize, usize, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(todo.len().div_ceil(2).max(1))
            .map(|chunk| {
                let (metric, rows, session, output) = (&metric, &rows, &session, output.as_deref());
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(g, l)| {
                            let mut levels = vec![0.0; names.len()];
                            levels[g] = ladder.levels[l];
                            let s = eval::score(&build(&levels)?, data, rows, metric, output, 64, session)?;
                            Ok((g, l, metric_drop_pct(metric, reference, s)))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec![Err(EngineError::Config("a sensitivity worker panicked".into()))])).collect()
    });
    for r in results {
        let (g, l, drop) = r?;
        cached.insert(entry(g, ladder.levels[l]), drop);
    }
    let whereto = match (&cache_dir, &cache_path) {
        (Some(dir), Some(path))
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(path, serde_json::to_vec_pretty(&cached).unwrap_or_default()).is_ok() =>
        {
            format!("; cached in {}", path.display())
        }
        _ => String::new(),
    };
    cx.obs.end(&format!("{} points ({} cached){whereto}", points.len(), points.len() - todo.len()));
    Ok((0..names.len()).map(|g| ladder.levels.iter().map(|&l| cached[&entry(g, l)]).collect()).collect())
}

/// Per-unit levels removing at least `goal` channels (or weights) in all, greedily taking
/// the step with the smallest predicted metric drop per removed unit of work;
/// `removable(unit, level)` is what a unit removes at a level.
pub fn allocate(curves: &[Vec<f64>], levels: &[f64], goal: usize, removable: &dyn Fn(usize, f64) -> usize) -> Vec<f64> {
    let mut at: Vec<Option<usize>> = vec![None; curves.len()]; // index into levels
    let level = |a: Option<usize>| a.map_or(0.0, |i| levels[i]);
    let drop = |g: usize, a: Option<usize>| a.map_or(0.0, |i| curves[g][i].max(0.0));
    loop {
        let removed: usize = at.iter().enumerate().map(|(g, a)| removable(g, level(*a))).sum();
        if removed >= goal {
            break;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for (g, &here) in at.iter().enumerate() {
            // The next level that removes more (rounding can make some steps empty).
            let now = removable(g, level(here));
            let Some(next) = (here.map_or(0, |i| i + 1)..levels.len()).find(|&j| removable(g, levels[j]) > now) else { continue };
            let gained = removable(g, levels[next]) - now;
            let cost = (drop(g, Some(next)) - drop(g, here)).max(0.0) / gained as f64;
            if best.is_none_or(|(c, _, _)| cost < c) {
                best = Some((cost, g, next));
            }
        }
        match best {
            Some((_, g, next)) => at[g] = Some(next),
            None => break,
        }
    }
    at.iter().map(|a| level(*a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_domain::recipe::PruningStage;

    #[test]
    fn allocation_spends_the_budget_where_it_hurts_least() {
        // Unit 0 is fragile, unit 1 robust; each removes 10 per 0.1 of level.
        let levels = [0.1, 0.2, 0.3];
        let curves = vec![vec![5.0, 20.0, 50.0], vec![0.1, 0.2, 0.5]];
        let removable = |_: usize, l: f64| (l * 100.0).round() as usize;
        assert_eq!(allocate(&curves, &levels, 30, &removable), vec![0.0, 0.3]);
        assert_eq!(allocate(&curves, &levels, 40, &removable), vec![0.1, 0.3]);
        // A goal out of reach stops at the top of every ladder.
        assert_eq!(allocate(&curves, &levels, 1000, &removable), vec![0.3, 0.3]);
        assert_eq!(allocate(&curves, &levels, 0, &removable), vec![0.0, 0.0]);
    }

    const IGNORED: &[&str] = &["target_sparsity", "levels", "sensitivity"];

    fn key(stage: &PruningStage, metric: &'static str) -> String {
        CurveKey { technique: "channels", metric, model_sha256: "m", data_sha256: "d", rows: 256, seed: 0, settings: settings(stage, IGNORED) }.digest()
    }

    #[test]
    fn every_setting_that_changes_a_curve_changes_the_key() {
        let base = PruningStage::default();
        let k = key(&base, "top1");
        assert_eq!(k, key(&base.clone(), "top1"), "the key is stable");
        assert_ne!(k, key(&base, "top5"), "the metric");
        assert_ne!(k, key(&PruningStage { round_to: base.round_to + 7, ..base.clone() }, "top1"), "round_to");
        assert_ne!(k, key(&PruningStage { min_channels: base.min_channels + 3, ..base.clone() }, "top1"), "min_channels");
        assert_ne!(k, key(&PruningStage { min_elements: base.min_elements + 1, ..base.clone() }, "top1"), "min_elements");
        // What is done with the curves does not change them.
        assert_eq!(k, key(&PruningStage { target_sparsity: 0.77, levels: vec![0.5], ..base.clone() }, "top1"));
        let other = |f: &dyn Fn(&mut CurveKey<'_>)| {
            let mut c =
                CurveKey { technique: "channels", metric: "top1", model_sha256: "m", data_sha256: "d", rows: 256, seed: 0, settings: settings(&base, IGNORED) };
            f(&mut c);
            c.digest()
        };
        assert_eq!(other(&|_| {}), k);
        for change in [
            &(|c: &mut CurveKey<'_>| c.technique = "heads") as &dyn Fn(&mut CurveKey<'_>),
            &|c| c.model_sha256 = "m2",
            &|c| c.data_sha256 = "d2",
            &|c| c.rows = 128,
            &|c| c.seed = 1,
        ] {
            assert_ne!(other(change), k);
        }
    }
}
