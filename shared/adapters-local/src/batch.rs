//! Worker subprocesses as the batch runner (AWS Batch's part locally). Each run is
//! `<program> <args…> --job J --stage S --attempt A`, at most `concurrency` at a time, with
//! its output in `<logs>/<run name>.log`. GPU stages take one of the GPU slots instead
//! (`with_gpus`: one run per GPU, pinned to it by `CUDA_VISIBLE_DEVICES`); with none, they
//! take a CPU slot and train on the CPU with a warning, as a Batch GPU stage would on a host
//! without one. CPU runs never see a GPU. State changes go to the queue as
//! [`Message::Batch`], like Batch → EventBridge → SQS. Exit status 0 is success, 3 is bad
//! input (not retried), anything else — a crash, a kill — is retryable.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tamp_ports::{BatchRunner, Clock, Device, Message, Observed, PortError, Queue, Result, RunStatus, StageRun, SystemClock};

/// Exit status a worker uses for input that will never work (no retry).
pub const EXIT_BAD_INPUT: i32 = 3;

pub struct ProcessRunner {
    program: PathBuf,
    args: Vec<String>,
    logs: PathBuf,
    queue: Arc<dyn Queue>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Run name → child pid (0 while waiting for a slot); present once submitted.
    runs: Arc<Mutex<HashMap<String, u32>>>,
    /// Run name → how it ended, for [`BatchRunner::observe`].
    ended: Arc<Mutex<HashMap<String, RunStatus>>>,
    limits: RunLimits,
    gpus: Option<GpuSlots>,
    live: Arc<Mutex<Live>>,
}

/// The runs that hold a slot now (from taking it until their worker has exited and their
/// scratch is gone), and the jobs purged: [`BatchRunner::purge`] stops a job's workers and
/// waits for them, so nothing of a deleted job is written after its deletion.
#[derive(Default)]
struct Live {
    /// Run name → (job, worker pid, 0 before it starts).
    runs: HashMap<String, (String, u32)>,
    purged: HashSet<String>,
}

/// A run's entry in [`Live`], removed when dropped.
struct Alive {
    live: Arc<Mutex<Live>>,
    name: String,
}

impl Alive {
    /// None when the run's job was purged: the run must not start.
    fn enter(live: &Arc<Mutex<Live>>, job: &str, name: &str) -> Option<Self> {
        let mut l = live.lock().ok()?;
        if l.purged.contains(job) {
            return None;
        }
        l.runs.insert(name.to_owned(), (job.to_owned(), 0));
        Some(Self { live: live.clone(), name: name.to_owned() })
    }

    /// Records the worker's pid; false when its job was purged meanwhile (stop the worker).
    fn started(&self, pid: u32) -> bool {
        let Ok(mut l) = self.live.lock() else { return false };
        let Some(entry) = l.runs.get_mut(&self.name) else { return false };
        entry.1 = pid;
        let job = entry.0.clone();
        !l.purged.contains(&job)
    }

    /// The worker has exited and been reaped: its pid is no longer its to kill.
    fn exited(&self) {
        if let Some(entry) = self.live.lock().ok().as_mut().and_then(|l| l.runs.get_mut(&self.name)) {
            entry.1 = 0;
        }
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if let Ok(mut l) = self.live.lock() {
            l.runs.remove(&self.name);
        }
    }
}

/// The GPUs runs may take, one run each.
#[derive(Clone)]
struct GpuSlots {
    permits: Arc<tokio::sync::Semaphore>,
    free: Arc<Mutex<Vec<usize>>>,
}

/// A GPU held by a run; back in the pool when dropped.
struct HeldGpu {
    index: usize,
    free: Arc<Mutex<Vec<usize>>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for HeldGpu {
    fn drop(&mut self) {
        if let Ok(mut f) = self.free.lock() {
            f.push(self.index);
        }
    }
}

/// What bounds a worker run.
#[derive(Debug, Clone, Default)]
pub struct RunLimits {
    /// Wall-clock limit of one attempt: past it the worker is killed and the stage fails
    /// (not retried: the same input would run as long again).
    pub timeout: Option<Duration>,
    /// Where workers keep per-run scratch folders (`<scratch>/<run name>`): removed when the
    /// run ends however it ends (a killed worker cannot clean up after itself).
    pub scratch: Option<PathBuf>,
    /// Extra environment for every worker (limits the worker reads).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ProcessRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRunner").field("program", &self.program).field("args", &self.args).finish()
    }
}

impl ProcessRunner {
    pub fn new(program: PathBuf, args: Vec<String>, logs: PathBuf, queue: Arc<dyn Queue>, concurrency: usize, limits: RunLimits) -> Result<Self> {
        std::fs::create_dir_all(&logs).map_err(|e| PortError::Unavailable(format!("{}: {e}", logs.display())))?;
        // Scratch left by runs of an earlier process (killed with it) is nobody's now.
        if let Some(dir) = &limits.scratch
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Self {
            program,
            args,
            logs,
            queue,
            permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            runs: Arc::default(),
            ended: Arc::default(),
            limits,
            gpus: None,
            live: Arc::default(),
        })
    }

    /// GPU stages run on these many GPUs (device indices `0..n`), one run per GPU; 0 keeps
    /// them on CPU slots.
    #[must_use]
    pub fn with_gpus(mut self, n: usize) -> Self {
        self.gpus = (n > 0).then(|| GpuSlots { permits: Arc::new(tokio::sync::Semaphore::new(n)), free: Arc::new(Mutex::new((0..n).rev().collect())) });
        self
    }
}

fn last_line(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().trim_start_matches("error: ").to_owned()
}

async fn report(queue: &Arc<dyn Queue>, run: &StageRun, status: RunStatus) {
    let msg = Message::Batch { run: run.clone(), status, at: SystemClock.now() };
    match serde_json::to_string(&msg) {
        Ok(body) => {
            if let Err(e) = queue.send(body, Duration::ZERO).await {
                tracing::error!(run = %run.name(), error = %e, "could not report a batch state change");
            }
        }
        Err(e) => tracing::error!(error = %e, "batch message does not serialize"),
    }
}

#[async_trait]
impl BatchRunner for ProcessRunner {
    async fn submit(&self, run: &StageRun) -> Result<()> {
        let name = run.name();
        {
            let mut runs = self.runs.lock().map_err(|_| PortError::Unavailable("runner lock poisoned".into()))?;
            if runs.contains_key(&name) {
                return Ok(()); // same deterministic name: already submitted
            }
            runs.insert(name.clone(), 0);
        }
        let ended = self.ended.clone();
        let (program, mut args, log, queue, permits, runs, run, limits) = (
            self.program.clone(),
            self.args.clone(),
            self.logs.join(format!("{name}.log")),
            self.queue.clone(),
            self.permits.clone(),
            self.runs.clone(),
            run.clone(),
            self.limits.clone(),
        );
        args.extend(["--job".into(), run.job.clone(), "--stage".into(), run.stage.to_string(), "--attempt".into(), run.attempt.to_string()]);
        let gpus = self.gpus.clone().filter(|_| run.device == Device::Gpu);
        let live = self.live.clone();
        tokio::spawn(async move {
            // A GPU run waits for a GPU, any other run for a CPU slot.
            let (_permit, gpu) = match gpus {
                Some(g) => {
                    let Ok(permit) = g.permits.acquire_owned().await else { return };
                    let index = g.free.lock().ok().and_then(|mut f| f.pop()).unwrap_or(0);
                    (None, Some(HeldGpu { index, free: g.free, _permit: permit }))
                }
                None => {
                    let Ok(permit) = permits.acquire_owned().await else { return };
                    (Some(permit), None)
                }
            };
            let Some(alive) = Alive::enter(&live, &run.job, &name) else { return }; // purged
            if runs.lock().map(|r| !r.contains_key(&name)).unwrap_or(true) {
                return; // cancelled while waiting for a slot
            }
            let status = async {
                let out = std::fs::File::create(&log).map_err(|e| format!("log {}: {e}", log.display()))?;
                let err = out.try_clone().map_err(|e| e.to_string())?;
                // The worker is told the server's pid: it asks the kernel to kill it when the
                // server dies (PR_SET_PDEATHSIG), so no orphan finishes unrecorded.
                let mut child = tokio::process::Command::new(&program)
                    .args(&args)
                    .env("TAMP_PARENT_PID", std::process::id().to_string())
                    .env("CUDA_VISIBLE_DEVICES", gpu.as_ref().map_or_else(String::new, |g| g.index.to_string()))
                    .envs(limits.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .stdout(out)
                    .stderr(err)
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
                if let (Some(pid), Ok(mut r)) = (child.id(), runs.lock()) {
                    r.insert(name.clone(), pid);
                }
                if !alive.started(child.id().unwrap_or(0)) {
                    let _ = child.start_kill(); // its job was purged while it started
                }
                report(&queue, &run, RunStatus::Running).await;
                match limits.timeout {
                    None => child.wait().await.map(Some).map_err(|e| e.to_string()),
                    Some(t) => match tokio::time::timeout(t, child.wait()).await {
                        Ok(r) => r.map(Some).map_err(|e| e.to_string()),
                        Err(_) => {
                            let _ = child.kill().await;
                            Ok(None)
                        }
                    },
                }
            }
            .await;
            alive.exited();
            if let Some(dir) = &limits.scratch {
                let _ = std::fs::remove_dir_all(dir.join(&name));
            }
            drop(alive);
            let status = match status {
                Ok(None) => RunStatus::Failed {
                    reason: format!(
                        "the stage ran past its wall-clock limit of {} s and was stopped; lower `evaluation.latency_runs` or the calibration samples, or raise `tamp serve --attempt-timeout`",
                        limits.timeout.map_or(0, |t| t.as_secs())
                    ),
                    retryable: false,
                },
                Ok(Some(s)) if s.success() => RunStatus::Succeeded,
                Ok(Some(s)) if s.code() == Some(EXIT_BAD_INPUT) => RunStatus::Failed { reason: last_line(&log), retryable: false },
                Ok(Some(s)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let how = s.signal().map_or_else(|| format!("exit status {}", s.code().unwrap_or(-1)), |sig| format!("killed by signal {sig}"));
                    RunStatus::Failed { reason: format!("worker {how}: {}", last_line(&log)), retryable: true }
                }
                Err(e) => RunStatus::Failed { reason: e, retryable: true },
            };
            if let Ok(mut e) = ended.lock() {
                e.insert(name.clone(), status.clone());
            }
            report(&queue, &run, status).await;
        });
        Ok(())
    }

    async fn observe(&self, run: &StageRun) -> Result<Observed> {
        let name = run.name();
        let lost = || PortError::Unavailable("runner lock poisoned".into());
        if let Some(status) = self.ended.lock().map_err(|_| lost())?.get(&name) {
            return Ok(Observed::Is(status.clone()));
        }
        Ok(match self.runs.lock().map_err(|_| lost())?.get(&name) {
            None => Observed::Absent,
            Some(0) => Observed::Queued,
            Some(_) => Observed::Is(RunStatus::Running),
        })
    }

    async fn cancel(&self, run: &StageRun) -> Result<()> {
        let pid = self.runs.lock().map_err(|_| PortError::Unavailable("runner lock poisoned".into()))?.remove(&run.name());
        if let Some(pid) = pid.filter(|p| *p > 0) {
            // SIGTERM: the worker stops between steps; its exit is reported (and ignored, the
            // job being cancelled).
            let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
        }
        Ok(())
    }

    async fn purge(&self, job: &str) -> Result<()> {
        // Its workers first: killed (a cancelled one may still be finishing a step and writing),
        // then waited for until their runs have let go of their slots and scratch.
        let lost = || PortError::Unavailable("runner lock poisoned".into());
        {
            let mut l = self.live.lock().map_err(|_| lost())?;
            l.purged.insert(job.to_owned());
            for (_, pid) in l.runs.values().filter(|(j, pid)| j == job && *pid > 0) {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.live.lock().map_err(|_| lost())?.runs.values().any(|(j, _)| j == job) {
            if std::time::Instant::now() > deadline {
                return Err(PortError::Unavailable(format!("the workers of job {job} did not stop within 60 s of being killed; delete it again")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let prefix = format!("tamp-{job}-");
        let entries = match std::fs::read_dir(&self.logs) {
            Ok(e) => e,
            Err(e) => return Err(PortError::Unavailable(format!("{}: {e}", self.logs.display()))),
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(e.path()).map_err(|err| PortError::Unavailable(format!("{}: {err}", e.path().display())))?;
            }
        }
        if let Some(dir) = &self.limits.scratch
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemoryQueue;

    /// A GPU run holds a GPU slot and sees only its GPU; a CPU run sees none; with no GPU
    /// slots a GPU run takes a CPU slot and sees none either (it trains on the CPU and says so).
    #[tokio::test]
    async fn gpu_runs_take_gpu_slots_and_cpu_runs_see_no_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let script = vec!["-c".to_owned(), "echo \"gpu=[$CUDA_VISIBLE_DEVICES]\"".to_owned()];
        let seen = |gpus: usize, device: Device, n: u32| {
            let (dir, script) = (dir.path().to_owned(), script.clone());
            async move {
                let queue = Arc::new(MemoryQueue::new(3));
                let logs = dir.join(format!("logs{gpus}"));
                let r = ProcessRunner::new("/bin/sh".into(), script, logs.clone(), queue, 1, RunLimits::default()).unwrap().with_gpus(gpus);
                let run = StageRun { job: format!("j{n}"), stage: 0, attempt: 1, device };
                r.submit(&run).await.unwrap();
                for _ in 0..200 {
                    if matches!(r.observe(&run).await.unwrap(), Observed::Is(RunStatus::Succeeded)) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                std::fs::read_to_string(logs.join(format!("{}.log", run.name()))).unwrap().trim().to_owned()
            }
        };
        assert_eq!(seen(2, Device::Gpu, 1).await, "gpu=[0]");
        assert_eq!(seen(2, Device::Cpu, 2).await, "gpu=[]");
        assert_eq!(seen(0, Device::Gpu, 3).await, "gpu=[]");
    }

    /// Purging a job stops its running worker (one that would write after a cancel) and
    /// returns only once it is gone with its log and scratch; a run of the job still waiting
    /// for a slot never starts; another job's run is left alone.
    #[tokio::test]
    async fn purge_stops_the_jobs_workers_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        // Each run marks its start, sleeps, then writes what a late worker would write.
        let script = vec!["-c".to_owned(), format!("touch {0}/started-$2-$4; sleep 3; touch {0}/late-$2-$4", out.display()), "sh".to_owned()];
        let queue = Arc::new(MemoryQueue::new(3));
        let limits = RunLimits { scratch: Some(dir.path().join("work")), ..RunLimits::default() };
        let r = ProcessRunner::new("/bin/sh".into(), script, dir.path().join("logs"), queue, 2, limits).unwrap();
        let runs = [("kept", 0), ("doomed", 0), ("doomed", 1)].map(|(job, stage)| StageRun { job: job.into(), stage, attempt: 1, device: Device::Cpu });
        for run in &runs {
            r.submit(run).await.unwrap();
        }
        for _ in 0..200 {
            if out.join("started-doomed-0").exists() && out.join("started-kept-0").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(out.join("started-doomed-0").exists(), "the first run never started");
        r.purge("doomed").await.unwrap();
        assert!(r.live.lock().unwrap().runs.values().all(|(j, _)| j != "doomed"), "purge returned with a worker of the job alive");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.contains("doomed-0") && n.starts_with("late")), "a purged worker wrote after the purge: {names:?}");
        assert!(!names.iter().any(|n| n.contains("doomed-1")), "a purged job's queued run started: {names:?}");
        assert!(names.contains(&"late-kept-0".to_owned()), "another job's run was stopped: {names:?}");
        let logs: Vec<String> = std::fs::read_dir(dir.path().join("logs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(logs.iter().all(|l| !l.contains("doomed")), "the purged job's logs were kept: {logs:?}");
    }
}
