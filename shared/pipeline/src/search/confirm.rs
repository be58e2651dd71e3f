//! Confirmation: the search's chosen points measured on the full evaluation set, judged as
//! candidates, each with its config written as a recipe.

use std::collections::BTreeMap;

use tamp_domain::recipe::{Precision, Stage};
use tamp_domain::results::Candidate;

use super::{DROP_LADDER, Kind, Record, Search, nsga, trial};
use crate::{Result, io_err};

impl Search<'_, '_, '_, '_> {
    /// Confirms the best and the other front points on the full evaluation set, judging each
    /// as a candidate, and writes each one's config as a recipe beside it.
    pub(super) fn confirm(self, index: usize) -> Result<Vec<Candidate>> {
        let mut chosen: Vec<Record> = Vec::new();
        if let Some(b) = self.best() {
            chosen.push(b.clone());
        }
        // Then the front's extremes among the points meeting the constraints (smallest,
        // fastest, most accurate), then the rest of the front by crowding distance.
        let front: Vec<Record> = self.front().into_iter().cloned().collect();
        let feasible: Vec<&Record> = front.iter().filter(|r| self.point(r).violation == 0.0).collect();
        let pick =
            |pool: &[&Record], key: &dyn Fn(&Record) -> f64| pool.iter().min_by(|a, b| key(a).total_cmp(&key(b)).then(a.n.cmp(&b.n))).map(|r| (*r).clone());
        let size = |r: &Record| r.size_bytes as f64;
        let p50 = |r: &Record| r.latency_ms_p50.unwrap_or(f64::INFINITY);
        // Next to each extreme of the whole front, the most accurate point within measurement
        // tolerance of it (1 % in size, 5 % in P50): as small (or fast) as that extreme, better.
        let all: Vec<&Record> = front.iter().collect();
        let near = |key: &dyn Fn(&Record) -> f64, tol: f64| -> Option<Record> {
            let edge = all.iter().map(|r| key(r)).fold(f64::INFINITY, f64::min);
            let close: Vec<&Record> = all.iter().copied().filter(|r| key(r) <= edge * (1.0 + tol)).collect();
            pick(&close, &|r| r.drop_pct)
        };
        // Then the operating points users ask for: the smallest point within each drop level
        // of the ladder (where single recipes with a drop budget sit).
        let ladder = DROP_LADDER.iter().filter_map(|&level| {
            let within: Vec<&Record> = all.iter().copied().filter(|r| r.drop_pct <= level).collect();
            pick(&within, &|r| r.size_bytes as f64 + r.latency_ms_p50.unwrap_or(0.0) * 1e-9)
        });
        // And for each point a single recipe makes that was measured, the most accurate front
        // point that beats it (no worse on every axis within tolerance, better on one).
        let beating = self.anchors.iter().filter_map(|a| self.find(a, Kind::Trial).filter(|r| r.pruned.is_none())).filter_map(|anchor| {
            let better: Vec<&Record> = all.iter().copied().filter(|r| r.config != anchor.config && beats(r, anchor)).collect();
            pick(&better, &|r| r.drop_pct + r.size_bytes as f64 * 1e-15)
        });
        let mut order: Vec<Record> = [pick(&feasible, &size), pick(&feasible, &p50), pick(&feasible, &|r| r.drop_pct), near(&size, 0.01), near(&p50, 0.05)]
            .into_iter()
            .flatten()
            .chain(beating)
            .chain(ladder)
            .collect();
        let points: Vec<nsga::Point> = front.iter().map(|r| self.point(r)).collect();
        let all: Vec<usize> = (0..front.len()).collect();
        let crowd = nsga::crowding(&points, &all);
        let mut rest: Vec<usize> = all;
        rest.sort_by(|&a, &b| points[a].violation.total_cmp(&points[b].violation).then(crowd[b].total_cmp(&crowd[a])).then(a.cmp(&b)));
        order.extend(rest.into_iter().map(|i| front[i].clone()));
        for r in order {
            if chosen.len() >= self.s.confirm {
                break;
            }
            if !chosen.iter().any(|c| c.config == r.config) {
                chosen.push(r);
            }
        }
        let out = self.cx.job.out_dir.join("search");
        std::fs::create_dir_all(&out).map_err(io_err(&out))?;
        let mut candidates = Vec::new();
        for (k, r) in chosen.iter().enumerate() {
            let layers = self.layers(&r.config);
            let mi = r.config.as_bytes().first().map_or(0, |c| c.saturating_sub(b'0') as usize).min(self.mixers.len() - 1);
            let model = self.mixers[mi].build(&layers)?;
            let id = format!("s{index}-search-{k}");
            let mut c = self.cx.judge(&model, id.clone(), index, "search")?;
            self.mixers[mi].describe(&mut c, &layers);
            let recipe = self.recipe_for(&layers, r);
            trial::write_atomic(&out.join(format!("{id}.yaml")), recipe.as_bytes())?;
            candidates.push(c);
        }
        // The journal and front travel with the artifacts.
        if self.dir != out {
            for f in ["journal.jsonl", "front.json"] {
                let _ = std::fs::copy(self.dir.join(f), out.join(f));
            }
        }
        Ok(candidates)
    }

    /// The chosen config as a recipe: the search's PTQ settings with `layers` set. Fed back
    /// to `tamp compress`, it builds the same bytes.
    fn recipe_for(&self, layers: &BTreeMap<String, Precision>, r: &Record) -> String {
        let mut recipe = self.cx.job.recipe.clone();
        let mut ptq = self.s.ptq.clone();
        ptq.layers = layers.clone();
        let method = r.config.as_bytes().first().map_or(0, |c| c.saturating_sub(b'0') as usize);
        if self.mixers[0].calibrated() {
            ptq.calibration.method = self.s.calibration_methods[method.min(self.s.calibration_methods.len() - 1)];
        } else {
            ptq.smooth_activations = self.s.ptq.smooth_activations || method == 1;
        }
        recipe.policy.name = format!("{}-searched", recipe.policy.name);
        recipe.policy.description = Some(format!(
            "per-layer precision found by tamp search (seed {}, trial {} of {}): {} {:.4} on {} subset rows, P50 {} ms, {} bytes",
            self.s.seed,
            r.n,
            self.trials_done(),
            self.cx.metric,
            r.metric,
            self.rows.len(),
            r.latency_ms_p50.map_or("-".into(), |l| format!("{l:.3}")),
            r.size_bytes
        ));
        recipe.policy.stages = vec![Stage::Ptq(ptq)];
        recipe.model = None;
        recipe.data = Default::default();
        format!(
            "# A searched per-layer precision config. Reproduce the chosen artifact byte for byte:\n#   tamp compress MODEL --recipe this.yaml --data CALIB.npz --eval EVAL.npz --out DIR\n{}",
            recipe.to_yaml()
        )
    }
}

/// Whether `p` beats `q` on the subset: no worse on every axis within measurement tolerance
/// (size 1 %, P50 5 %) and better on one (metric, or size or P50 beyond the tolerance).
fn beats(p: &Record, q: &Record) -> bool {
    let (lp, lq) = (p.latency_ms_p50.unwrap_or(f64::INFINITY), q.latency_ms_p50.unwrap_or(f64::INFINITY));
    let (sp, sq) = (p.size_bytes as f64, q.size_bytes as f64);
    if p.drop_pct > q.drop_pct || sp > sq * 1.01 || lp > lq * 1.05 {
        return false;
    }
    p.drop_pct < q.drop_pct || sp < sq * 0.99 || lp < lq * 0.95
}
