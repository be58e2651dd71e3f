//! Measuring one trial artifact, wherever it runs: in the search's process, in a local
//! worker process (`tamp search-trial SPEC`), or in a Batch job. A trial is a saved model and
//! what to measure on it; its result is the task metric on the seeded subset and, for a full
//! trial, the P50 latency from the engine's latency code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tamp_data::Dataset;
use tamp_engine::EngineError;
use tamp_engine::eval;
use tamp_engine::perf::{self, LatencyConfig};
use tamp_engine::runtime::SessionConfig;

use crate::{Result, io_err};

/// What to measure on one trial artifact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialSpec {
    pub id: String,
    pub file: PathBuf,
    /// The evaluation `.npz`.
    pub data: PathBuf,
    pub rows: Vec<usize>,
    pub metric: String,
    pub output: Option<String>,
    /// Timed single-row runs for the P50 (0: metric only, a sensitivity probe).
    pub latency_runs: usize,
    /// ONNX Runtime threads for the timed runs (the evaluation's).
    pub threads: usize,
    /// Timed runs on one machine take this file lock, so concurrent trials never time each
    /// other's contention.
    pub lock: Option<PathBuf>,
}

/// One trial's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub metric: f64,
    pub latency_ms_p50: Option<f64>,
    pub sha256: String,
    pub seconds: f64,
}

/// Runs trials: in this process one after another, or fanned out.
pub trait Trials: Sync + std::fmt::Debug {
    /// Measures every spec (results in the same order), at most `workers` at once;
    /// `done(k)` after each.
    fn measure(&self, specs: &[TrialSpec], workers: usize, done: &mut dyn FnMut(usize)) -> Result<Vec<TrialResult>>;
}

/// Where a search's journal is kept beyond its machine: told after every batch of trials is
/// appended (and the front written), so a search whose container dies resumes on the next
/// attempt from what the store holds (the service's stage worker uploads it; a local
/// `tamp compress` keeps its journal on disk and needs none).
pub trait JournalSink: Sync + std::fmt::Debug {
    /// Keeps a copy of `journal` (the whole file, header first).
    fn save(&self, journal: &Path) -> Result<()>;
}

/// Trials measured in the calling process, one after another.
#[derive(Debug)]
pub struct InProcess<'d> {
    pub data: &'d Dataset,
}

impl Trials for InProcess<'_> {
    fn measure(&self, specs: &[TrialSpec], _workers: usize, done: &mut dyn FnMut(usize)) -> Result<Vec<TrialResult>> {
        specs
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let r = measure(s, Some(self.data));
                done(k + 1);
                r
            })
            .collect()
    }
}

/// Trials measured by worker processes (`<exe> search-trial SPEC.json`), at most `limit` at
/// once: the local fan-out, each trial a separate worker run as a Batch job would be.
#[derive(Debug)]
pub struct Subprocess {
    pub exe: PathBuf,
    pub limit: usize,
}

impl Trials for Subprocess {
    fn measure(&self, specs: &[TrialSpec], workers: usize, done: &mut dyn FnMut(usize)) -> Result<Vec<TrialResult>> {
        let at_once = workers.min(self.limit).max(1);
        let mut results: Vec<Option<TrialResult>> = vec![None; specs.len()];
        let mut running: Vec<(usize, Child, PathBuf)> = Vec::new();
        let mut next = 0;
        let mut finished = 0;
        while finished < specs.len() {
            while running.len() < at_once && next < specs.len() {
                let spec_path = specs[next].file.with_extension("spec.json");
                write_atomic(&spec_path, &serde_json::to_vec(&specs[next]).map_err(|e| EngineError::Config(e.to_string()))?)?;
                let child = Command::new(&self.exe)
                    .arg("search-trial")
                    .arg(&spec_path)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| EngineError::Config(format!("cannot start the trial worker {}: {e}", self.exe.display())))?;
                running.push((next, child, spec_path));
                next += 1;
            }
            let mut k = 0;
            while k < running.len() {
                let Some(status) = running[k].1.try_wait().map_err(io_err(&self.exe))? else {
                    k += 1;
                    continue;
                };
                let (i, mut child, spec_path) = running.remove(k);
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let result_path = result_path(&spec_path);
                let r: Option<TrialResult> = std::fs::read(&result_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
                let _ = std::fs::remove_file(&spec_path);
                let _ = std::fs::remove_file(&result_path);
                match (status.success(), r) {
                    (true, Some(r)) => results[i] = Some(r),
                    _ => {
                        for (_, c, _) in &mut running {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                        return Err(EngineError::Config(format!(
                            "trial {} failed in its worker ({status}): {}",
                            specs[i].id,
                            err.trim().lines().last().unwrap_or("no message")
                        )));
                    }
                }
                finished += 1;
                done(finished);
            }
            if finished < specs.len() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

fn result_path(spec: &Path) -> PathBuf {
    spec.with_extension("result.json")
}

/// `tamp search-trial SPEC`: measures the spec's trial and writes `<spec>.result.json`.
pub fn worker_main(spec_path: &Path) -> Result<()> {
    let bytes = std::fs::read(spec_path).map_err(io_err(spec_path))?;
    let spec: TrialSpec = serde_json::from_slice(&bytes).map_err(|e| EngineError::Config(format!("{}: {e}", spec_path.display())))?;
    let r = measure(&spec, None)?;
    write_atomic(&result_path(spec_path), &serde_json::to_vec(&r).map_err(|e| EngineError::Config(e.to_string()))?)
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Measures one trial: the metric on its rows (one thread, batch 64, as the sensitivity
/// probes), then the P50 under the machine's timing lock. The P50 is cached by the artifact's
/// hash, the CPU, the threads and the runtime (as speed verdicts are), so the same artifact on
/// the same kind of machine keeps one latency, whichever run or worker measured it first.
pub fn measure(spec: &TrialSpec, data: Option<&Dataset>) -> Result<TrialResult> {
    let started = Instant::now();
    let loaded;
    let data = match data {
        Some(d) => d,
        None => {
            loaded = Dataset::load(&spec.data)?;
            &loaded
        }
    };
    let bytes = std::fs::read(&spec.file).map_err(io_err(&spec.file))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    drop(bytes);
    let model = tamp_onnx::Model::load(&spec.file)?;
    let session = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
    let metric = eval::score(&model, data, &spec.rows, &spec.metric, spec.output.as_deref(), 64, &session)?;
    if !metric.is_finite() {
        return Err(EngineError::Config(format!("trial {}: the metric is {metric} (non-finite outputs)", spec.id)));
    }
    let latency_ms_p50 = if spec.latency_runs == 0 {
        None
    } else {
        let cpu = eval::cpu_info();
        let key = format!("{sha256}|{}|{:?}|{}|{}|{}", cpu.model, cpu.features, spec.threads, tamp_engine::runtime::ORT_VERSION, spec.latency_runs);
        match tamp_engine::cache::load::<f64>("search-latency", &key) {
            Some(p50) => Some(p50),
            None => {
                let _lock = spec.lock.as_deref().map(lock).transpose()?;
                let cfg = SessionConfig { intra_threads: spec.threads, ..SessionConfig::default() };
                let mut s = tamp_engine::Session::from_file(&spec.file, &cfg)?;
                let stats = perf::latency(&mut s, data, LatencyConfig { warmup: 5, runs: spec.latency_runs })?;
                tamp_engine::cache::store("search-latency", &key, &stats.p50_ms);
                Some(stats.p50_ms)
            }
        }
    };
    Ok(TrialResult { metric, latency_ms_p50, sha256, seconds: started.elapsed().as_secs_f64() })
}

/// An exclusive lock on `path` (created), held until the file is dropped.
fn lock(path: &Path) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io_err(path))?;
    f.lock().map_err(io_err(path))?;
    Ok(f)
}

/// Appends one line and syncs it, so a killed search loses at most the line being written.
pub(crate) fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(io_err(path))?;
    f.sync_data().map_err(io_err(path))
}
