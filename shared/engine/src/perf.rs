//! Speed and memory: latency percentiles with warm-up and a fixed number of runs,
//! throughput at chosen batch sizes, and the process's peak resident memory.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tamp_onnx::TensorValue;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::runtime::Session;

/// How latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencyConfig {
    pub warmup: usize,
    pub runs: usize,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        Self { warmup: 10, runs: 100 }
    }
}

/// Latency of single-sample inference, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub runs: usize,
    pub warmup: usize,
}

/// Throughput at one batch size; `skipped` says why a batch size could not run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub batch_size: usize,
    pub samples_per_s: Option<f64>,
    /// Median and 95th percentile of one batch's latency at this batch size.
    #[serde(default)]
    pub batch_p50_ms: Option<f64>,
    #[serde(default)]
    pub batch_p95_ms: Option<f64>,
    pub skipped: Option<String>,
}

/// Percentile with linear interpolation between closest ranks (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = (sorted.len() - 1) as f64 * q / 100.0;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn run_inputs(inputs: &BTreeMap<String, TensorValue>) -> Vec<(&str, &TensorValue)> {
    inputs.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

/// Times `cfg.runs` single-sample inferences after `cfg.warmup` untimed ones.
pub fn latency(session: &mut Session, data: &Dataset, cfg: LatencyConfig) -> Result<LatencyStats> {
    let sample = data.select(&[0])?;
    let inputs = run_inputs(&sample);
    for _ in 0..cfg.warmup {
        session.run(&inputs)?;
    }
    let mut times = Vec::with_capacity(cfg.runs.max(1));
    for _ in 0..cfg.runs.max(1) {
        let t = Instant::now();
        session.run(&inputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(LatencyStats {
        p50_ms: percentile(&times, 50.0),
        p95_ms: percentile(&times, 95.0),
        p99_ms: percentile(&times, 99.0),
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        runs: times.len(),
        warmup: cfg.warmup,
    })
}

/// Samples per second at each batch size (rows reused cyclically when the set is smaller).
/// Batch sizes the model's fixed batch dimension forbids are reported as skipped.
pub fn throughput(session: &mut Session, data: &Dataset, batch_sizes: &[usize], runs: usize) -> Result<Vec<Throughput>> {
    let fixed_batch = session.inputs.iter().filter_map(|s| s.shape.first().copied()).find(|&d| d > 0);
    let mut out = Vec::new();
    for &b in batch_sizes {
        if let Some(fixed) = fixed_batch.filter(|&f| f as usize != b) {
            out.push(Throughput {
                batch_size: b,
                samples_per_s: None,
                batch_p50_ms: None,
                batch_p95_ms: None,
                skipped: Some(format!("the model's batch dimension is fixed to {fixed}")),
            });
            continue;
        }
        let idx: Vec<usize> = (0..b).map(|i| i % data.rows).collect();
        let batch = data.select(&idx)?;
        let inputs = run_inputs(&batch);
        session.run(&inputs)?;
        session.run(&inputs)?;
        let n = runs.max(1);
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            session.run(&inputs)?;
            times.push(t.elapsed().as_secs_f64());
        }
        let secs: f64 = times.iter().sum();
        times.sort_by(f64::total_cmp);
        out.push(Throughput {
            batch_size: b,
            samples_per_s: Some((b * n) as f64 / secs),
            batch_p50_ms: Some(percentile(&times, 50.0) * 1e3),
            batch_p95_ms: Some(percentile(&times, 95.0) * 1e3),
            skipped: None,
        });
    }
    Ok(out)
}

/// A candidate's speed against a baseline from interleaved timings: in each round both run
/// the same single-row input `per_round` times (which goes first alternates), and the round's
/// ratio is baseline median / candidate median. Machine drift (another process, frequency
/// changes) hits both sides of a round alike, which two separate P50s do not.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpeedComparison {
    /// Median over rounds of baseline time / candidate time (> 1: the candidate is faster).
    pub speedup: f64,
    /// Distribution-free confidence interval of that median (order statistics of the rounds).
    pub low: f64,
    pub high: f64,
    /// Coverage of [low, high] (≥ 0.95).
    pub confidence: f64,
    pub rounds: usize,
    pub runs_per_round: usize,
}

impl SpeedComparison {
    /// Faster at the stated confidence: the whole interval is above 1.
    pub fn faster(&self) -> bool {
        self.low > 1.0
    }

    /// Slower at the stated confidence: the whole interval is below 1.
    pub fn slower(&self) -> bool {
        self.high < 1.0
    }
}

/// Ranks (0-based, inclusive) of the order statistics bounding a distribution-free
/// confidence interval for the median of `n` samples with coverage ≥ `level`, and the
/// coverage achieved.
pub fn median_interval_ranks(n: usize, level: f64) -> (usize, usize, f64) {
    // P(Binomial(n, 1/2) ≤ k), accumulated exactly in f64.
    let mut cdf = Vec::with_capacity(n + 1);
    let mut p = 0.5f64.powi(n as i32);
    let mut acc = 0.0;
    for k in 0..=n {
        acc += p;
        cdf.push(acc);
        p = p * (n - k) as f64 / (k + 1) as f64;
    }
    // [x_(j), x_(n−1−j)] (0-based) misses the median with probability 2·P(X ≤ j): the
    // largest j that keeps the coverage at `level`.
    let mut j = 0;
    while j + 1 < n / 2 && 1.0 - 2.0 * cdf[j + 1] >= level {
        j += 1;
    }
    (j, n - 1 - j, 1.0 - 2.0 * cdf[j])
}

/// Interleaved timing of two sessions on row 0 of `data` (see [`SpeedComparison`]).
pub fn compare(baseline: &mut Session, candidate: &mut Session, data: &Dataset, rounds: usize, per_round: usize) -> Result<SpeedComparison> {
    let sample = data.select(&[0])?;
    let inputs = run_inputs(&sample);
    for _ in 0..3 {
        baseline.run(&inputs)?;
        candidate.run(&inputs)?;
    }
    let per_round = per_round.max(3);
    let time = |s: &mut Session| -> Result<f64> {
        let mut t = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            let start = Instant::now();
            s.run(&inputs)?;
            t.push(start.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(percentile(&t, 50.0))
    };
    let rounds = rounds.max(9);
    let mut ratios = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let (b, c) = if r % 2 == 0 {
            let b = time(baseline)?;
            (b, time(candidate)?)
        } else {
            let c = time(candidate)?;
            (time(baseline)?, c)
        };
        ratios.push(b / c.max(1e-12));
    }
    ratios.sort_by(f64::total_cmp);
    let (lo, hi, confidence) = median_interval_ranks(rounds, 0.95);
    Ok(SpeedComparison { speedup: percentile(&ratios, 50.0), low: ratios[lo], high: ratios[hi], confidence, rounds, runs_per_round: per_round })
}

/// Resident memory of this process, from `/proc/self/status` (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// Peak resident set since the last [`reset_peak_rss`], in MiB.
    pub peak_rss_mb: f64,
    /// Peak minus the resident set when measurement began: what the session added, in MiB.
    pub session_peak_mb: f64,
}

fn status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find_map(|l| l.strip_prefix(key)?.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Current resident set in MiB (0 where `/proc` is unavailable).
pub fn rss_mb() -> f64 {
    status_kb("VmRSS:").unwrap_or(0) as f64 / 1024.0
}

/// Peak resident set in MiB.
pub fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0
}

/// Resets the kernel's peak-RSS counter so the next peak belongs to what runs after it.
/// Returns false where the kernel does not allow it (then the peak covers the whole process).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::{median_interval_ranks, percentile};

    #[test]
    fn median_interval_ranks_match_the_binomial_table() {
        // n = 21: [x(6), x(16)] (1-based) covers 97.3 %; n = 9: [x(2), x(8)] covers 96.1 %.
        let (lo, hi, c) = median_interval_ranks(21, 0.95);
        assert_eq!((lo, hi), (5, 15));
        assert!((c - 0.9734).abs() < 1e-3, "{c}");
        let (lo, hi, c) = median_interval_ranks(9, 0.95);
        assert_eq!((lo, hi), (1, 7));
        assert!((c - 0.9609).abs() < 1e-3, "{c}");
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
