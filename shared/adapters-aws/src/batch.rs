//! AWS Batch as the batch runner. A stage attempt is one Batch job on the queue and job
//! definition of its machine class (CPU on Fargate, GPU on EC2; [`StageRun::device`]), named
//! `tamp-<job>-s<stage>-a<attempt>` with our ids in `parameters`; because `SubmitJob` has no
//! idempotency token, `submit` first looks the name up on the queue and starts nothing if a
//! job of that name is already there (and not failed). `cancel` cancels queued jobs and
//! terminates running ones. State changes come back as EventBridge "Batch Job State Change"
//! events; [`message_from_state_change`] turns one into the orchestrator's queue message.

use async_trait::async_trait;
use aws_sdk_batch::types::{ContainerOverrides, JobStatus, JobSummary, KeyValuesPair};
use tamp_ports::{BatchRunner, Device, Message, Observed, PortError, Result, RunStatus, StageRun};

/// Exit status a worker uses for input that will never work (no retry); the local runner's
/// contract, kept by the container too.
pub const EXIT_BAD_INPUT: i64 = 3;

#[derive(Debug, Clone)]
pub struct AwsBatchRunner {
    client: aws_sdk_batch::Client,
    cpu: Lane,
    /// The GPU queue and job definition; without them GPU stages go to the CPU queue (and
    /// train there, with the worker's warning).
    gpu: Option<Lane>,
}

/// A job queue and the job definition submitted to it.
#[derive(Debug, Clone)]
struct Lane {
    queue: String,
    definition: String,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Unavailable(format!("batch {what}: {e}"))
}

impl AwsBatchRunner {
    /// Batch-level retries (infrastructure failures only) are the job definition's
    /// `retry_strategy` with its `evaluate_on_exit` rules; `SubmitJob` sends none, because one
    /// sent there replaces the definition's and with it the rule that exit 3 (bad input) is
    /// never retried. Tamp's own stage retries are new submissions with new attempt numbers.
    pub fn new(config: &aws_config::SdkConfig, queue: impl Into<String>, definition: impl Into<String>) -> Self {
        Self { client: aws_sdk_batch::Client::new(config), cpu: Lane { queue: queue.into(), definition: definition.into() }, gpu: None }
    }

    /// GPU stages go to this queue and job definition.
    #[must_use]
    pub fn with_gpu(mut self, queue: impl Into<String>, definition: impl Into<String>) -> Self {
        self.gpu = Some(Lane { queue: queue.into(), definition: definition.into() });
        self
    }

    fn lane(&self, device: Device) -> &Lane {
        match (device, &self.gpu) {
            (Device::Gpu, Some(gpu)) => gpu,
            _ => &self.cpu,
        }
    }

    /// The queue a run of this machine class is submitted to.
    pub fn queue_for(&self, device: Device) -> &str {
        &self.lane(device).queue
    }

    /// Jobs on the queue with this run's name: (id, status).
    pub async fn find(&self, run: &StageRun) -> Result<Vec<(String, JobStatus)>> {
        Ok(self
            .summaries(run)
            .await?
            .iter()
            .map(|j| (j.job_id().unwrap_or_default().to_owned(), j.status().cloned().unwrap_or(JobStatus::Submitted)))
            .collect())
    }

    /// Submits a job named `name` unless one of that name is already on the queue and not
    /// failed (`SubmitJob` has no idempotency token), with `job` and `params` in `parameters`.
    async fn submit_once(&self, device: Device, name: &str, job: &str, params: &[(&str, &str)], command: &[&str]) -> Result<()> {
        if self.named(device, name).await?.iter().any(|j| j.status() != Some(&JobStatus::Failed)) {
            return Ok(()); // already submitted under this deterministic name
        }
        let lane = self.lane(device);
        let mut req = self.client.submit_job().job_name(name).job_queue(&lane.queue).job_definition(&lane.definition).parameters("job", job);
        for (k, v) in params {
            req = req.parameters(*k, *v);
        }
        req.tags("tamp:job", job)
            // The module lets this stack cancel and terminate only jobs with its queue's tag.
            .tags("tamp:queue", &lane.queue)
            .container_overrides(ContainerOverrides::builder().set_command(Some(command.iter().map(|c| (*c).to_owned()).collect())).build())
            .send()
            .await
            .map_err(|e| unavailable("submit", e.into_service_error()))?;
        Ok(())
    }

    async fn summaries(&self, run: &StageRun) -> Result<Vec<JobSummary>> {
        self.named(run.device, &run.name()).await
    }

    async fn named(&self, device: Device, name: &str) -> Result<Vec<JobSummary>> {
        let filter = KeyValuesPair::builder().name("JOB_NAME").values(name).build();
        let mut out = Vec::new();
        let mut pages = self.client.list_jobs().job_queue(&self.lane(device).queue).filters(filter).into_paginator().send();
        while let Some(page) = pages.next().await {
            out.extend(page.map_err(|e| unavailable("list", e.into_service_error()))?.job_summary_list().iter().cloned());
        }
        Ok(out)
    }
}

#[async_trait]
impl BatchRunner for AwsBatchRunner {
    async fn submit(&self, run: &StageRun) -> Result<()> {
        let (stage, attempt) = (run.stage.to_string(), run.attempt.to_string());
        self.submit_once(
            run.device,
            &run.name(),
            &run.job,
            &[("stage", &stage), ("attempt", &attempt), ("device", run.device.as_str())],
            &["worker", "--job", &run.job, "--stage", &stage, "--attempt", &attempt],
        )
        .await
    }

    /// `tamp-<job>-export-<runtime>`, with `job` and `runtime` as parameters and no `stage`,
    /// so the orchestrator's state-change handling leaves it alone.
    async fn submit_export(&self, job: &str, runtime: &str) -> Result<()> {
        self.submit_once(Device::Cpu, &export_run_name(job, runtime), job, &[("runtime", runtime)], &["export", "--job", job, "--runtime", runtime]).await
    }

    async fn observe(&self, run: &StageRun) -> Result<Observed> {
        let jobs = self.summaries(run).await?;
        let status = |j: &JobSummary| j.status().cloned().unwrap_or(JobStatus::Submitted);
        if jobs.iter().any(|j| status(j) == JobStatus::Succeeded) {
            return Ok(Observed::Is(RunStatus::Succeeded));
        }
        if jobs.iter().any(|j| matches!(status(j), JobStatus::Starting | JobStatus::Running)) {
            return Ok(Observed::Is(RunStatus::Running));
        }
        if jobs.iter().any(|j| status(j) != JobStatus::Failed) {
            return Ok(Observed::Queued);
        }
        // Every try failed: the last one's exit code decides, as in the state-change event.
        Ok(match jobs.iter().max_by_key(|j| j.created_at().unwrap_or(0)) {
            None => Observed::Absent,
            Some(j) => {
                let exit = j.container().and_then(|c| c.exit_code()).map(i64::from);
                let reason = j.container().and_then(|c| c.reason()).or_else(|| j.status_reason()).unwrap_or("");
                Observed::Is(RunStatus::Failed {
                    reason: format!("{reason} (exit {})", exit.map_or_else(|| "unknown".into(), |e| e.to_string())),
                    retryable: exit != Some(EXIT_BAD_INPUT),
                })
            }
        })
    }

    async fn cancel(&self, run: &StageRun) -> Result<()> {
        for (id, status) in self.find(run).await? {
            let reason = "cancelled by Tamp";
            match status {
                JobStatus::Submitted | JobStatus::Pending | JobStatus::Runnable => {
                    self.client.cancel_job().job_id(&id).reason(reason).send().await.map_err(|e| unavailable("cancel", e.into_service_error()))?;
                }
                JobStatus::Starting | JobStatus::Running => {
                    self.client.terminate_job().job_id(&id).reason(reason).send().await.map_err(|e| unavailable("terminate", e.into_service_error()))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The Batch job name of a job's export for `runtime`.
pub fn export_run_name(job: &str, runtime: &str) -> String {
    format!("tamp-{job}-export-{runtime}")
}

/// Turns an EventBridge "Batch Job State Change" event into the orchestrator's message, or
/// `None` for states the orchestrator does not act on (SUBMITTED…STARTING) and for jobs that
/// are not Tamp stage runs. Exit status 3 (bad input) is not retryable.
pub fn message_from_state_change(event: &serde_json::Value) -> Option<Message> {
    if event["detail-type"] != "Batch Job State Change" {
        return None;
    }
    let d = &event["detail"];
    let p = &d["parameters"];
    let device = serde_json::from_value(p["device"].clone()).unwrap_or_default();
    let run = StageRun { job: p["job"].as_str()?.to_owned(), stage: p["stage"].as_str()?.parse().ok()?, attempt: p["attempt"].as_str()?.parse().ok()?, device };
    let exit = d["container"]["exitCode"].as_i64().or_else(|| d["attempts"].as_array()?.last()?["container"]["exitCode"].as_i64());
    let reason = d["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["container"]["reason"].as_str())
        .or_else(|| d["statusReason"].as_str())
        .unwrap_or("")
        .to_owned();
    let status = match d["status"].as_str()? {
        "RUNNING" => RunStatus::Running,
        "SUCCEEDED" => RunStatus::Succeeded,
        "FAILED" => RunStatus::Failed {
            reason: format!("{reason} (exit {})", exit.map_or_else(|| "unknown".into(), |e| e.to_string())),
            retryable: exit != Some(EXIT_BAD_INPUT),
        },
        _ => return None,
    };
    let at = d["stoppedAt"].as_u64().or_else(|| d["startedAt"].as_u64()).map_or(0, |ms| ms / 1000);
    Some(Message::Batch { run, status, at })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_sample_state_change_event_becomes_a_non_retryable_failure() {
        let path = std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../../events/batch-job-state-change.json");
        let event: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let Some(Message::Batch { run, status: RunStatus::Failed { reason, retryable }, at }) = message_from_state_change(&event) else {
            panic!("not a failure")
        };
        assert_eq!(run, StageRun { job: "job_ef335827e2c8116d".into(), stage: 0, attempt: 1, device: Device::Cpu });
        assert!(!retryable && reason.contains("asymmetric weights") && reason.contains("exit 3"), "{reason}");
        assert_eq!(at, 1_795_716_067);
        let mut running = event.clone();
        running["detail"]["status"] = "RUNNABLE".into();
        assert!(message_from_state_change(&running).is_none());
        let mut trial = event.clone();
        trial["detail"]["parameters"] =
            serde_json::json!({"job": "job_ef335827e2c8116d", "trial": "artifacts/job_ef335827e2c8116d/0/attempt-1/trials/4.spec.json"});
        assert!(message_from_state_change(&trial).is_none(), "a search trial's job is not a stage run");
        let mut other = event;
        other["detail"]["parameters"] = serde_json::json!({});
        assert!(message_from_state_change(&other).is_none(), "not a Tamp run");
    }
}
