//! At-least-once delivery, tried the way it fails in production: a crash at each boundary
//! (after the job is created; after a state change is committed and before its effects; a
//! Batch terminal event that never arrives; a SUCCEEDED event delivered twice; one webhook
//! target down) ends with the job finished exactly once, one artifact, one `job.succeeded`
//! and one notification per target.
//!
//! The handlers run over the local adapters (folder store, SQLite, in-memory queue). The bus
//! records what was published and can be told to fail once on an event kind, as a PutEvents
//! call that times out would; the runner records submissions and answers `observe` from what
//! the test played, as Batch's ListJobs would. Webhook targets are real HTTP servers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tamp_adapters_local::{FolderStore, MemoryQueue, SqliteStore};
use tamp_control::handlers::{self, Ingested};
use tamp_control::notify::Webhooks;
use tamp_control::{Services, StageManifest, stage_manifest_key};
use tamp_domain::job::{JobState, RetryPolicy, StageOutput};
use tamp_ports::{BatchRunner, Clock, EventBus, Message, MetadataStore, ObjectStore, Observed, PortError, Queue, RunStatus, StageRun, TampEvent};

const RECIPE: &str = "policy:\n  name: p\n  stages:\n    - ptq: {}\n";

/// Publishes into a list; fails the first publish of `fail_once` (a detail-type).
#[derive(Default)]
struct Bus {
    events: Mutex<Vec<TampEvent>>,
    fail_once: Mutex<Option<String>>,
}

impl Bus {
    fn kinds(&self, kind: &str) -> Vec<TampEvent> {
        self.events.lock().unwrap().iter().filter(|e| e.detail_type == format!("tamp.{kind}")).cloned().collect()
    }
    fn fail_next(&self, kind: &str) {
        *self.fail_once.lock().unwrap() = Some(format!("tamp.{kind}"));
    }
}

#[async_trait]
impl EventBus for Bus {
    async fn publish(&self, event: &TampEvent) -> tamp_ports::Result<()> {
        let mut f = self.fail_once.lock().unwrap();
        if f.as_deref() == Some(event.detail_type.as_str()) {
            *f = None;
            return Err(PortError::Unavailable("PutEvents timed out (injected)".into()));
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// Submissions recorded; `observe` answers from `status` (what Batch would list).
#[derive(Default)]
struct Runner {
    submitted: Mutex<Vec<StageRun>>,
    status: Mutex<HashMap<String, Observed>>,
    /// Export stages submitted: (job, runtime).
    exports: Mutex<Vec<(String, String)>>,
}

#[async_trait]
impl BatchRunner for Runner {
    async fn submit(&self, run: &StageRun) -> tamp_ports::Result<()> {
        let mut s = self.submitted.lock().unwrap();
        if !s.contains(run) {
            s.push(run.clone());
            self.status.lock().unwrap().insert(run.name(), Observed::Queued);
        }
        Ok(())
    }
    async fn observe(&self, run: &StageRun) -> tamp_ports::Result<Observed> {
        Ok(self.status.lock().unwrap().get(&run.name()).cloned().unwrap_or(Observed::Absent))
    }
    async fn cancel(&self, _run: &StageRun) -> tamp_ports::Result<()> {
        Ok(())
    }
    async fn submit_export(&self, job: &str, runtime: &str) -> tamp_ports::Result<()> {
        self.exports.lock().unwrap().push((job.into(), runtime.into()));
        Ok(())
    }
}

struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct World {
    svc: Services,
    bus: Arc<Bus>,
    runner: Arc<Runner>,
    queue: Arc<MemoryQueue>,
    clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with(RECIPE).await
}

async fn world_with(recipe: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FolderStore::new(dir.path().join("data"), "http://localhost", b"0123456789abcdef0123456789abcdef").unwrap());
    let meta = Arc::new(SqliteStore::open(&dir.path().join("meta.db")).unwrap());
    let (bus, runner, queue) = (Arc::new(Bus::default()), Arc::new(Runner::default()), Arc::new(MemoryQueue::new(10)));
    let clock = Arc::new(TestClock(AtomicU64::new(1_800_000_000)));
    let svc = Services {
        store: store.clone(),
        meta,
        queue: queue.clone(),
        runner: runner.clone(),
        bus: bus.clone(),
        clock: clock.clone(),
        retry: RetryPolicy { max_attempts: 3, base_delay_s: 0, max_delay_s: 0 },
        guards: Default::default(),
    };
    for (name, bytes) in [("model.onnx", b"onnx".to_vec()), ("calib.npz", b"npz".to_vec()), ("recipe.yaml", recipe.as_bytes().to_vec())] {
        store.put(&format!("uploads/p/m/v1/{name}"), bytes).await.unwrap();
    }
    World { svc, bus, runner, queue, clock, _dir: dir }
}

impl World {
    /// Runs the orchestrator over every queued message (a failed one stays for redelivery).
    async fn pump(&self) {
        for _ in 0..20 {
            let batch = self.queue.receive(10, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return;
            }
            for d in batch {
                let msg: Message = serde_json::from_str(&d.body).unwrap();
                if handlers::orchestrate(&self.svc, &msg).await.is_ok() {
                    self.queue.ack(&d.receipt).await.unwrap();
                }
            }
        }
    }

    async fn job(&self) -> tamp_domain::job::Job {
        let jobs = self.svc.meta.list_jobs(None, 10).await.unwrap();
        assert_eq!(jobs.len(), 1, "exactly one job");
        jobs.into_iter().next().unwrap()
    }

    /// Plays the worker of the only submitted run: writes its manifest (with `missed`
    /// constraints, if any) and marks it succeeded in the runner; returns the Batch message.
    async fn finish_run(&self, missed: &[&str]) -> Message {
        let run = self.runner.submitted.lock().unwrap().last().cloned().expect("a submitted run");
        let output = StageOutput {
            artifact_key: format!("artifacts/{}/0/model.onnx", run.job),
            sha256: "ab".into(),
            size_bytes: 4,
            metadata_key: "m.json".into(),
            warnings: vec![],
        };
        let manifest = StageManifest { output, metadata: serde_json::json!({ "runtime": "onnxruntime", "missed_constraints": missed, "flags": [] }) };
        self.svc.store.put(&stage_manifest_key(&run), serde_json::to_vec(&manifest).unwrap()).await.unwrap();
        self.runner.status.lock().unwrap().insert(run.name(), Observed::Is(RunStatus::Succeeded));
        Message::Batch { run, status: RunStatus::Succeeded, at: self.clock.now() }
    }

    async fn started(&self) {
        let run = self.runner.submitted.lock().unwrap().last().cloned().unwrap();
        self.runner.status.lock().unwrap().insert(run.name(), Observed::Is(RunStatus::Running));
        handlers::orchestrate(&self.svc, &Message::Batch { run, status: RunStatus::Running, at: self.clock.now() }).await.unwrap();
    }

    /// The job finished once: succeeded, one artifact, one `job.succeeded`.
    async fn finished_once(&self) {
        let j = self.job().await;
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        assert!(j.outbox.is_empty(), "effects left undone: {:?}", j.outbox);
        assert_eq!(self.bus.kinds("job.succeeded").len(), 1, "one job.succeeded");
        assert_eq!(self.bus.kinds("job.created").len(), 1, "one job.created");
        assert!(self.svc.meta.get_artifact(&handlers::artifact_id(&j.id, 0)).await.unwrap().is_some(), "the artifact is recorded");
        assert_eq!(self.runner.submitted.lock().unwrap().len(), 1, "one run");
    }
}

/// The upload's first delivery dies after the job is created (its `job.created` never went
/// out, no `Advance` was sent). The redelivery is a duplicate, and still drives the job on.
#[tokio::test]
async fn a_crash_after_create_job_does_not_strand_the_job() {
    let w = world().await;
    w.bus.fail_next("job.created");
    assert!(handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.is_err());
    assert_eq!(w.job().await.state, JobState::Queued);
    let again = handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    assert!(matches!(again, Ingested::Duplicate(_)), "{again:?}");
    w.pump().await;
    assert_eq!(w.job().await.state, JobState::Running, "the redelivery sent Advance");
    let done = w.finish_run(&[]).await;
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    w.finished_once().await;
}

/// `job.succeeded` fails to publish after the state is committed: the message is redelivered,
/// finds nothing new to apply, and publishes the event from the outbox — once.
#[tokio::test]
async fn effects_committed_with_the_state_survive_a_failed_publish() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    w.started().await;
    let done = w.finish_run(&[]).await;
    w.bus.fail_next("job.succeeded");
    assert!(handlers::orchestrate(&w.svc, &done).await.is_err());
    let j = w.job().await;
    assert_eq!(j.state, JobState::Succeeded);
    assert_eq!(j.outbox.len(), 2, "stage.succeeded went out, then job.succeeded failed: both stay until drained");
    assert!(w.bus.kinds("job.succeeded").is_empty());
    handlers::orchestrate(&w.svc, &done).await.unwrap(); // the redelivery
    handlers::orchestrate(&w.svc, &done).await.unwrap(); // and a duplicate of it
    w.finished_once().await;
    let stage = w.bus.kinds("stage.succeeded");
    assert_eq!(stage.len(), 2, "replayed from the outbox…");
    assert_eq!(stage[0].id, stage[1].id, "…under the same id, which consumers drop");
}

/// The same crash, repaired by reconcile instead of a redelivery.
#[tokio::test]
async fn reconcile_drains_an_outbox_left_behind() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    let done = w.finish_run(&[]).await;
    w.bus.fail_next("job.succeeded");
    assert!(handlers::orchestrate(&w.svc, &done).await.is_err());
    assert!(handlers::reconcile(&w.svc).await.unwrap() >= 1);
    w.finished_once().await;
}

/// Batch's SUCCEEDED event is lost: the stage stays running until reconcile asks the runner,
/// which says the run succeeded; the manifest is recorded as the event would have.
#[tokio::test]
async fn a_lost_terminal_batch_event_is_found_by_reconcile() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    w.started().await;
    handlers::reconcile(&w.svc).await.unwrap();
    assert_eq!(w.job().await.state, JobState::Running, "a running run is left alone");
    let _lost = w.finish_run(&[]).await;
    assert_eq!(handlers::reconcile(&w.svc).await.unwrap(), 1);
    w.finished_once().await;
}

/// A stage recorded as running whose run the runner no longer has is failed retryably after
/// the grace period, and the next attempt is submitted.
#[tokio::test]
async fn a_running_stage_the_runner_forgot_is_retried() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    w.started().await;
    w.runner.status.lock().unwrap().clear(); // Batch's record is gone
    handlers::reconcile(&w.svc).await.unwrap();
    assert_eq!(w.job().await.stages[0].attempt, 1, "not before the grace period");
    w.clock.0.fetch_add(handlers::ORPHAN_AFTER_S + 1, Ordering::SeqCst);
    handlers::reconcile(&w.svc).await.unwrap();
    w.pump().await;
    let j = w.job().await;
    assert_eq!((j.state, j.stages[0].attempt), (JobState::Running, 2), "{j:?}");
    assert!(j.stages[0].reason.as_deref().unwrap_or("").contains("no record"), "{:?}", j.stages[0].reason);
    assert_eq!(w.runner.submitted.lock().unwrap().last().unwrap().attempt, 2);
}

/// A SUCCEEDED event delivered twice raises one `quality.alert`.
#[tokio::test]
async fn a_duplicated_success_alerts_once() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    let done = w.finish_run(&["max_metric_drop_pct"]).await;
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    assert_eq!(w.bus.kinds("quality.alert").len(), 1);
    w.finished_once().await;
}

/// A webhook receiver that answers 503 to its first `fail` requests, then 200; counts the
/// requests it accepted.
async fn receiver(fail: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::new(Mutex::new(0usize));
    let (g, s) = (got.clone(), seen.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                let mut n = s.lock().unwrap();
                *n += 1;
                if *n <= fail {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                g.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// One target down: the retried event reaches only that target, and a duplicated event
/// reaches nobody twice. The error names the target without its URL.
#[tokio::test]
async fn notify_delivers_once_per_target() {
    let w = world().await;
    let ((ok_url, ok_got), (flaky_url, flaky_got)) = (receiver(0).await, receiver(1).await);
    let hooks = Webhooks::new(vec![ok_url, flaky_url.clone()], b"0123456789abcdef".to_vec());
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    let done = w.finish_run(&[]).await;
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    let event = w.bus.kinds("job.succeeded").remove(0);
    let ledger: &dyn MetadataStore = w.svc.meta.as_ref();
    let e = hooks.deliver_once(&event, ledger).await.unwrap_err().to_string();
    assert!(e.contains("webhook target") && !e.contains(&flaky_url), "{e}");
    assert_eq!(hooks.deliver_once(&event, ledger).await.unwrap(), 1, "the retry goes to the target that missed it");
    assert_eq!(hooks.deliver_once(&event, ledger).await.unwrap(), 0, "a duplicate goes nowhere");
    assert_eq!((ok_got.lock().unwrap().len(), flaky_got.lock().unwrap().len()), (1, 1));
}

/// A stage whose analysis shows a cohort beyond the recipe's threshold raises one
/// `quality.alert` naming the cohort (not again on a duplicate delivery); when the job ends,
/// the report step renders the HTML and PDF beside `report.json`, and `report.ready` links
/// them with the recommendation.
#[tokio::test]
async fn a_cohort_regression_raises_quality_alert_and_the_report_renders() {
    let w = world().await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    w.started().await;
    let run = w.runner.submitted.lock().unwrap().last().cloned().unwrap();
    let base = format!("artifacts/{}/0/attempt-{}", run.job, run.attempt);
    let measured = |v: f64, p50: f64, size: u64| {
        serde_json::json!({ "metric": "top1", "value": v, "latency_ms_p50": p50, "latency_ms_p95": p50, "throughput_b32": 1000.0 / p50,
            "size_bytes": size, "sha256": "ab", "eval_rows": 1000, "macs_per_sample": 1000 })
    };
    let candidate = serde_json::json!({ "id": "c", "stage": 0, "technique": "ptq", "mode": "static", "weights_bits": 8, "activations_bits": 8,
        "calibration": "minmax", "per_channel_weights": true, "float_nodes": [], "file": "candidates/c.onnx", "measured": measured(89.2, 0.05, 90_000),
        "compression_ratio": 3.5, "metric_drop_pct": 0.05, "speedup_p50": 1.4, "faster": true, "missed": [], "flags": [] });
    let outcome =
        serde_json::json!({ "baseline": measured(89.25, 0.07, 311_000), "candidates": [candidate], "chosen": "c", "reason": "r", "objective": "latency" });
    let analysis = serde_json::json!({ "candidate": "c", "metric": "top1",
        "baseline": { "latency_ms_p50": 0.07, "latency_ms_p95": 0.08, "latency_ms_p99": 0.09, "latency_samples_ms": [0.07, 0.08], "peak_memory_mb": 2.0 },
        "chosen": { "latency_ms_p50": 0.05, "latency_ms_p95": 0.06, "latency_ms_p99": 0.07, "latency_samples_ms": [0.05, 0.06], "peak_memory_mb": 1.0 },
        "cohorts": [ { "cohort": 1, "rows": 500, "baseline": 90.0, "chosen": 89.9, "drop_pct": 0.11 },
                     { "cohort": 2, "rows": 500, "baseline": 88.0, "chosen": 84.0, "drop_pct": 4.55 } ] });
    for (name, doc) in [("candidates.json", outcome), ("analysis.json", analysis)] {
        w.svc.store.put(&format!("{base}/{name}"), serde_json::to_vec(&doc).unwrap()).await.unwrap();
    }
    let done = w.finish_run(&[]).await;
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    handlers::orchestrate(&w.svc, &done).await.unwrap(); // a duplicate delivery
    let alerts = w.bus.kinds("quality.alert");
    assert_eq!(alerts.len(), 1, "one alert");
    let lines = alerts[0].detail["cohort_regressions"].as_array().unwrap();
    assert!(lines.len() == 1 && lines[0].as_str().unwrap().starts_with("cohort 2"), "{lines:?}");
    assert!(tamp_control::notify::headline(&alerts[0]).contains("cohort 2"), "the team channel hears which cohort");
    let succeeded = w.bus.kinds("job.succeeded").pop().unwrap();
    handlers::write_report(&w.svc, &succeeded).await.unwrap();
    let job = w.job().await.id;
    let html = String::from_utf8(w.svc.store.get(&handlers::report_doc_key(&job, "html")).await.unwrap()).unwrap();
    assert!(html.contains("Ship with caveats") && html.contains("cohort regression") && html.contains("cohort 2"), "the flag is in the summary");
    assert!(w.svc.store.get(&handlers::report_doc_key(&job, "pdf")).await.unwrap().starts_with(b"%PDF-"));
    let ready = w.bus.kinds("report.ready").pop().unwrap();
    assert_eq!(ready.detail["recommendation"], "ship_with_caveats");
    assert_eq!(ready.detail["formats"]["pdf"], format!("/reports/{job}?format=pdf"));
}

/// The export step's answers, in order: each call takes the next.
struct Scripted(Mutex<Vec<handlers::Result<tamp_control::exports::ExportOutput>>>);

#[async_trait]
impl tamp_control::exports::Exporter for Scripted {
    async fn export(
        &self,
        j: &tamp_domain::job::Job,
        source: &tamp_ports::ArtifactRecord,
        runtime: &str,
    ) -> handlers::Result<tamp_control::exports::ExportOutput> {
        assert_eq!((source.id.as_str(), runtime), (handlers::artifact_id(&j.id, 0).as_str(), "tflite"), "the job's final artifact, for the recipe's target");
        self.0.lock().unwrap().remove(0)
    }
}

fn tflite_output(job: &str) -> tamp_control::exports::ExportOutput {
    tamp_control::exports::ExportOutput {
        runtime: "tflite".into(),
        output: StageOutput {
            artifact_key: format!("artifacts/{job}/0/cd.tflite"),
            sha256: "cd".into(),
            size_bytes: 3,
            metadata_key: "cd.json".into(),
            warnings: vec![],
        },
        metadata: serde_json::json!({ "runtime": "tflite", "schema_version": "TFLite schema 3", "metrics": { "top1_agreement": 1.0 } }),
    }
}

/// A succeeded job whose recipe targets TFLite.
async fn succeeded_for_tflite() -> (World, TampEvent) {
    let w = world_with("policy:\n  name: p\n  stages:\n    - ptq: {}\ntargets: [onnxruntime, tflite]\n").await;
    handlers::ingest(&w.svc, "uploads/p/m/v1/recipe.yaml", "v1").await.unwrap();
    w.pump().await;
    let done = w.finish_run(&[]).await;
    handlers::orchestrate(&w.svc, &done).await.unwrap();
    w.finished_once().await;
    let ev = w.bus.kinds("job.succeeded").remove(0);
    (w, ev)
}

/// The export function on `job.succeeded`, delivered at least once: a transient failure is
/// retried (nothing recorded meanwhile), the export is recorded and announced once however
/// often the event comes, and an artifact over the in-place limit goes to a Batch stage.
#[tokio::test]
async fn the_export_step_records_once_and_retries_transient_failures() {
    use tamp_control::exports::{Exported, export_id, on_job_succeeded};
    let (w, ev) = succeeded_for_tflite().await;
    let j = w.job().await;
    let exporter = Scripted(Mutex::new(vec![Err(PortError::Unavailable("S3 timed out".into()).into()), Ok(tflite_output(&j.id)), Ok(tflite_output(&j.id))]));
    let err = on_job_succeeded(&w.svc, &ev, &exporter, u64::MAX).await.unwrap_err();
    assert!(err.retryable(), "{err}");
    let id = export_id(&handlers::artifact_id(&j.id, 0), "tflite");
    assert!(w.svc.meta.get_artifact(&id).await.unwrap().is_none());
    assert_eq!(on_job_succeeded(&w.svc, &ev, &exporter, u64::MAX).await.unwrap(), vec![("tflite".to_owned(), Exported::InPlace(id.clone()))]);
    assert_eq!(on_job_succeeded(&w.svc, &ev, &exporter, u64::MAX).await.unwrap(), vec![("tflite".to_owned(), Exported::Already(id.clone()))]);
    let a = w.svc.meta.get_artifact(&id).await.unwrap().unwrap();
    assert_eq!((a.runtime.as_str(), a.key.as_str()), ("tflite", format!("artifacts/{}/0/cd.tflite", j.id).as_str()));
    assert_eq!(w.svc.meta.best_artifact("p.m", "tflite").await.unwrap().map(|a| a.id), Some(id), "best?target_runtime=tflite finds it");
    assert_eq!(w.bus.kinds("artifact.exported").len(), 1, "announced once");
    // Other events are not the export step's.
    let mut other = ev.clone();
    other.detail_type = "tamp.job.failed".into();
    assert!(on_job_succeeded(&w.svc, &other, &exporter, u64::MAX).await.unwrap().is_empty());

    // A server that stopped before its export step ran catches up at the next start, once.
    let (w2, _) = succeeded_for_tflite().await;
    assert_eq!(tamp_control::exports::catch_up(&w2.svc, &exporter, u64::MAX, 100).await.unwrap(), 1);
    assert_eq!(tamp_control::exports::catch_up(&w2.svc, &exporter, u64::MAX, 100).await.unwrap(), 0);
    assert_eq!(w2.bus.kinds("artifact.exported").len(), 1);

    // Over the in-place limit: a Batch export stage, nothing converted here.
    let (w, ev) = succeeded_for_tflite().await;
    let j = w.job().await;
    let none = Scripted(Mutex::new(Vec::new()));
    assert_eq!(on_job_succeeded(&w.svc, &ev, &none, 0).await.unwrap(), vec![("tflite".to_owned(), Exported::Submitted)]);
    assert_eq!(w.runner.exports.lock().unwrap().clone(), vec![(j.id.clone(), "tflite".to_owned())]);
}

/// A file that will never be made (the runtime cannot take the chosen candidate): the job
/// stays succeeded with its ONNX artifact untouched, the reason is stored, and the team hears
/// it as a quality alert naming the runtime.
#[tokio::test]
async fn an_export_that_cannot_be_made_is_reported_and_damages_nothing() {
    use tamp_control::exports::{Exported, export_error_key, export_id, on_job_succeeded};
    let (w, ev) = succeeded_for_tflite().await;
    let j = w.job().await;
    let before = w.svc.meta.get_artifact(&handlers::artifact_id(&j.id, 0)).await.unwrap().unwrap();
    let why = "tflite: node 'attn' (Einsum): no TFLite builtin";
    let exporter = Scripted(Mutex::new(vec![Err(handlers::HandlerError::Invalid(why.into()))]));
    assert_eq!(on_job_succeeded(&w.svc, &ev, &exporter, u64::MAX).await.unwrap(), vec![("tflite".to_owned(), Exported::Failed(why.into()))]);
    assert!(w.svc.meta.get_artifact(&export_id(&before.id, "tflite")).await.unwrap().is_none());
    assert_eq!(w.svc.meta.get_artifact(&before.id).await.unwrap().unwrap(), before, "the ONNX artifact is untouched");
    assert_eq!(w.job().await.state, JobState::Succeeded);
    let doc: serde_json::Value = serde_json::from_slice(&w.svc.store.get(&export_error_key(&j.id, "tflite")).await.unwrap()).unwrap();
    assert_eq!(doc["reason"], why);
    let alerts = w.bus.kinds("quality.alert");
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].detail["export_failed"]["runtime"], "tflite", "{:?}", alerts[0]);
    // Delivered again: not tried again, not announced again.
    let none = Scripted(Mutex::new(Vec::new()));
    assert_eq!(on_job_succeeded(&w.svc, &ev, &none, u64::MAX).await.unwrap(), vec![("tflite".to_owned(), Exported::Failed(why.into()))]);
    assert_eq!(w.bus.kinds("quality.alert").len(), 1);
}
