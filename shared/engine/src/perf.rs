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
    use super::percentile;

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 95.0) - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
