//! What the API shows about jobs and versions beyond the stored records: the current stage,
//! health and a completion estimate from measured stage times (the dashboard's ETA), the
//! job's timeline (the job page), and a version's state from its newest job. Pure functions
//! over [`Job`]s, so they behave the same on every adapter.

use std::collections::HashMap;

use tamp_domain::job::{Job, JobState, StageState, Timestamp};

/// A stage kind with no measured run yet is assumed to take this long (seconds).
pub const DEFAULT_STAGE_S: f64 = 120.0;

/// Measured durations (seconds) of succeeded stages, by stage kind.
#[derive(Debug, Default, Clone)]
pub struct StageTimes {
    by_kind: HashMap<String, Vec<u64>>,
}

impl StageTimes {
    /// Collects the run time (start of the successful attempt to its end) of every
    /// succeeded stage that recorded a start.
    pub fn from_jobs(jobs: &[Job]) -> Self {
        let mut by_kind: HashMap<String, Vec<u64>> = HashMap::new();
        for s in jobs.iter().flat_map(|j| &j.stages) {
            if let (StageState::Succeeded, Some(start)) = (s.state, s.started_at) {
                by_kind.entry(s.kind.clone()).or_default().push(s.updated_at.saturating_sub(start));
            }
        }
        Self { by_kind }
    }

    /// The median measured time of `kind` and how many runs it rests on (0: the default).
    pub fn expected(&self, kind: &str) -> (f64, usize) {
        match self.by_kind.get(kind) {
            Some(v) if !v.is_empty() => {
                let mut v = v.clone();
                v.sort_unstable();
                let mid = v.len() / 2;
                let median = if v.len() % 2 == 1 { v[mid] as f64 } else { (v[mid - 1] + v[mid]) as f64 / 2.0 };
                // Stage times are recorded in whole seconds: never expect less than one.
                (median.max(1.0), v.len())
            }
            _ => (DEFAULT_STAGE_S, 0),
        }
    }
}

/// When a job that has not ended should end.
#[derive(Debug, Clone, PartialEq)]
pub struct Eta {
    pub remaining_s: f64,
    pub at: Timestamp,
    /// Which stage kinds had no measured run and fell back to [`DEFAULT_STAGE_S`].
    pub unmeasured: Vec<String>,
    /// Measured stage runs the estimate rests on.
    pub samples: usize,
}

impl Eta {
    pub fn minutes(&self) -> f64 {
        (self.remaining_s / 60.0 * 10.0).ceil() / 10.0
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "estimated_completion_minutes": self.minutes(),
            "estimated_completion_at": self.at,
            "basis": if self.unmeasured.is_empty() {
                format!("median of {} measured stage run(s) of the same kinds", self.samples)
            } else {
                format!("no measured run yet of {}: {DEFAULT_STAGE_S:.0} s assumed each", self.unmeasured.join(", "))
            },
        })
    }
}

/// The estimate for a job still queued or running; `None` once it has ended. A running
/// stage is expected to take its median time; one already past it is given a tenth more.
pub fn estimate(job: &Job, times: &StageTimes, now: Timestamp) -> Option<Eta> {
    if job.state.is_terminal() {
        return None;
    }
    let mut remaining = 0.0;
    let mut unmeasured = Vec::new();
    let mut samples = 0;
    for s in job.stages.iter().filter(|s| s.state != StageState::Succeeded) {
        let (expected, n) = times.expected(&s.kind);
        samples += n;
        if n == 0 && !unmeasured.contains(&s.kind) {
            unmeasured.push(s.kind.clone());
        }
        remaining += match (s.state, s.started_at) {
            (StageState::Running, Some(start)) => (expected - now.saturating_sub(start) as f64).max(expected * 0.1),
            _ => expected,
        };
    }
    Some(Eta { remaining_s: remaining, at: now + remaining.ceil() as u64, unmeasured, samples })
}

/// `ok`, `retrying` (a stage failed and waits for another attempt), `failed` or `cancelled`.
pub fn health(job: &Job) -> &'static str {
    match job.state {
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        _ if job.stages.iter().any(|s| !s.state.is_terminal() && s.attempt >= 1 && s.reason.is_some()) => "retrying",
        _ => "ok",
    }
}

/// The job as stored, with `current_stage`, `progress`, `health` and `eta` added.
pub fn job_view(job: &Job, times: &StageTimes, now: Timestamp) -> serde_json::Value {
    let mut v = serde_json::to_value(job).unwrap_or_default();
    v.as_object_mut().map(|o| o.remove("outbox"));
    let current = job.stages.iter().find(|s| s.state != StageState::Succeeded);
    let done = job.stages.iter().filter(|s| s.state == StageState::Succeeded).count();
    v["current_stage"] = current.map_or(
        serde_json::Value::Null,
        |s| serde_json::json!({ "index": s.index, "kind": s.kind, "state": s.state, "attempt": s.attempt, "max_attempts": s.max_attempts }),
    );
    v["progress"] = serde_json::json!({ "done": done, "total": job.stages.len() });
    v["health"] = health(job).into();
    v["eta"] = estimate(job, times, now).map_or(serde_json::Value::Null, |e| e.to_json());
    v
}

/// The job's events in time order, rebuilt from its record: created, each stage's start and
/// end (with the reason of a failure), and the job's end.
pub fn timeline(job: &Job) -> Vec<serde_json::Value> {
    let mut out = vec![serde_json::json!({ "time": job.created_at, "event": "job.created", "detail": format!("policy {}", job.policy) })];
    for s in &job.stages {
        let name = format!("stage {} ({})", s.index + 1, s.kind);
        if let Some(t) = s.started_at {
            out.push(serde_json::json!({ "time": t, "event": "stage.started", "detail": format!("{name}, attempt {}", s.attempt) }));
        }
        let end = match s.state {
            StageState::Succeeded => Some("stage.succeeded"),
            StageState::Failed => Some("stage.failed"),
            StageState::Cancelled => Some("stage.cancelled"),
            StageState::Pending if s.reason.is_some() => Some("stage.retrying"),
            _ => None,
        };
        if let Some(event) = end {
            let warnings = s.output.as_ref().map(|o| o.warnings.join("; ")).filter(|w| !w.is_empty());
            let detail = match (&s.reason, warnings) {
                (Some(r), _) => format!("{name}: {r}"),
                (None, Some(w)) => format!("{name}; warning: {w}"),
                (None, None) => name.clone(),
            };
            out.push(serde_json::json!({ "time": s.updated_at, "event": event, "detail": detail }));
        }
    }
    if job.state.is_terminal() {
        let detail = job.reason.clone().unwrap_or_default();
        out.push(serde_json::json!({ "time": job.updated_at, "event": format!("job.{}", job.state.as_str()), "detail": detail }));
    }
    out.sort_by_key(|e| e["time"].as_u64().unwrap_or(0));
    out
}

/// A version's state from its newest job: `uploading` (no job yet), `processing`, `ready`
/// (the newest job succeeded), `failed` or `cancelled`, with that job's id.
pub fn version_state<'a>(project: &str, model: &str, version: &str, jobs: impl IntoIterator<Item = &'a Job>) -> (&'static str, Option<String>) {
    let newest = jobs.into_iter().filter(|j| j.project == project && j.model == model && j.version == version).max_by_key(|j| (j.created_at, j.id.clone()));
    match newest {
        None => ("uploading", None),
        Some(j) => (
            match j.state {
                JobState::Succeeded => "ready",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
                _ => "processing",
            },
            Some(j.id.clone()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_domain::job::{JobInputs, JobStage};

    fn job(id: &str, state: JobState, stages: &[(&str, StageState, Option<u64>, u64)]) -> Job {
        Job {
            id: id.into(),
            project: "p".into(),
            model: "m".into(),
            version: "v1".into(),
            policy: "ptq".into(),
            recipe_yaml: String::new(),
            inputs: JobInputs { model: String::new(), calibration: None, evaluation: None, train: None },
            state,
            stages: stages
                .iter()
                .enumerate()
                .map(|(index, (kind, st, start, end))| JobStage {
                    index,
                    kind: (*kind).into(),
                    state: *st,
                    attempt: 1,
                    max_attempts: 3,
                    not_before: None,
                    reason: None,
                    output: None,
                    updated_at: *end,
                    started_at: *start,
                    device: tamp_domain::recipe::Device::Cpu,
                })
                .collect(),
            reason: None,
            created_at: 0,
            updated_at: 0,
            revision: 0,
            outbox: Vec::new(),
        }
    }

    #[test]
    fn eta_is_the_median_of_measured_runs_less_the_time_spent() {
        let history: Vec<Job> = [10, 30, 20]
            .iter()
            .map(|d| job("old", JobState::Succeeded, &[("ptq", StageState::Succeeded, Some(100), 100 + d), ("prune", StageState::Succeeded, Some(0), 60)]))
            .collect();
        let times = StageTimes::from_jobs(&history);
        assert_eq!(times.expected("ptq"), (20.0, 3));
        // prune done, ptq running for 5 s of its 20: 15 s left.
        let j = job("j", JobState::Running, &[("prune", StageState::Succeeded, Some(0), 60), ("ptq", StageState::Running, Some(1000), 1000)]);
        let eta = estimate(&j, &times, 1005).unwrap();
        assert_eq!(eta.remaining_s, 15.0);
        assert_eq!(eta.at, 1020);
        assert!(eta.unmeasured.is_empty());
        // Past its median: a tenth of it is still expected, never a negative ETA.
        assert_eq!(estimate(&j, &times, 5000).unwrap().remaining_s, 2.0);
        // An unmeasured kind falls back to the default and says so.
        let q = job("q", JobState::Queued, &[("distill", StageState::Pending, None, 0), ("ptq", StageState::Pending, None, 0)]);
        let eta = estimate(&q, &times, 0).unwrap();
        assert_eq!(eta.remaining_s, DEFAULT_STAGE_S + 20.0);
        assert_eq!(eta.unmeasured, vec!["distill".to_owned()]);
        assert!(eta.to_json()["basis"].as_str().unwrap().contains("distill"));
        assert!(estimate(&history[0], &times, 0).is_none(), "an ended job has no ETA");
    }

    #[test]
    fn version_state_follows_the_newest_job() {
        let mut a = job("a", JobState::Failed, &[]);
        let mut b = job("b", JobState::Succeeded, &[]);
        a.created_at = 1;
        b.created_at = 2;
        assert_eq!(version_state("p", "m", "v1", [&a, &b]), ("ready", Some("b".into())));
        assert_eq!(version_state("p", "m", "v2", [&a, &b]), ("uploading", None));
        b.state = JobState::Running;
        assert_eq!(version_state("p", "m", "v1", [&a, &b]).0, "processing");
    }

    #[test]
    fn timeline_orders_starts_ends_and_reasons() {
        let mut j = job("j", JobState::Failed, &[("ptq", StageState::Succeeded, Some(5), 9), ("prune", StageState::Failed, Some(10), 12)]);
        j.stages[1].reason = Some("model has NaN".into());
        j.updated_at = 12;
        let t = timeline(&j);
        let events: Vec<&str> = t.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["job.created", "stage.started", "stage.succeeded", "stage.started", "stage.failed", "job.failed"]);
        assert!(t[4]["detail"].as_str().unwrap().contains("NaN"));
        assert_eq!(health(&j), "failed");
    }
}
