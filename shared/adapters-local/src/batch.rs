//! Worker subprocesses as the batch runner (AWS Batch's part locally). Each run is
//! `<program> <args…> --job J --stage S --attempt A`, at most `concurrency` at a time, with
//! its output in `<logs>/<run name>.log`. State changes go to the queue as
//! [`Message::Batch`], like Batch → EventBridge → SQS. Exit status 0 is success, 3 is bad
//! input (not retried), anything else — a crash, a kill — is retryable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tamp_ports::{BatchRunner, Clock, Message, PortError, Queue, Result, RunStatus, StageRun, SystemClock};

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
}

impl std::fmt::Debug for ProcessRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRunner").field("program", &self.program).field("args", &self.args).finish()
    }
}

impl ProcessRunner {
    pub fn new(program: PathBuf, args: Vec<String>, logs: PathBuf, queue: Arc<dyn Queue>, concurrency: usize) -> Result<Self> {
        std::fs::create_dir_all(&logs).map_err(|e| PortError::Unavailable(format!("{}: {e}", logs.display())))?;
        Ok(Self { program, args, logs, queue, permits: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))), runs: Arc::default() })
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
        let (program, mut args, log, queue, permits, runs, run) = (self.program.clone(), self.args.clone(), self.logs.join(format!("{name}.log")), self.queue.clone(), self.permits.clone(), self.runs.clone(), run.clone());
        args.extend(["--job".into(), run.job.clone(), "--stage".into(), run.stage.to_string(), "--attempt".into(), run.attempt.to_string()]);
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            if runs.lock().map(|r| !r.contains_key(&name)).unwrap_or(true) {
                return; // cancelled while waiting for a slot
            }
            let status = async {
                let out = std::fs::File::create(&log).map_err(|e| format!("log {}: {e}", log.display()))?;
                let err = out.try_clone().map_err(|e| e.to_string())?;
                let mut child = tokio::process::Command::new(&program).args(&args).stdout(out).stderr(err).kill_on_drop(true).spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
                if let (Some(pid), Ok(mut r)) = (child.id(), runs.lock()) {
                    r.insert(name.clone(), pid);
                }
                report(&queue, &run, RunStatus::Running).await;
                child.wait().await.map_err(|e| e.to_string())
            }
            .await;
            let status = match status {
                Ok(s) if s.success() => RunStatus::Succeeded,
                Ok(s) if s.code() == Some(EXIT_BAD_INPUT) => RunStatus::Failed { reason: last_line(&log), retryable: false },
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    let how = s.signal().map_or_else(|| format!("exit status {}", s.code().unwrap_or(-1)), |sig| format!("killed by signal {sig}"));
                    RunStatus::Failed { reason: format!("worker {how}: {}", last_line(&log)), retryable: true }
                }
                Err(e) => RunStatus::Failed { reason: e, retryable: true },
            };
            report(&queue, &run, status).await;
        });
        Ok(())
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
}
