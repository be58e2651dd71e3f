//! Judging and choosing: how a measured candidate compares with the baseline (metric drop,
//! compression ratio, speed-up, the constraints it misses), which candidate is best under
//! the recipe's objective, and which baselines cannot be judged against at all.

use tamp_data::Dataset;
use tamp_domain::recipe::{Constraints, Objective};
use tamp_domain::results::{Candidate, Measured};
use tamp_engine::perf::SpeedComparison;
use tamp_engine::{EngineError, metrics};

use crate::Result;

/// Minimum speed-up counted as "faster": timing noise on a shared machine is a few percent.
pub const FASTER_THAN: f64 = 1.02;

/// Relative metric drop in percent, honouring the metric's direction.
pub use tamp_domain::results::metric_drop_pct;

/// Who made a candidate and where it is.
#[derive(Debug, Clone)]
pub struct Made<'t> {
    pub id: String,
    pub stage: usize,
    pub technique: &'t str,
    /// Relative to the output folder.
    pub file: String,
    pub coded_size_bytes: u64,
}

/// A measured candidate compared with the baseline and the constraints (mode, bits and
/// details are the technique's to fill in).
pub fn judge(base: &Measured, measured: Measured, c: &Constraints, made: Made<'_>, speed: Option<&SpeedComparison>) -> Candidate {
    let metric = &measured.metric;
    let ratio = base.size_bytes as f64 / measured.size_bytes.max(1) as f64;
    let drop = metric_drop_pct(metric, base.value, measured.value);
    // With interleaved timings, "faster" means the interval excludes 1; else a P50 ratio above
    // the noise margin.
    let (speedup, faster, interval) = match speed {
        Some(s) => (s.speedup, s.faster(), Some([s.low, s.high])),
        None => {
            let s = base.latency_ms_p50 / measured.latency_ms_p50.max(1e-9);
            (s, s >= FASTER_THAN, None)
        }
    };
    let mut missed = Vec::new();
    if drop > c.max_metric_drop_pct {
        missed.push(format!("max_metric_drop_pct: {metric} dropped {drop:.2}% (limit {}%)", c.max_metric_drop_pct));
    }
    if let Some(limit) = c.max_latency_ms_p50.filter(|l| measured.latency_ms_p50 > *l) {
        missed.push(format!("max_latency_ms_p50: {:.3} ms (limit {limit} ms)", measured.latency_ms_p50));
    }
    if let Some(limit) = c.min_compression_ratio.filter(|l| ratio < *l) {
        missed.push(format!("min_compression_ratio: {ratio:.2}x (limit {limit}x)"));
    }
    let mut flags = Vec::new();
    if !faster {
        let how = match speed {
            Some(s) if s.slower() => {
                format!("slower than the baseline ({:.2}×, {:.0} % interval {:.2}–{:.2}×)", s.speedup, s.confidence * 100.0, s.low, s.high)
            }
            Some(s) => format!("no speed-up shown ({:.2}×, {:.0} % interval {:.2}–{:.2}× includes 1)", s.speedup, s.confidence * 100.0, s.low, s.high),
            None => format!("not faster than the baseline (P50 {:.3} ms vs {:.3} ms)", measured.latency_ms_p50, base.latency_ms_p50),
        };
        flags.push(format!("{how} on onnxruntime: never chosen for a latency objective"));
    }
    Candidate {
        id: made.id,
        stage: made.stage,
        technique: made.technique.into(),
        mode: String::new(),
        weights_bits: 32,
        activations_bits: 32,
        calibration: None,
        per_channel_weights: false,
        float_nodes: Vec::new(),
        file: made.file,
        measured,
        compression_ratio: ratio,
        metric_drop_pct: drop,
        speedup_p50: speedup,
        speedup_interval: interval,
        faster,
        missed,
        flags,
        coded_size_bytes: made.coded_size_bytes,
        target_isa: None,
        details: None,
        training: None,
    }
}

/// Picks the best candidate: among those meeting every constraint (and faster than the
/// baseline when the objective is latency), the best by the objective; when none does, the
/// one missing the fewest constraints, with the reason saying what it misses.
pub fn choose(candidates: &[Candidate], objective: Objective) -> Option<(usize, String)> {
    let key = |c: &Candidate| -> f64 {
        match objective {
            Objective::Latency => c.measured.latency_ms_p50,
            Objective::Size => c.measured.size_bytes as f64,
            Objective::Metric => c.metric_drop_pct,
        }
    };
    let eligible = |c: &Candidate| c.missed.is_empty() && (objective != Objective::Latency || c.faster);
    // Ties on the objective (e.g. equal sizes of sparsified models) go to the better metric.
    let best = |pool: Vec<usize>| {
        pool.into_iter()
            .min_by(|&a, &b| key(&candidates[a]).total_cmp(&key(&candidates[b])).then(candidates[a].metric_drop_pct.total_cmp(&candidates[b].metric_drop_pct)))
    };
    if let Some(i) = best((0..candidates.len()).filter(|&i| eligible(&candidates[i])).collect()) {
        return Some((i, format!("meets every constraint; best {objective:?} among {} candidate(s)", candidates.len()).to_lowercase()));
    }
    let misses = |c: &Candidate| c.missed.len() + usize::from(objective == Objective::Latency && !c.faster);
    let fewest = candidates.iter().map(misses).min()?;
    let i = best((0..candidates.len()).filter(|&i| misses(&candidates[i]) == fewest).collect())?;
    let mut what = candidates[i].missed.clone();
    if objective == Objective::Latency && !candidates[i].faster {
        what.push("not faster than the baseline".into());
    }
    Some((i, format!("no candidate meets every constraint; kept the best so far, which misses: {}", what.join("; "))))
}

/// Refuses a baseline nothing can be judged against: every row giving the same output (all-zero
/// inputs, a dead model), or a higher-is-better metric of 0 (labels from another task). A job
/// on such data once became its model's "best" on speed alone.
pub fn check_baseline(metric: &str, value: Option<f64>, outputs: &[ndarray::Array2<f32>], data: &Dataset) -> Result<()> {
    let rows: Vec<ndarray::ArrayView1<'_, f32>> = outputs.iter().flat_map(|b| b.rows().into_iter()).collect();
    if let Some(first) = rows.first()
        && rows.len() > 1
    {
        let scale = first.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let constant = rows.iter().all(|r| r.iter().zip(first.iter()).all(|(a, b)| (a - b).abs() <= 1e-6 * scale));
        if constant {
            return Err(EngineError::Config(format!(
                "the input model gives the same output for all {} evaluated rows of {}: the data cannot tell a good model from a bad one (all-zero or constant inputs? inputs not preprocessed as the model expects?); evaluate on real, varied inputs",
                rows.len(),
                data.path.display()
            )));
        }
    }
    if metrics::higher_is_better(metric) && value.is_some_and(|v| v <= 0.0) {
        return Err(EngineError::Config(format!(
            "the input model scores {metric} = 0 on {}: the labels do not match the model's outputs (another task? another class order?), so no drop can be measured; check `labels`",
            data.path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(value: f64, p50: f64, size: u64) -> Measured {
        Measured {
            metric: "top1".into(),
            value,
            latency_ms_p50: p50,
            latency_ms_p95: p50,
            throughput_b32: None,
            size_bytes: size,
            sha256: String::new(),
            eval_rows: 100,
            macs_per_sample: None,
        }
    }

    fn made(id: &str) -> Made<'static> {
        Made { id: id.into(), stage: 0, technique: "ptq", file: format!("candidates/{id}.onnx"), coded_size_bytes: 1 }
    }

    #[test]
    fn drops_follow_the_metric_direction() {
        assert!((metric_drop_pct("top1", 90.0, 81.0) - 10.0).abs() < 1e-12);
        assert!((metric_drop_pct("top1", 90.0, 99.0) + 10.0).abs() < 1e-12, "an improvement is a negative drop");
        assert!(metrics::higher_is_better("top1"));
    }

    #[test]
    fn judging_names_every_missed_constraint_and_flags_slow_candidates() {
        let base = measured(90.0, 1.0, 4000);
        let c = Constraints { max_metric_drop_pct: 1.0, max_latency_ms_p50: Some(0.5), min_compression_ratio: Some(4.0) };
        let j = judge(&base, measured(80.0, 1.0, 2000), &c, made("a"), None);
        // With interleaved timings the verdict is the interval's: 1.3× but 0.98–1.6 is not "faster".
        let cmp = |speedup, low, high| SpeedComparison { speedup, low, high, confidence: 0.96, rounds: 15, runs_per_round: 10 };
        let unsure = judge(&base, measured(89.5, 0.4, 1000), &c, made("u"), Some(&cmp(1.3, 0.98, 1.6)));
        assert!(!unsure.faster && unsure.flags.iter().any(|f| f.contains("includes 1")), "{:?}", unsure.flags);
        let sure = judge(&base, measured(89.5, 0.4, 1000), &c, made("s"), Some(&cmp(1.3, 1.1, 1.6)));
        assert!(sure.faster && sure.speedup_interval == Some([1.1, 1.6]));
        let slow = judge(&base, measured(89.5, 0.4, 1000), &c, made("w"), Some(&cmp(0.8, 0.7, 0.9)));
        assert!(slow.flags.iter().any(|f| f.contains("slower")), "{:?}", slow.flags);
        assert_eq!(j.missed.len(), 3, "{:?}", j.missed);
        assert!(j.missed[0].starts_with("max_metric_drop_pct: top1 dropped 11.11%"), "{:?}", j.missed);
        assert!(!j.faster && j.flags[0].contains("not faster"), "{:?}", j.flags);
        assert_eq!(j.compression_ratio, 2.0);
        let ok = judge(&base, measured(89.5, 0.4, 1000), &c, made("b"), None);
        assert!(ok.missed.is_empty() && ok.faster && ok.flags.is_empty(), "{ok:?}");
        assert!((ok.speedup_p50 - 2.5).abs() < 1e-12);
    }

    #[test]
    fn choose_prefers_eligible_then_the_objective_then_the_metric() {
        let base = measured(90.0, 1.0, 4000);
        let c = Constraints::default();
        let slow_small = judge(&base, measured(90.0, 1.0, 1000), &c, made("slow-small"), None);
        let fast_big = judge(&base, measured(89.5, 0.5, 3000), &c, made("fast-big"), None);
        let fast_bad = judge(&base, measured(50.0, 0.1, 500), &c, made("fast-bad"), None);
        let all = [slow_small.clone(), fast_big.clone(), fast_bad.clone()];
        assert_eq!(choose(&all, Objective::Latency).map(|c| c.0), Some(1), "slow candidates are never chosen for latency");
        assert_eq!(choose(&all, Objective::Size).map(|c| c.0), Some(0));
        assert_eq!(choose(&all, Objective::Metric).map(|c| c.0), Some(0));
        let (i, why) = choose(&[fast_bad.clone(), slow_small.clone()], Objective::Latency).unwrap();
        assert_eq!(i, 0, "one miss each: the faster one");
        assert!(why.starts_with("no candidate meets every constraint") && why.contains("max_metric_drop_pct"), "{why}");
        let mut tie = fast_big.clone();
        tie.metric_drop_pct = -1.0;
        assert_eq!(choose(&[fast_big, tie], Objective::Latency).map(|c| c.0), Some(1), "ties go to the better metric");
        assert!(choose(&[], Objective::Size).is_none());
    }
}
