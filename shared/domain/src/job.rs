//! Compression jobs and their stages: ids, the state machine, and the planner.
//!
//! A job moves `queued → planning → running → succeeded | failed | cancelled`; each stage
//! `pending → submitted → running → succeeded | failed | cancelled`, retried with exponential
//! backoff up to `max_attempts`. Every change goes through [`Job::apply`], a pure function of
//! the job and one [`Signal`]: replays, duplicates and out-of-order deliveries (at-least-once
//! queues, Batch state events) are recognised by attempt number and state rank and change
//! nothing. A terminal state never changes. The record carries a `revision` that stores use
//! for conditional writes.

use serde::{Deserialize, Serialize};

use crate::recipe::{Device, Recipe, Stage};

/// Seconds since the Unix epoch (the clock is passed in, never read here).
pub type Timestamp = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Planning,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Planning => "planning",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether `to` is reachable from `self` through legal transitions (one `apply` may take
    /// several steps, e.g. queued → planning → running).
    pub fn can_reach(self, to: JobState) -> bool {
        self == to || [Self::Planning, Self::Running].into_iter().any(|mid| self.can_become(mid) && mid.can_reach(to)) || self.can_become(to)
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Queued, Self::Planning, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled].into_iter().find(|v| v.as_str() == s)
    }

    /// Whether `self → to` is a legal job transition.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Planning) | (Planning, Running) | (Running, Succeeded) | (Queued | Planning | Running, Failed) | (Queued | Planning | Running, Cancelled)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Submitted,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StageState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Progress order within one attempt: a lower rank never overwrites a higher one.
    fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Submitted => 1,
            Self::Running => 2,
            Self::Succeeded | Self::Failed | Self::Cancelled => 3,
        }
    }
}

/// Where a stage's output lives (a content-addressed object key) and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageOutput {
    /// Object key of the stage's artifact model.
    pub artifact_key: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// Object key of the artifact's metadata JSON.
    pub metadata_key: String,
    /// What the run wants the job's owner to know although it succeeded (a GPU stage that
    /// ran on the CPU, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStage {
    pub index: usize,
    /// The recipe technique (`ptq`, …).
    pub kind: String,
    pub state: StageState,
    /// Attempts started so far (the current attempt's number; 0 before the first).
    pub attempt: u32,
    pub max_attempts: u32,
    /// Earliest time the next attempt may be submitted (backoff).
    pub not_before: Option<Timestamp>,
    pub reason: Option<String>,
    pub output: Option<StageOutput>,
    pub updated_at: Timestamp,
    /// When the current attempt started running (for measured stage times and ETAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// The machine class the planner chose ([`Stage::resources`]): the Batch queue it goes
    /// to, and locally whether it takes a GPU slot. Records from before it read as `cpu`.
    #[serde(default)]
    pub device: Device,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub project: String,
    pub model: String,
    pub version: String,
    pub policy: String,
    /// The recipe exactly as uploaded.
    pub recipe_yaml: String,
    /// Object keys of the inputs.
    pub inputs: JobInputs,
    pub state: JobState,
    pub stages: Vec<JobStage>,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every applied change; stores write only if it still matches (optimistic).
    pub revision: u64,
    /// Effects committed in the same conditional write as the change they follow from and not
    /// yet known to be carried out (a transactional outbox): replayed on redelivery and by
    /// reconcile, then cleared. Every effect is idempotent (runs have deterministic names,
    /// events deterministic ids), so a replay never doubles one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Outgoing>,
}

/// An effect waiting in a job's outbox, with the revision that committed it (events carry
/// it in their id, so a replay after later changes still publishes the same id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub revision: u64,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInputs {
    pub model: String,
    pub calibration: Option<String>,
    pub evaluation: Option<String>,
    /// Training rows (`train.npz`) for stages that fine-tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
}

/// Something that happened to a job, from a handler, a worker or the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// The orchestrator picked the job up.
    Plan,
    /// A stage attempt was handed to the batch runner.
    Submitted {
        stage: usize,
        attempt: u32,
    },
    Started {
        stage: usize,
        attempt: u32,
    },
    Succeeded {
        stage: usize,
        attempt: u32,
        output: StageOutput,
    },
    /// `retryable: false` fails the job at once (bad input); otherwise retried with backoff.
    Failed {
        stage: usize,
        attempt: u32,
        reason: String,
        retryable: bool,
    },
    Cancel {
        reason: String,
    },
}

/// What the caller must do after a change (the state machine never does I/O).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Submit `attempt` of `stage` no earlier than `not_before`.
    Submit {
        stage: usize,
        attempt: u32,
        not_before: Timestamp,
    },
    /// Cancel or terminate whatever runs for these stage attempts.
    Abort {
        stage: usize,
        attempt: u32,
    },
    Emit(EventKind),
}

/// The events Tamp publishes (`source: tamp`, detail-type `tamp.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "job.created")]
    JobCreated,
    #[serde(rename = "stage.started")]
    StageStarted,
    #[serde(rename = "stage.succeeded")]
    StageSucceeded,
    #[serde(rename = "stage.failed")]
    StageFailed,
    #[serde(rename = "job.succeeded")]
    JobSucceeded,
    #[serde(rename = "job.failed")]
    JobFailed,
    #[serde(rename = "job.cancelled")]
    JobCancelled,
    #[serde(rename = "report.ready")]
    ReportReady,
    #[serde(rename = "quality.alert")]
    QualityAlert,
    /// A stage's artifact was written for another runtime (the recipe's `targets`).
    #[serde(rename = "artifact.exported")]
    ArtifactExported,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCreated => "job.created",
            Self::StageStarted => "stage.started",
            Self::StageSucceeded => "stage.succeeded",
            Self::StageFailed => "stage.failed",
            Self::JobSucceeded => "job.succeeded",
            Self::JobFailed => "job.failed",
            Self::JobCancelled => "job.cancelled",
            Self::ReportReady => "report.ready",
            Self::QualityAlert => "quality.alert",
            Self::ArtifactExported => "artifact.exported",
        }
    }
}

/// Retry policy for stage attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// Delay before attempt 2; doubles for each further attempt, capped.
    pub base_delay_s: u64,
    pub max_delay_s: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, base_delay_s: 2, max_delay_s: 300 }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `next` (≥ 2).
    pub fn delay(&self, next: u32) -> u64 {
        let exp = next.saturating_sub(2).min(30);
        self.base_delay_s.saturating_mul(1u64 << exp).min(self.max_delay_s)
    }
}

/// Names allowed for projects, models and versions: they become path and key segments.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') && !s.starts_with('-')
}

/// Turns a validated recipe into the job's ordered stages.
pub fn plan(recipe: &Recipe, retry: RetryPolicy, now: Timestamp) -> Vec<JobStage> {
    recipe
        .policy
        .stages
        .iter()
        .enumerate()
        .map(|(index, s): (usize, &Stage)| JobStage {
            index,
            kind: s.kind().to_owned(),
            state: StageState::Pending,
            attempt: 0,
            max_attempts: retry.max_attempts,
            not_before: None,
            reason: None,
            output: None,
            updated_at: now,
            started_at: None,
            device: s.resources().device,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransitionError {
    #[error("job {job} is {state}; it cannot {what}")]
    Illegal { job: String, state: &'static str, what: String },
    #[error("job {job} has no stage {stage}")]
    NoStage { job: String, stage: usize },
}

impl Job {
    /// Applies one signal. Returns the effects to carry out; an empty list with the job
    /// unchanged means the signal was stale or a duplicate (harmless). `Err` is a signal that
    /// can never be right for this job (e.g. a stage index it does not have).
    pub fn apply(&mut self, signal: &Signal, retry: RetryPolicy, now: Timestamp) -> Result<Vec<Effect>, TransitionError> {
        if self.state.is_terminal() {
            return Ok(Vec::new());
        }
        let before = self.clone();
        let effects = self.step(signal, retry, now)?;
        if *self != before {
            self.revision += 1;
            self.updated_at = now;
        }
        Ok(effects)
    }

    fn stage_mut(&mut self, stage: usize) -> Result<&mut JobStage, TransitionError> {
        let job = self.id.clone();
        self.stages.get_mut(stage).ok_or(TransitionError::NoStage { job, stage })
    }

    fn set_state(&mut self, to: JobState) {
        debug_assert!(self.state.can_become(to), "{:?} -> {to:?}", self.state);
        self.state = to;
    }

    /// Submits the first stage not yet succeeded, or finishes the job.
    fn next(&mut self, now: Timestamp) -> Vec<Effect> {
        match self.stages.iter().position(|s| s.state != StageState::Succeeded) {
            None => {
                self.set_state(JobState::Succeeded);
                vec![Effect::Emit(EventKind::JobSucceeded)]
            }
            Some(i) => {
                let s = &mut self.stages[i];
                if s.state != StageState::Pending {
                    return Vec::new();
                }
                s.attempt += 1;
                s.state = StageState::Submitted;
                s.updated_at = now;
                let not_before = s.not_before.unwrap_or(now);
                vec![Effect::Submit { stage: i, attempt: s.attempt, not_before }]
            }
        }
    }

    fn step(&mut self, signal: &Signal, retry: RetryPolicy, now: Timestamp) -> Result<Vec<Effect>, TransitionError> {
        match signal {
            Signal::Plan => {
                if self.state != JobState::Queued {
                    return Ok(Vec::new());
                }
                self.set_state(JobState::Planning);
                if self.stages.is_empty() {
                    self.set_state(JobState::Failed);
                    self.reason = Some("the recipe has no stages".into());
                    return Ok(vec![Effect::Emit(EventKind::JobFailed)]);
                }
                self.set_state(JobState::Running);
                Ok(self.next(now))
            }
            // A run's report for a job not yet planned (attempt 0 was never submitted) is a
            // stray or replayed delivery: nothing to do.
            Signal::Submitted { attempt, .. } | Signal::Started { attempt, .. } | Signal::Succeeded { attempt, .. } | Signal::Failed { attempt, .. }
                if self.state == JobState::Queued || *attempt == 0 =>
            {
                Ok(Vec::new())
            }
            Signal::Submitted { stage, attempt } | Signal::Started { stage, attempt } => {
                let to = if matches!(signal, Signal::Started { .. }) { StageState::Running } else { StageState::Submitted };
                let s = self.stage_mut(*stage)?;
                if *attempt != s.attempt || s.state.rank() >= to.rank() {
                    return Ok(Vec::new()); // stale attempt, or already past this point
                }
                s.state = to;
                s.updated_at = now;
                if to == StageState::Running {
                    s.started_at = Some(now);
                }
                Ok(if to == StageState::Running { vec![Effect::Emit(EventKind::StageStarted)] } else { Vec::new() })
            }
            Signal::Succeeded { stage, attempt, output } => {
                let s = self.stage_mut(*stage)?;
                if *attempt != s.attempt || s.state.is_terminal() || s.state == StageState::Pending {
                    return Ok(Vec::new());
                }
                s.state = StageState::Succeeded;
                s.output = Some(output.clone());
                s.reason = None;
                s.updated_at = now;
                let mut effects = vec![Effect::Emit(EventKind::StageSucceeded)];
                effects.extend(self.next(now));
                Ok(effects)
            }
            Signal::Failed { stage, attempt, reason, retryable } => {
                let s = self.stage_mut(*stage)?;
                if *attempt != s.attempt || s.state.is_terminal() || s.state == StageState::Pending {
                    return Ok(Vec::new());
                }
                s.reason = Some(reason.clone());
                s.updated_at = now;
                if *retryable && s.attempt < s.max_attempts {
                    s.state = StageState::Pending;
                    s.not_before = Some(now + retry.delay(s.attempt + 1));
                    let mut effects = vec![Effect::Emit(EventKind::StageFailed)];
                    effects.extend(self.next(now));
                    return Ok(effects);
                }
                s.state = StageState::Failed;
                let tries = s.attempt;
                let kind = s.kind.clone();
                self.set_state(JobState::Failed);
                self.reason = Some(if *retryable {
                    format!("stage {stage} ({kind}) failed after {tries} attempt(s): {reason}")
                } else {
                    format!("stage {stage} ({kind}) failed: {reason}")
                });
                Ok(vec![Effect::Emit(EventKind::StageFailed), Effect::Emit(EventKind::JobFailed)])
            }
            Signal::Cancel { reason } => {
                let mut effects = Vec::new();
                for s in &mut self.stages {
                    if matches!(s.state, StageState::Submitted | StageState::Running) {
                        effects.push(Effect::Abort { stage: s.index, attempt: s.attempt });
                    }
                    if !s.state.is_terminal() {
                        s.state = StageState::Cancelled;
                        s.updated_at = now;
                    }
                }
                self.set_state(JobState::Cancelled);
                self.reason = Some(reason.clone());
                effects.push(Effect::Emit(EventKind::JobCancelled));
                Ok(effects)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(stages: usize) -> Job {
        Job {
            id: "job_1".into(),
            project: "p".into(),
            model: "m".into(),
            version: "v1".into(),
            policy: "ptq".into(),
            recipe_yaml: String::new(),
            inputs: JobInputs { model: "uploads/p/m/v1/model.onnx".into(), calibration: None, evaluation: None, train: None },
            state: JobState::Queued,
            stages: (0..stages)
                .map(|index| JobStage {
                    index,
                    kind: "ptq".into(),
                    state: StageState::Pending,
                    attempt: 0,
                    max_attempts: 3,
                    not_before: None,
                    reason: None,
                    output: None,
                    updated_at: 0,
                    started_at: None,
                    device: Device::Cpu,
                })
                .collect(),
            reason: None,
            created_at: 0,
            updated_at: 0,
            revision: 0,
            outbox: Vec::new(),
        }
    }

    fn out() -> StageOutput {
        StageOutput { artifact_key: "a".into(), sha256: "s".into(), size_bytes: 1, metadata_key: "m".into(), warnings: vec![] }
    }

    /// The planner records each stage kind's machine class: training (QAT, distillation,
    /// early exits, any `fine_tune`) on the GPU queue, the rest on the CPU one, and the
    /// recipe's `device:` forces either.
    #[test]
    fn the_planner_routes_stage_kinds_to_their_machine_class() {
        let yaml = "policy:\n  name: route\n  stages:\n    - ptq: {}\n    - qat: {}\n    - pruning: {type: structured_channel}\n    - pruning: {type: structured_channel, fine_tune: true}\n    - lowrank: {fine_tune: {device: cpu}}\n    - clustering: {}\n    - distill: {student: {layers: {keep_every: 2}}}\n    - early_exit: {}\n    - search: {}\n    - search: {device: gpu}\n    - ptq: {fine_tune: {epochs: 1}}\n";
        let recipe = Recipe::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, Device)> = plan(&recipe, RetryPolicy::default(), 0).into_iter().map(|s| (s.kind, s.device)).collect();
        let (c, g) = (Device::Cpu, Device::Gpu);
        let want = [
            ("ptq", c),
            ("qat", g),
            ("pruning", c),
            ("pruning", g),
            ("lowrank", c),
            ("clustering", c),
            ("distill", g),
            ("early_exit", g),
            ("search", c),
            ("search", g),
            ("ptq", g),
        ];
        assert_eq!(got, want.map(|(k, d)| (k.to_owned(), d)).to_vec());
        let forced = recipe.policy.stages.iter().map(|s| s.resources().required).collect::<Vec<_>>();
        assert_eq!(forced, [false, false, false, false, true, false, false, false, false, true, false]);
        // Records written before the field existed read as CPU.
        let old = serde_json::json!({"index": 0, "kind": "ptq", "state": "pending", "attempt": 0, "max_attempts": 3, "not_before": null, "reason": null, "output": null, "updated_at": 0});
        assert_eq!(serde_json::from_value::<JobStage>(old).map(|s| s.device).ok(), Some(Device::Cpu));
    }

    /// Found by the property test: a stray run report for a job not yet planned used to move
    /// a Pending stage (attempt 0) and then the Queued job straight to Succeeded.
    #[test]
    fn run_reports_before_planning_change_nothing() {
        let retry = RetryPolicy::default();
        let mut j = job(1);
        for sig in [
            Signal::Started { stage: 0, attempt: 0 },
            Signal::Succeeded { stage: 0, attempt: 0, output: out() },
            Signal::Failed { stage: 0, attempt: 0, reason: "x".into(), retryable: false },
        ] {
            assert!(j.apply(&sig, retry, 1).unwrap().is_empty());
        }
        assert_eq!((j.state, j.stages[0].state, j.revision), (JobState::Queued, StageState::Pending, 0));
    }

    #[test]
    fn happy_path_runs_stages_in_order() {
        let r = RetryPolicy::default();
        let mut j = job(2);
        assert_eq!(j.apply(&Signal::Plan, r, 1).unwrap(), vec![Effect::Submit { stage: 0, attempt: 1, not_before: 1 }]);
        j.apply(&Signal::Started { stage: 0, attempt: 1 }, r, 2).unwrap();
        let e = j.apply(&Signal::Succeeded { stage: 0, attempt: 1, output: out() }, r, 3).unwrap();
        assert!(e.contains(&Effect::Submit { stage: 1, attempt: 1, not_before: 3 }));
        let e = j.apply(&Signal::Succeeded { stage: 1, attempt: 1, output: out() }, r, 4).unwrap();
        assert!(e.contains(&Effect::Emit(EventKind::JobSucceeded)));
        assert_eq!(j.state, JobState::Succeeded);
    }

    #[test]
    fn retries_with_backoff_then_fails_with_the_reason() {
        let r = RetryPolicy { max_attempts: 3, base_delay_s: 2, max_delay_s: 300 };
        let mut j = job(1);
        j.apply(&Signal::Plan, r, 0).unwrap();
        let e = j.apply(&Signal::Failed { stage: 0, attempt: 1, reason: "killed".into(), retryable: true }, r, 10).unwrap();
        assert!(e.contains(&Effect::Submit { stage: 0, attempt: 2, not_before: 12 }), "{e:?}");
        let e = j.apply(&Signal::Failed { stage: 0, attempt: 2, reason: "killed".into(), retryable: true }, r, 20).unwrap();
        assert!(e.contains(&Effect::Submit { stage: 0, attempt: 3, not_before: 24 }), "{e:?}");
        j.apply(&Signal::Failed { stage: 0, attempt: 3, reason: "boom".into(), retryable: true }, r, 30).unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert!(j.reason.as_deref().unwrap().contains("after 3 attempt(s): boom"));
    }

    #[test]
    fn bad_input_fails_at_once() {
        let r = RetryPolicy::default();
        let mut j = job(1);
        j.apply(&Signal::Plan, r, 0).unwrap();
        j.apply(&Signal::Failed { stage: 0, attempt: 1, reason: "NaN in input".into(), retryable: false }, r, 1).unwrap();
        assert_eq!(j.state, JobState::Failed);
    }

    #[test]
    fn cancel_aborts_running_attempts() {
        let r = RetryPolicy::default();
        let mut j = job(2);
        j.apply(&Signal::Plan, r, 0).unwrap();
        let e = j.apply(&Signal::Cancel { reason: "user".into() }, r, 1).unwrap();
        assert!(e.contains(&Effect::Abort { stage: 0, attempt: 1 }));
        assert_eq!(j.state, JobState::Cancelled);
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            Just(Signal::Plan),
            (0..3usize, 0..4u32).prop_map(|(stage, attempt)| Signal::Submitted { stage, attempt }),
            (0..3usize, 0..4u32).prop_map(|(stage, attempt)| Signal::Started { stage, attempt }),
            (0..3usize, 0..4u32).prop_map(|(stage, attempt)| Signal::Succeeded { stage, attempt, output: out() }),
            (0..3usize, 0..4u32, any::<bool>()).prop_map(|(stage, attempt, retryable)| Signal::Failed { stage, attempt, reason: "x".into(), retryable }),
            Just(Signal::Cancel { reason: "c".into() }),
        ]
    }

    proptest! {
        /// Any sequence of signals: every job transition is legal, a terminal state never
        /// changes, and applying a signal twice in a row changes nothing the second time.
        #[test]
        fn no_illegal_transition_and_replays_are_harmless(signals in proptest::collection::vec(signal(), 1..40)) {
            let r = RetryPolicy::default();
            let mut j = job(2);
            for (t, s) in signals.iter().enumerate() {
                let before = j.state;
                let _ = j.apply(s, r, t as u64);
                prop_assert!(before.can_reach(j.state), "{before:?} -> {:?}", j.state);
                if before.is_terminal() {
                    prop_assert_eq!(before, j.state);
                }
                let snapshot = j.clone();
                let effects = j.apply(s, r, t as u64).unwrap_or_default();
                // A replayed Failed may legitimately be a new attempt's failure only if the
                // attempt number matches, which a replay of the same signal cannot after a retry.
                prop_assert_eq!(&snapshot, &j, "replay changed the job: {:?} effects {:?}", s, effects);
            }
        }

        /// Stage attempts never go backwards and never exceed the budget.
        #[test]
        fn attempts_are_bounded(signals in proptest::collection::vec(signal(), 1..60)) {
            let r = RetryPolicy::default();
            let mut j = job(2);
            for (t, s) in signals.iter().enumerate() {
                let before: Vec<u32> = j.stages.iter().map(|s| s.attempt).collect();
                let _ = j.apply(s, r, t as u64);
                for (b, st) in before.iter().zip(&j.stages) {
                    prop_assert!(st.attempt >= *b && st.attempt <= st.max_attempts);
                }
            }
        }
    }
}
