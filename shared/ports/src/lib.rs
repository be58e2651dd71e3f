//! Tamp's ports: what the control plane needs from the world, as traits. Local adapters
//! (folder, SQLite, in-process) and AWS adapters (S3, DynamoDB, SQS, Batch, EventBridge)
//! implement them; [`conformance`] is the suite every adapter must pass unchanged.
//!
//! Contracts every adapter keeps:
//! - object keys are `/`-separated, relative, without `..`; `put_if_absent` never overwrites;
//! - every metadata change is conditional on the job's `revision` (optimistic concurrency);
//!   job creation is idempotent on a caller-chosen key, in one transaction with the job;
//! - the queue delivers at least once: a message not acknowledged within its visibility
//!   timeout comes back, and after `max_receives` deliveries goes to the dead-letter list;
//! - the batch runner names runs deterministically (`tamp-<job>-s<stage>-a<attempt>`) and
//!   reports state changes as queue messages ([`BatchEvent`]), like Batch → EventBridge → SQS.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tamp_domain::job::{Job, JobState, Timestamp};
pub use tamp_domain::recipe::Device;

pub mod conformance;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("not found: {0}")]
    NotFound(String),
    /// A conditional write lost (someone else changed the record first).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    /// Transient: worth retrying (I/O, throttling, network).
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, PortError>;

/// Checks an object key: relative, `/`-separated, no empty or `..` segments.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty() || key.starts_with('/') || key.contains('\\') || key.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if bad { Err(PortError::Invalid(format!("bad object key '{key}'"))) } else { Ok(()) }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// Change marker (mtime+size locally, ETag/version on S3): two events for the same
    /// object version carry the same marker.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key already existed; nothing was written.
    Exists,
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()>;
    /// Writes only if the key is absent (immutable artifacts; `If-None-Match: *` on S3).
    async fn put_if_absent(&self, key: &str, bytes: Vec<u8>) -> Result<PutOutcome>;
    async fn put_file(&self, key: &str, path: &Path) -> Result<()>;
    /// `put_if_absent` from a file (models may be large: stores may stream or split it).
    async fn put_if_absent_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let bytes = tokio::fs::read(path).await.map_err(|e| PortError::Unavailable(format!("{}: {e}", path.display())))?;
        self.put_if_absent(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>>;
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<()>;
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// A download URL valid for `ttl` (≤ 15 minutes).
    async fn presign_get(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String>;
    /// An upload (HTTP PUT) URL valid for `ttl` (≤ 15 minutes).
    async fn presign_put(&self, key: &str, ttl: Duration, now: Timestamp) -> Result<String>;
}

/// A compressed model recorded for a model × runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub id: String,
    pub job: String,
    pub stage: usize,
    /// `<project>.<model>`.
    pub model_id: String,
    pub runtime: String,
    pub key: String,
    pub metadata_key: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// The artifact metadata JSON (runtime, opset, compression, metrics, compatibility).
    pub metadata: serde_json::Value,
    /// Higher is better; decides the model's best-artifact pointer.
    pub score: f64,
    /// Whether it may become the model's best at all: it met its constraints, measured
    /// against a meaningful baseline. Speed alone never moves the pointer.
    #[serde(default = "yes")]
    pub eligible: bool,
    pub created_at: Timestamp,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    /// The idempotency key was used before, for this job id.
    Duplicate(String),
}

#[async_trait]
pub trait MetadataStore: Send + Sync {
    /// Stores a new job and its idempotency key in one transaction.
    async fn create_job(&self, job: &Job, idempotency_key: &str) -> Result<Created>;
    async fn get_job(&self, id: &str) -> Result<Option<Job>>;
    /// Writes `job` if the stored revision is still `expected_revision`.
    async fn update_job(&self, job: &Job, expected_revision: u64) -> Result<()>;
    /// Newest first.
    async fn list_jobs(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>>;
    /// Records an artifact (idempotent on its id) and moves the model × runtime best pointer
    /// to it only if its score beats the current best. Returns whether it became best.
    async fn put_artifact(&self, artifact: &ArtifactRecord) -> Result<bool>;
    async fn get_artifact(&self, id: &str) -> Result<Option<ArtifactRecord>>;
    async fn best_artifact(&self, model_id: &str, runtime: &str) -> Result<Option<ArtifactRecord>>;
    /// Stores a token record (`Conflict` if the id or hash exists).
    async fn put_token(&self, token: &TokenRecord) -> Result<()>;
    /// The token whose secret hashes to `hash` (expired ones included: the caller decides).
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;
    async fn append_audit(&self, record: &AuditRecord) -> Result<()>;
    /// Catalog records (projects, models, versions, policies) as JSON documents by kind and
    /// id. With `if_absent`, an existing id is left alone and `false` returned.
    async fn put_record(&self, kind: &str, id: &str, doc: &serde_json::Value, if_absent: bool) -> Result<bool>;
    async fn get_record(&self, kind: &str, id: &str) -> Result<Option<serde_json::Value>>;
    /// Records of `kind` whose id starts with `prefix`, by id.
    async fn list_records(&self, kind: &str, prefix: &str) -> Result<Vec<serde_json::Value>>;
    /// Newest first.
    async fn list_audit(&self, limit: usize) -> Result<Vec<AuditRecord>>;
    /// Removes a job and its idempotency keys (no-op when absent).
    async fn delete_job(&self, id: &str) -> Result<()>;
    /// Removes an artifact record and any best pointer at it (no-op when absent).
    async fn delete_artifact(&self, id: &str) -> Result<()>;
    /// Removes a catalog record; returns whether it existed.
    async fn delete_record(&self, kind: &str, id: &str) -> Result<bool>;
    /// Every token record (admin listing and project deletion).
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Removes a token by id; returns whether it existed.
    async fn delete_token(&self, id: &str) -> Result<bool>;
}

/// Roles, ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// An API token as stored: only the SHA-256 of the secret, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the token string.
    pub hash: String,
    /// Who it was made for (free text: a person, a CI system).
    pub subject: String,
    /// The project it grants `role` on; `*` for every project.
    pub project: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub created_by: String,
}

/// One line of the audit log: who did what to which resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub time: Timestamp,
    pub actor: String,
    /// `download`, `delete`, `policy.upload`, `token.create`, …
    pub action: String,
    pub resource: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    /// Handle for `ack`; valid for this delivery only.
    pub receipt: String,
    pub body: String,
    /// 1 on the first delivery.
    pub receive_count: u32,
}

#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, body: String, delay: Duration) -> Result<()>;
    /// Up to `max` visible messages, hidden for `visibility` unless acknowledged.
    async fn receive(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>>;
    async fn ack(&self, receipt: &str) -> Result<()>;
    /// Bodies moved to the dead-letter list after too many deliveries.
    async fn dead_letters(&self) -> Result<Vec<String>>;
}

/// One attempt of one stage of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    pub job: String,
    pub stage: usize,
    pub attempt: u32,
    /// The machine class the planner chose for the stage: which Batch queue and job
    /// definition run it, and locally whether it takes a GPU slot. Not part of the name.
    #[serde(default)]
    pub device: Device,
}

impl StageRun {
    /// Deterministic run name (Batch `SubmitJob` has no idempotency token).
    pub fn name(&self) -> String {
        format!("tamp-{}-s{}-a{}", self.job, self.stage, self.attempt)
    }
}

/// A batch run's state change, delivered through the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// `retryable: false` when the worker reported bad input.
    Failed {
        reason: String,
        retryable: bool,
    },
}

/// Queue message bodies the orchestrator consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Look at the job and do what is due (plan, submit, finish).
    Advance {
        job: String,
    },
    /// Hand a (backed-off) stage attempt to the batch runner if it is still current.
    Submit {
        run: StageRun,
    },
    Batch {
        run: StageRun,
        status: RunStatus,
        at: Timestamp,
    },
}

/// What a batch runner knows of one run, asked by reconcile when a state-change event may
/// have been lost.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// No such run (never submitted, or past the runner's retention).
    Absent,
    /// Submitted, waiting for capacity.
    Queued,
    /// Running, or finished: a finished run's status is the event that may have been lost.
    Is(RunStatus),
}

#[async_trait]
pub trait BatchRunner: Send + Sync {
    /// Starts the run; submitting the same run twice starts it once.
    async fn submit(&self, run: &StageRun) -> Result<()>;
    /// The run's state as the runner sees it now.
    async fn observe(&self, run: &StageRun) -> Result<Observed>;
    /// Cancels a queued run or terminates a running one.
    async fn cancel(&self, run: &StageRun) -> Result<()>;
    /// Starts the conversion of a succeeded job's final artifact for `runtime` on the CPU
    /// queue (the export function's runs too large for it); submitting twice starts it once.
    /// The run records its artifact itself. Runners that convert in place say so.
    async fn submit_export(&self, job: &str, runtime: &str) -> Result<()> {
        Err(PortError::Invalid(format!("this runner has no export stage: job {job} converts for {runtime} in place")))
    }
    /// Forgets what the runner keeps of a deleted job (logs, scratch); Batch keeps nothing
    /// of ours beyond its own retention.
    async fn purge(&self, _job: &str) -> Result<()> {
        Ok(())
    }
}

/// An event on the team bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TampEvent {
    pub id: String,
    /// `tamp.job.succeeded`, …
    pub detail_type: String,
    pub time: Timestamp,
    pub project: String,
    pub model: String,
    pub version: String,
    pub job: String,
    pub state: String,
    pub reason: Option<String>,
    /// Where to look (API path of the job).
    pub link: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, event: &TampEvent) -> Result<()>;
    /// Drops what the bus stored of a deleted project's events (a local event log);
    /// EventBridge stores nothing.
    async fn purge_project(&self, _project: &str) -> Result<()> {
        Ok(())
    }
}

/// Something that reacts to events on a local bus (the report step, the notify outbox).
#[async_trait]
pub trait Subscriber: Send + Sync {
    fn name(&self) -> &str;
    async fn on_event(&self, event: &TampEvent) -> Result<()>;
}

/// What the API needs of an object store that serves its own signed links (the local
/// folder store; S3 serves presigned links itself, so on AWS there is none).
pub trait SignedLinks: Send + Sync {
    /// Checks a link's signature (for `method`: GET or PUT) and expiry.
    fn verify(&self, method: &str, key: &str, expires: Timestamp, signature: &str, now: Timestamp) -> bool;
    /// A folder on the store's file system where uploads are staged before they are stored.
    fn staging_dir(&self) -> std::path::PathBuf;
}

/// The clock, injectable so tests can move time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}
