//! The handlers every deployment shares: **ingest** (an upload's `recipe.yaml` → a job),
//! the **orchestrator** (queue messages → state machine → effects) and **reconcile**
//! (re-submits stage attempts that lost their run). Locally `tamp serve` calls them; on AWS
//! the Lambda functions do, with the same ports.

use std::sync::Arc;
use std::time::Duration;

use tamp_domain::job::{self, Effect, EventKind, Job, JobInputs, JobState, Outgoing, RetryPolicy, Signal, StageOutput, StageState};
use tamp_domain::recipe::Recipe;
use tamp_ports::{
    ArtifactRecord, BatchRunner, Clock, Created, EventBus, Message, MetadataStore, ObjectStore, Observed, PortError, Queue, RunStatus, StageRun, TampEvent,
};

/// The ports a handler works through.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn ObjectStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub queue: Arc<dyn Queue>,
    pub runner: Arc<dyn BatchRunner>,
    pub bus: Arc<dyn EventBus>,
    pub clock: Arc<dyn Clock>,
    pub retry: RetryPolicy,
    /// Orders work on a job after its stages against the job's erasure (`guards`).
    pub guards: crate::guards::JobGuards,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("retry", &self.retry).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Never worth retrying (the message or upload is wrong).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Port(#[from] PortError),
}

impl HandlerError {
    /// Whether redelivering the message may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Port(PortError::Unavailable(_) | PortError::Conflict(_)))
    }
}

pub type Result<T> = std::result::Result<T, HandlerError>;

/// What ingesting an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Created(String),
    /// The same upload (key + version) was seen before: no new job.
    Duplicate(String),
    /// Not a trigger (not a `recipe.yaml` under `uploads/<project>/<model>/<version>/`).
    Ignored(String),
}

/// Key of an artifact's stage manifest, written last by the worker.
pub fn stage_manifest_key(run: &StageRun) -> String {
    format!("artifacts/{}/{}/attempt-{}.json", run.job, run.stage, run.attempt)
}

/// Key of the failure record a worker writes when its stage fails.
pub fn stage_error_key(run: &StageRun) -> String {
    format!("artifacts/{}/{}/attempt-{}.error.json", run.job, run.stage, run.attempt)
}

/// Why a worker's stage failed, in the worker's words (runners only see an exit status).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageFailure {
    pub reason: String,
    pub retryable: bool,
}

/// What the worker writes as its stage manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageManifest {
    pub output: StageOutput,
    /// The artifact metadata JSON (runtime, opset, compression, metrics, compatibility).
    pub metadata: serde_json::Value,
}

/// Parses `uploads/<project>/<model>/<version>/recipe.yaml`.
pub fn upload_prefix(key: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["uploads", p, m, v, "recipe.yaml"] if job::valid_name(p) && job::valid_name(m) && job::valid_name(v) => Some(((*p).into(), (*m).into(), (*v).into())),
        _ => None,
    }
}

fn new_job_id() -> String {
    format!("job_{}", tamp_domain::ids::random_hex(8))
}

/// An event about `job` as it stands. The id is the job, its revision and the kind, so a
/// replayed effect or a redelivered upload publishes the same id again and consumers
/// (notify, report) drop the copy.
pub(crate) fn event(job: &Job, kind: EventKind, now: u64, detail: serde_json::Value) -> TampEvent {
    event_at(job, job.revision, kind, now, detail)
}

fn event_at(job: &Job, revision: u64, kind: EventKind, now: u64, detail: serde_json::Value) -> TampEvent {
    TampEvent {
        id: format!("evt_{}_{revision}_{}", job.id.trim_start_matches("job_"), kind.as_str()),
        detail_type: format!("tamp.{}", kind.as_str()),
        time: now,
        project: job.project.clone(),
        model: job.model.clone(),
        version: job.version.clone(),
        job: job.id.clone(),
        state: job.state.as_str().to_owned(),
        reason: job.reason.clone(),
        link: format!("/jobs/{}", job.id),
        detail,
    }
}

/// Ingests one upload event (`key` at object version `version`). Idempotent on
/// key + version. A recipe that does not validate still creates a job — in `failed`, with
/// the recipe error as its reason — so the user sees why nothing ran.
pub async fn ingest(svc: &Services, key: &str, version: &str) -> Result<Ingested> {
    let Some((project, model, ver)) = upload_prefix(key) else {
        return Ok(Ingested::Ignored(format!("'{key}' is not uploads/<project>/<model>/<version>/recipe.yaml (names: lowercase letters, digits, - and _)")));
    };
    let marker = format!("upload:{key}@{version}");
    let max = tamp_domain::recipe::MAX_RECIPE_BYTES;
    let Some(meta) = svc.store.head(key).await? else { return Err(HandlerError::Port(PortError::NotFound(key.to_owned()))) };
    // A recipe that cannot be read still makes a failed job saying why: a dropped file must
    // never vanish into a log line.
    let text = if meta.size > max as u64 {
        Err(format!("{key} is {} bytes; recipes are at most {max} bytes (a policy is a few lines of YAML)", meta.size))
    } else {
        String::from_utf8(svc.store.get(key).await?)
            .map_err(|e| format!("{key} is not UTF-8 text (byte {}): save the recipe as UTF-8 YAML", e.utf8_error().valid_up_to()))
    };
    match text {
        Ok(text) => start_job(svc, &project, &model, &ver, &text, key, &marker).await,
        Err(reason) => fail_upload(svc, &project, &model, &ver, reason, &marker).await,
    }
}

/// Records a job that failed before it could start (an unreadable recipe, an ingest that
/// panicked), so the user sees the reason where they look for jobs.
pub async fn fail_upload(svc: &Services, project: &str, model: &str, ver: &str, reason: String, idempotency_key: &str) -> Result<Ingested> {
    let now = svc.clock.now();
    let j = Job {
        id: new_job_id(),
        project: project.to_owned(),
        model: model.to_owned(),
        version: ver.to_owned(),
        policy: String::new(),
        recipe_yaml: String::new(),
        inputs: JobInputs { model: format!("uploads/{project}/{model}/{ver}/model.onnx"), calibration: None, evaluation: None, train: None },
        state: JobState::Failed,
        stages: Vec::new(),
        reason: Some(reason),
        created_at: now,
        updated_at: now,
        revision: 0,
        outbox: Vec::new(),
    };
    create_and_announce(svc, j, idempotency_key).await
}

/// Creates `j` (idempotent on `idempotency_key`), then does what follows a creation: the
/// catalog entries, `job.created`, and `job.failed` or the first `Advance`. A redelivered
/// upload whose first delivery died after the create finds its job still at revision 0 and
/// does the rest again (the same event ids; `Plan` acts once), so no job stays queued for ever.
async fn create_and_announce(svc: &Services, j: Job, idempotency_key: &str) -> Result<Ingested> {
    let (j, outcome) = match svc.meta.create_job(&j, idempotency_key).await? {
        Created::New => {
            let id = j.id.clone();
            (j, Ingested::Created(id))
        }
        Created::Duplicate(id) => match svc.meta.get_job(&id).await? {
            Some(stored) if stored.revision == 0 => (stored, Ingested::Duplicate(id)),
            _ => return Ok(Ingested::Duplicate(id)),
        },
    };
    ensure_catalog(svc, &j.project, &j.model, &j.version, "ingest").await?;
    let now = svc.clock.now();
    svc.bus.publish(&event(&j, EventKind::JobCreated, now, serde_json::json!({ "policy": j.policy, "stages": j.stages.len() }))).await?;
    if j.state == JobState::Failed {
        svc.bus.publish(&event(&j, EventKind::JobFailed, now, serde_json::Value::Null)).await?;
    } else {
        send(svc, &Message::Advance { job: j.id.clone() }, Duration::ZERO).await?;
    }
    Ok(outcome)
}

/// Records the catalog entries an upload implies (project, model, version), if new.
pub async fn ensure_catalog(svc: &Services, project: &str, model: &str, version: &str, by: &str) -> Result<()> {
    let now = svc.clock.now();
    svc.meta.put_record("project", project, &serde_json::json!({ "id": project, "created_at": now, "created_by": by }), true).await?;
    let model_id = format!("{project}.{model}");
    svc.meta
        .put_record("model", &model_id, &serde_json::json!({ "id": model_id, "project": project, "name": model, "created_at": now, "created_by": by }), true)
        .await?;
    let vid = format!("{model_id}/{version}");
    svc.meta.put_record("version", &vid, &serde_json::json!({ "id": vid, "model_id": model_id, "version": version, "prefix": format!("uploads/{project}/{model}/{version}/"), "created_at": now, "created_by": by }), true).await?;
    Ok(())
}

/// Starts a job on the uploaded version `uploads/<project>/<model>/<version>/` with
/// `recipe_text` (from the upload, or a stored policy); `source` names the recipe in errors.
pub async fn start_job(svc: &Services, project: &str, model: &str, ver: &str, recipe_text: &str, source: &str, idempotency_key: &str) -> Result<Ingested> {
    let now = svc.clock.now();
    let prefix = format!("uploads/{project}/{model}/{ver}");
    let mut j = Job {
        id: new_job_id(),
        project: project.to_owned(),
        model: model.to_owned(),
        version: ver.to_owned(),
        policy: String::new(),
        recipe_yaml: recipe_text.to_owned(),
        inputs: JobInputs { model: format!("{prefix}/model.onnx"), calibration: None, evaluation: None, train: None },
        state: JobState::Queued,
        stages: Vec::new(),
        reason: None,
        created_at: now,
        updated_at: now,
        revision: 0,
        outbox: Vec::new(),
    };
    let problem = match Recipe::from_yaml(recipe_text) {
        Err(e) => Some(format!("{source}: {e}")),
        Ok(recipe) => {
            j.policy = recipe.policy.name.clone();
            j.stages = job::plan(&recipe, svc.retry, now);
            let rel = |name: &str| format!("{prefix}/{name}");
            j.inputs.model = rel(recipe.model.as_deref().unwrap_or("model.onnx"));
            let calib = rel(recipe.data.calibration.as_deref().unwrap_or("calib.npz"));
            let eval = rel(recipe.data.evaluation.as_deref().unwrap_or("eval.npz"));
            j.inputs.calibration = svc.store.head(&calib).await?.map(|_| calib);
            j.inputs.evaluation = svc.store.head(&eval).await?.map(|_| eval).or_else(|| j.inputs.calibration.clone());
            let train = rel(recipe.data.train.as_deref().unwrap_or("train.npz"));
            j.inputs.train = svc.store.head(&train).await?.map(|_| train.clone());
            let trains = recipe.policy.stages.iter().position(|s| s.fine_tune().is_some());
            match svc.store.head(&j.inputs.model).await? {
                None => Some(format!("{} is missing: upload the model before recipe.yaml", j.inputs.model)),
                Some(m) if m.size == 0 => Some(format!("{} is empty", j.inputs.model)),
                Some(_) if j.inputs.evaluation.is_none() => {
                    Some(format!("no evaluation data: upload {prefix}/eval.npz or calib.npz (or name them in the recipe's `data:`)"))
                }
                Some(_) if trains.is_some() && j.inputs.train.is_none() => Some(format!(
                    "stage {} fine-tunes, which needs training rows: upload {train} before recipe.yaml (or name it in the recipe's `data.train`)",
                    trains.unwrap_or_default()
                )),
                Some(m) => crate::exports::preflight(svc, &recipe, &j.inputs.model, m.size).await?,
            }
        }
    };
    if let Some(reason) = &problem {
        j.state = JobState::Failed;
        j.reason = Some(reason.clone());
    }
    create_and_announce(svc, j, idempotency_key).await
}

async fn send(svc: &Services, msg: &Message, delay: Duration) -> Result<()> {
    let body = serde_json::to_string(msg).map_err(|e| HandlerError::Invalid(e.to_string()))?;
    svc.queue.send(body, delay).await?;
    Ok(())
}

/// Applies `signal` to job `id` with a conditional write, retrying on lost races. The
/// effects go into the job's outbox in that same write, then are carried out and cleared
/// ([`drain`]); a delivery that dies in between is redelivered, finds nothing new to apply and
/// drains what the outbox still holds. Returns the job as stored.
pub async fn signal(svc: &Services, id: &str, signal: &Signal) -> Result<Option<Job>> {
    for _ in 0..8 {
        let Some(mut j) = svc.meta.get_job(id).await? else { return Ok(None) };
        let now = svc.clock.now();
        let before = j.revision;
        let effects = j.apply(signal, svc.retry, now).map_err(|e| HandlerError::Invalid(e.to_string()))?;
        if j.revision == before {
            // Stale or duplicate: nothing new, but effects an earlier delivery committed and
            // did not finish are carried out now.
            return drain(svc, j).await.map(Some);
        }
        let revision = j.revision;
        j.outbox.extend(effects.into_iter().map(|effect| Outgoing { revision, effect }));
        match svc.meta.update_job(&j, before).await {
            Ok(()) => return drain(svc, j).await.map(Some),
            Err(PortError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(HandlerError::Port(PortError::Conflict(format!("job {id}: too many concurrent updates"))))
}

/// Carries out the effects in `j`'s outbox, in order, then clears them with a conditional
/// write. A failure leaves them in the outbox (the error makes the queue redeliver); a lost
/// race on the clear takes off only what was carried out.
pub async fn drain(svc: &Services, mut j: Job) -> Result<Job> {
    if j.outbox.is_empty() {
        return Ok(j);
    }
    // A job erased since it was read is not acted for: its events and report would outlive it.
    let _working = svc.guards.shared(&j.id).await;
    if svc.meta.get_job(&j.id).await?.is_none() {
        return Ok(j);
    }
    let done = j.outbox.clone();
    run_effects(svc, &j, &done).await?;
    for _ in 0..8 {
        if !j.outbox.starts_with(&done) {
            return Ok(j); // another delivery drained them first
        }
        let before = j.revision;
        j.outbox.drain(..done.len());
        j.revision += 1;
        match svc.meta.update_job(&j, before).await {
            Ok(()) => return Ok(j),
            Err(PortError::Conflict(_)) => match svc.meta.get_job(&j.id).await? {
                Some(fresh) => j = fresh,
                None => return Ok(j),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(HandlerError::Port(PortError::Conflict(format!("job {}: too many concurrent updates", j.id))))
}

/// The machine class the planner recorded for a stage (CPU for a stage the job lacks).
fn stage_device(j: &Job, stage: usize) -> tamp_ports::Device {
    j.stages.get(stage).map_or_else(Default::default, |s| s.device)
}

async fn run_effects(svc: &Services, j: &Job, effects: &[Outgoing]) -> Result<()> {
    let now = svc.clock.now();
    for Outgoing { revision, effect } in effects {
        match effect {
            Effect::Submit { stage, attempt, not_before } => {
                let run = StageRun { job: j.id.clone(), stage: *stage, attempt: *attempt, device: stage_device(j, *stage) };
                // A replayed submit whose attempt is no longer the stage's current one (reconcile
                // failed it meanwhile, or the job ended) would start a run nobody waits for.
                let current = j.stages.get(*stage).is_some_and(|s| s.attempt == *attempt && s.state == StageState::Submitted);
                if !current || j.state.is_terminal() {
                    continue;
                }
                if *not_before > now {
                    send(svc, &Message::Submit { run }, Duration::from_secs(not_before - now)).await?;
                } else {
                    svc.runner.submit(&run).await?;
                }
            }
            Effect::Abort { stage, attempt } => {
                svc.runner.cancel(&StageRun { job: j.id.clone(), stage: *stage, attempt: *attempt, device: stage_device(j, *stage) }).await?
            }
            Effect::Emit(kind) => {
                let detail = match kind {
                    EventKind::JobSucceeded => serde_json::json!({ "outputs": j.stages.iter().filter_map(|s| s.output.clone()).collect::<Vec<_>>() }),
                    EventKind::StageFailed | EventKind::StageSucceeded | EventKind::StageStarted => {
                        let s = j.stages.iter().max_by_key(|s| s.updated_at);
                        serde_json::json!({ "stage": s.map(|s| s.index), "kind": s.map(|s| s.kind.clone()), "attempt": s.map(|s| s.attempt), "reason": s.and_then(|s| s.reason.clone()) })
                    }
                    _ => serde_json::Value::Null,
                };
                svc.bus.publish(&event_at(j, *revision, *kind, now, detail)).await?;
            }
        }
    }
    Ok(())
}

/// Where a job's report document is kept.
pub fn report_key(job: &str) -> String {
    format!("reports/{job}/report.json")
}

/// The job's report document: the job, and per stage its state, the candidates table and the
/// manifest of its last attempt. `None` for an unknown job.
pub async fn build_report(svc: &Services, job_id: &str) -> Result<Option<serde_json::Value>> {
    let Some(j) = svc.meta.get_job(job_id).await? else { return Ok(None) };
    let mut stages = Vec::new();
    for s in &j.stages {
        let base = format!("artifacts/{}/{}/attempt-{}", j.id, s.index, s.attempt);
        let mut doc = serde_json::json!({ "stage": s.index, "kind": s.kind, "state": s.state, "attempt": s.attempt, "reason": s.reason, "output": s.output });
        for name in ["candidates", "manifest"] {
            doc[name] = match svc.store.get(&format!("{base}/{name}.json")).await {
                Ok(b) => serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
                Err(PortError::NotFound(_)) => serde_json::Value::Null,
                Err(e) => return Err(e.into()),
            };
        }
        stages.push(doc);
    }
    Ok(Some(serde_json::json!({
        "job": j.id, "project": j.project, "model": j.model, "version": j.version, "policy": j.policy,
        "state": j.state, "reason": j.reason, "created_at": j.created_at, "updated_at": j.updated_at,
        "inputs": j.inputs, "stages": stages,
    })))
}

/// The report function's work: on a finished job, writes its report document to
/// [`report_key`] and announces it with `report.ready`. Idempotent: a redelivered event
/// rewrites the same document. Returns the key, or `None` if the event is not a finished job.
pub async fn write_report(svc: &Services, ev: &TampEvent) -> Result<Option<String>> {
    if !matches!(ev.detail_type.as_str(), "tamp.job.succeeded" | "tamp.job.failed" | "tamp.job.cancelled") {
        return Ok(None);
    }
    let Some(mut doc) = build_report(svc, &ev.job).await? else { return Ok(None) };
    let key = report_key(&ev.job);
    let Some(j) = svc.meta.get_job(&ev.job).await? else { return Ok(None) };
    let sources = report_sources(svc, &j).await?;
    let mut formats = vec!["json"];
    if sources.outcome.is_some() {
        // Fault injection for tests: `TAMP_FAULT_SLOW_REPORT=<s>` makes each render that slow
        // (a busy machine), to race the writes below against the job's erasure.
        if let Some(secs) = std::env::var("TAMP_FAULT_SLOW_REPORT").ok().and_then(|s| s.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        // Rendering is pure CPU on records already read; a failure loses the documents, not the job.
        match tamp_report::render(sources) {
            Ok(r) => {
                svc.store.put(&report_doc_key(&j.id, "html"), r.html.into_bytes()).await?;
                svc.store.put(&report_doc_key(&j.id, "pdf"), r.pdf).await?;
                doc["summary"] = r.summary;
                formats.extend(["html", "pdf"]);
            }
            Err(e) => doc["render_error"] = serde_json::Value::String(e.to_string()),
        }
    }
    svc.store.put(&key, serde_json::to_vec_pretty(&doc).map_err(|e| HandlerError::Invalid(e.to_string()))?).await?;
    let links: serde_json::Map<String, serde_json::Value> = formats.iter().map(|f| ((*f).to_owned(), format!("/reports/{}?format={f}", j.id).into())).collect();
    let recommendation = doc["summary"]["recommendation"].clone();
    svc.bus
        .publish(&event(
            &j,
            EventKind::ReportReady,
            svc.clock.now(),
            serde_json::json!({ "report": format!("/reports/{}", j.id), "key": key, "formats": links, "recommendation": recommendation }),
        ))
        .await?;
    Ok(Some(key))
}

/// Where a job's rendered report is kept (`html`, `pdf`).
pub fn report_doc_key(job: &str, ext: &str) -> String {
    format!("reports/{job}/report.{ext}")
}

/// What the rendered report is built from: the last stage with an outcome (its candidates,
/// manifest, analysis and artifact record) and the job's history from its record.
async fn report_sources(svc: &Services, j: &Job) -> Result<tamp_report::Sources> {
    async fn json<T: serde::de::DeserializeOwned>(svc: &Services, key: &str) -> Result<Option<T>> {
        match svc.store.get(key).await {
            Ok(b) => Ok(serde_json::from_slice(&b).ok()),
            Err(PortError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    let mut src = tamp_report::Sources {
        title: format!("{} ({} {} · {})", j.id, j.model, j.version, j.policy),
        state: Some((j.state.as_str().to_owned(), j.reason.clone())),
        recipe: tamp_domain::Recipe::from_yaml(&j.recipe_yaml).ok(),
        ..tamp_report::Sources::default()
    };
    for s in j.stages.iter().rev().filter(|s| s.attempt > 0) {
        let base = format!("artifacts/{}/{}/attempt-{}", j.id, s.index, s.attempt);
        let Some(outcome) = json(svc, &format!("{base}/candidates.json")).await? else { continue };
        src.outcome = Some(outcome);
        src.manifest = json(svc, &format!("{base}/manifest.json")).await?;
        src.analysis = json(svc, &format!("{base}/analysis.json")).await?;
        src.search = json(svc, &format!("{base}/search/front.json")).await?;
        if let Some(o) = &s.output {
            src.artifact = json(svc, &o.metadata_key).await?;
        }
        break;
    }
    let at = tamp_report::utc;
    src.events.push(tamp_report::EventLine { at: at(j.created_at), kind: "job.created".into(), detail: format!("inputs {}", j.inputs.model) });
    for s in &j.stages {
        let detail = format!("attempt {}/{}{}", s.attempt, s.max_attempts, s.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default());
        src.events.push(tamp_report::EventLine {
            at: at(s.updated_at),
            kind: format!("stage {} ({}) {}", s.index, s.kind, format!("{:?}", s.state).to_lowercase()),
            detail,
        });
    }
    src.events.push(tamp_report::EventLine { at: at(j.updated_at), kind: format!("job.{}", j.state.as_str()), detail: j.reason.clone().unwrap_or_default() });
    src.reproduce = Some(format!(
        "tamp compress {} --recipe recipe.yaml --data {} --eval {} --out out   # the job's inputs, downloaded from the store (tamp download)",
        j.inputs.model,
        j.inputs.calibration.as_deref().unwrap_or("calib.npz"),
        j.inputs.evaluation.as_deref().unwrap_or("eval.npz")
    ));
    Ok(src)
}

/// Whether an artifact may become its model's best: it met every constraint (the engine
/// refuses degenerate baselines before any artifact exists). Speed alone never qualifies.
fn eligible(metadata: &serde_json::Value) -> bool {
    metadata["missed_constraints"].as_array().is_some_and(|m| m.is_empty())
}

/// Ranks eligible artifacts of one model: the P50 speed-up over their own baseline.
fn score(metadata: &serde_json::Value) -> f64 {
    metadata["metrics"]["speedup_p50"].as_f64().filter(|v| v.is_finite()).unwrap_or(0.0)
}

/// The artifact record id of one stage of one job. Records are per job and stage, never
/// content-addressed: two projects that make byte-identical models get two records, and
/// neither can reach the other's through the id.
pub fn artifact_id(job: &str, stage: usize) -> String {
    format!("art_{}_{stage}", job.trim_start_matches("job_"))
}

/// Handles one orchestrator message.
pub async fn orchestrate(svc: &Services, msg: &Message) -> Result<()> {
    match msg {
        Message::Advance { job } => {
            signal(svc, job, &Signal::Plan).await?;
        }
        Message::Submit { run } => {
            let Some(j) = svc.meta.get_job(&run.job).await? else { return Ok(()) };
            let current = j.stages.get(run.stage).is_some_and(|s| s.attempt == run.attempt && s.state == StageState::Submitted);
            if current && !j.state.is_terminal() {
                svc.runner.submit(run).await?;
            }
        }
        Message::Batch { run, status, .. } => {
            let sig = match status {
                RunStatus::Running => Signal::Started { stage: run.stage, attempt: run.attempt },
                RunStatus::Failed { reason, retryable } => {
                    // The worker's own words beat the runner's ("Essential container in task exited").
                    let own = match svc.store.get(&stage_error_key(run)).await {
                        Ok(b) => serde_json::from_slice::<StageFailure>(&b).ok(),
                        Err(_) => None,
                    };
                    let reason = own.map_or_else(|| reason.clone(), |f| f.reason);
                    Signal::Failed { stage: run.stage, attempt: run.attempt, reason, retryable: *retryable }
                }
                RunStatus::Succeeded => match record_output(svc, run).await? {
                    Ok(output) => Signal::Succeeded { stage: run.stage, attempt: run.attempt, output },
                    Err(reason) => Signal::Failed { stage: run.stage, attempt: run.attempt, reason, retryable: true },
                },
            };
            signal(svc, &run.job, &sig).await?;
        }
    }
    Ok(())
}

/// Reads the stage manifest a successful worker wrote and records its artifact.
async fn record_output(svc: &Services, run: &StageRun) -> Result<std::result::Result<StageOutput, String>> {
    let key = stage_manifest_key(run);
    let bytes = match svc.store.get(&key).await {
        Ok(b) => b,
        Err(PortError::NotFound(_)) => return Ok(Err(format!("the worker exited 0 without writing {key}"))),
        Err(e) => return Err(e.into()),
    };
    let m: StageManifest = serde_json::from_slice(&bytes).map_err(|e| HandlerError::Invalid(format!("{key}: {e}")))?;
    let Some(j) = svc.meta.get_job(&run.job).await? else { return Ok(Err("job vanished".into())) };
    let runtime = m.metadata["runtime"].as_str().unwrap_or("onnxruntime").to_owned();
    let record = ArtifactRecord {
        id: artifact_id(&run.job, run.stage),
        job: run.job.clone(),
        stage: run.stage,
        model_id: format!("{}.{}", j.project, j.model),
        runtime,
        key: m.output.artifact_key.clone(),
        metadata_key: m.output.metadata_key.clone(),
        sha256: m.output.sha256.clone(),
        size_bytes: m.output.size_bytes,
        score: score(&m.metadata),
        eligible: eligible(&m.metadata),
        metadata: m.metadata,
        created_at: svc.clock.now(),
    };
    let cohorts = cohort_breaches(svc, &j, run).await?;
    let alert = record.metadata["missed_constraints"].as_array().is_some_and(|a| !a.is_empty())
        || record.metadata["flags"].as_array().is_some_and(|a| !a.is_empty())
        || !cohorts.is_empty();
    // A duplicated SUCCEEDED delivery finds the attempt already recorded: no second alert.
    // The id names the stage attempt, so a replay after a crash here is dropped downstream.
    let recorded = j.stages.get(run.stage).is_some_and(|s| s.attempt == run.attempt && s.state == StageState::Succeeded);
    if alert && !recorded {
        let detail = serde_json::json!({ "artifact": record.id, "missed_constraints": record.metadata["missed_constraints"], "flags": record.metadata["flags"], "cohort_regressions": cohorts });
        let mut ev = event(&j, EventKind::QualityAlert, svc.clock.now(), detail);
        ev.id = format!("evt_{}_s{}a{}_{}", j.id.trim_start_matches("job_"), run.stage, run.attempt, EventKind::QualityAlert.as_str());
        svc.bus.publish(&ev).await?;
    }
    svc.meta.put_artifact(&record).await?;
    Ok(Ok(m.output))
}

/// Cohorts of the stage's analysis whose metric dropped beyond the recipe's per-cohort
/// threshold (`report.cohort_max_drop_pct`, else `constraints.max_metric_drop_pct`), one line each.
async fn cohort_breaches(svc: &Services, j: &Job, run: &StageRun) -> Result<Vec<String>> {
    let key = format!("artifacts/{}/{}/attempt-{}/analysis.json", run.job, run.stage, run.attempt);
    let analysis: tamp_domain::results::Analysis = match svc.store.get(&key).await {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%key, error = %e, "analysis.json unreadable: no cohort check for this stage");
                return Ok(Vec::new());
            }
        },
        Err(PortError::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let Ok(recipe) = Recipe::from_yaml(&j.recipe_yaml) else { return Ok(Vec::new()) };
    let limit = recipe.report.cohort_max_drop_pct.unwrap_or(recipe.constraints.max_metric_drop_pct);
    Ok(analysis
        .cohorts
        .iter()
        .filter(|c| c.drop_pct > limit)
        .map(|c| format!("cohort {}: {} {:.4} → {:.4} (−{:.2} %, limit {limit:.2} %)", c.cohort, analysis.metric, c.baseline, c.chosen, c.drop_pct))
        .collect())
}

/// How long a stage may stay recorded as submitted or running while the runner has no
/// record of its run before reconcile fails the attempt (retryably): Batch forgot it, or its
/// submission was lost with the process that made it.
pub const ORPHAN_AFTER_S: u64 = 15 * 60;

/// Repairs what lost messages leave behind, from the state alone (every few minutes on AWS,
/// from an EventBridge schedule): each submitted or running stage attempt is looked up in the
/// runner. A finished run whose state-change event was lost is delivered now (its manifest or
/// failure record decides, as for the event); a submitted attempt the runner does not have is
/// submitted (the submit was lost); one it has not had for [`ORPHAN_AFTER_S`] fails
/// retryably. Jobs with effects still in their outbox have them carried out. Returns the
/// number of stages and outboxes acted on.
pub async fn reconcile(svc: &Services) -> Result<usize> {
    let mut n = 0;
    let now = svc.clock.now();
    for j in svc.meta.list_jobs(Some(JobState::Running), 1000).await? {
        for s in j.stages.iter().filter(|s| matches!(s.state, StageState::Submitted | StageState::Running) && s.not_before.is_none_or(|t| t <= now)) {
            let run = StageRun { job: j.id.clone(), stage: s.index, attempt: s.attempt, device: s.device };
            let msg = match svc.runner.observe(&run).await? {
                Observed::Queued | Observed::Is(RunStatus::Running) => continue,
                Observed::Is(status) => Message::Batch { run, status, at: now },
                Observed::Absent if s.state == StageState::Submitted && now.saturating_sub(s.updated_at) < ORPHAN_AFTER_S => {
                    svc.runner.submit(&run).await?;
                    n += 1;
                    continue;
                }
                Observed::Absent if now.saturating_sub(s.updated_at) < ORPHAN_AFTER_S => continue,
                Observed::Absent => {
                    let reason = format!("the batch runner has no record of {} after {} s; retried as a new attempt", run.name(), now - s.updated_at);
                    Message::Batch { run, status: RunStatus::Failed { reason, retryable: true }, at: now }
                }
            };
            orchestrate(svc, &msg).await?;
            n += 1;
        }
    }
    // Finished jobs: the most recent ones only (newest first). An outbox left on a finished
    // job is drained by its message's redelivery; this catches what redelivery missed,
    // without reading every finished job on each run.
    for state in [JobState::Queued, JobState::Planning, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        let recent = if state.is_terminal() { 200 } else { 1000 };
        for j in svc.meta.list_jobs(Some(state), recent).await?.into_iter().filter(|j| !j.outbox.is_empty()) {
            drain(svc, j).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Restart recovery (`tamp serve` starting on an existing data folder, whose in-process queue
/// and worker table died with the last process): every unfinished job is driven on from what
/// the store shows. A stage whose worker wrote its manifest is recorded as succeeded (the
/// work is not redone); one with a failure record is recorded as failed; one with neither is
/// submitted again under the same run name. Queued jobs are advanced. Returns the number of
/// stages and jobs acted on.
pub async fn recover(svc: &Services) -> Result<usize> {
    let mut n = 0;
    for state in [JobState::Queued, JobState::Planning] {
        for j in svc.meta.list_jobs(Some(state), 100_000).await? {
            send(svc, &Message::Advance { job: j.id.clone() }, Duration::ZERO).await?;
            n += 1;
        }
    }
    let now = svc.clock.now();
    for j in svc.meta.list_jobs(Some(JobState::Running), 100_000).await? {
        for s in j.stages.iter().filter(|s| matches!(s.state, StageState::Submitted | StageState::Running)) {
            let run = StageRun { job: j.id.clone(), stage: s.index, attempt: s.attempt, device: s.device };
            let status = if svc.store.head(&stage_manifest_key(&run)).await?.is_some() {
                Some(RunStatus::Succeeded)
            } else {
                match svc.store.get(&stage_error_key(&run)).await {
                    Ok(b) => serde_json::from_slice::<StageFailure>(&b).ok().map(|f| RunStatus::Failed { reason: f.reason, retryable: f.retryable }),
                    Err(PortError::NotFound(_)) => None,
                    Err(e) => return Err(e.into()),
                }
            };
            match status {
                Some(status) => send(svc, &Message::Batch { run, status, at: now }, Duration::ZERO).await?,
                None => match s.not_before.filter(|t| *t > now) {
                    Some(t) => send(svc, &Message::Submit { run }, Duration::from_secs(t - now)).await?,
                    None => svc.runner.submit(&run).await?,
                },
            }
            n += 1;
        }
        // A job whose next stage was never planned (the server died between two writes).
        send(svc, &Message::Advance { job: j.id.clone() }, Duration::ZERO).await?;
    }
    Ok(n)
}

pub use crate::exports::ExportOutput;
pub use crate::purge::{Deleted, Scope, delete_job, delete_scope};
