//! The whole AWS flow against the emulator (moto, started by `make test`): uploads to the
//! bucket → S3 → EventBridge → SQS → ingest → DynamoDB → orchestrator → AWS Batch; the test
//! plays the Batch container by running `tamp-batch-worker` with the submitted parameters,
//! then delivers Batch Job State Change events as EventBridge would; job events go from the
//! team bus to a queue the test hands to the report and notify handlers (as the rules'
//! direct Lambda targets would), and the api handler answers an API Gateway v2 event.
//! Duplicated and out-of-order deliveries and a worker killed mid-upload are part of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use tamp_adapters_aws::{AwsBatchRunner, SqsQueue, aws_config, unique};
use tamp_control::Services;
use tamp_domain::job::RetryPolicy;
use tamp_lambda::{Settings, api, export, ingest, notify, orchestrator, report};
use tamp_ports::StageRun;

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("..")
}

fn sample(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root().join("events").join(name)).unwrap()).unwrap()
}

fn worker_bin() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("tamp-batch-worker")
}

fn require_emulator() {
    assert!(std::env::var_os("AWS_ENDPOINT_URL").is_some(), "AWS_ENDPOINT_URL is not set: run the tests with `make test`, which starts the moto emulator");
}

/// Requests a receiver saw: (path, headers, body).
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

fn receiver() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
            let mut headers = String::new();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                headers.push_str(&h);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            sink.lock().unwrap().push((path, headers, body));
            r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").unwrap();
        }
    });
    (url, seen)
}

/// A team's stack inside the emulator.
struct Stack {
    settings: Settings,
    svc: Services,
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    ingest_q: String,
    orch_q: String,
    tap_q: String,
    ingest_park: SqsQueue,
    orch_park: SqsQueue,
    runner: AwsBatchRunner,
    hooks: Seen,
    webhook_secret: String,
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    let a = sqs.get_queue_attributes().queue_url(url).attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn).send().await.unwrap();
    a.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone()
}

async fn stack() -> Stack {
    require_emulator();
    let cfg = aws_config().await;
    let bucket = unique("tamp-flow");
    let store = tamp_adapters_aws::S3Store::new(&cfg, &bucket);
    store.create_bucket().await.unwrap();
    let s3 = store.client().clone();
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(aws_sdk_s3::types::VersioningConfiguration::builder().status(aws_sdk_s3::types::BucketVersioningStatus::Enabled).build())
        .send()
        .await
        .unwrap();
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .event_bridge_configuration(aws_sdk_s3::types::EventBridgeConfiguration::builder().build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let table = unique("tamp-flow");
    tamp_adapters_aws::DynamoStore::new(&cfg, &table).create_table().await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let ingest_q = SqsQueue::create(&cfg, &unique("tamp-ingest"), 5).await.unwrap();
    let orch_q = SqsQueue::create(&cfg, &unique("tamp-orch"), 5).await.unwrap();
    let tap_q = SqsQueue::create(&cfg, &unique("tamp-tap"), 5).await.unwrap();
    let eb = aws_sdk_eventbridge::Client::new(&cfg);
    // S3 uploads (default bus) → the ingest queue, with the Terraform module's own key pattern.
    let rule = unique("tamp-uploads");
    let module = std::fs::read_to_string(root().join("infra/modules/tamp/events.tf")).unwrap();
    let key = module.split("key = [{ wildcard = \"").nth(1).and_then(|r| r.split('"').next()).expect("the module's uploads rule matches keys by wildcard");
    assert_eq!(key, "uploads/*/recipe.yaml");
    let pattern = serde_json::json!({ "source": ["aws.s3"], "detail-type": ["Object Created"], "detail": { "bucket": { "name": [bucket] }, "object": { "key": [{ "wildcard": key }] } } });
    eb.put_rule().name(&rule).event_pattern(pattern.to_string()).send().await.unwrap();
    eb.put_targets()
        .rule(&rule)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("ingest").arn(queue_arn(&sqs, ingest_q.url()).await).build().unwrap())
        .send()
        .await
        .unwrap();
    // Tamp's events (team bus) → a queue the test hands to report and notify.
    let bus = unique("tamp-bus");
    eb.create_event_bus().name(&bus).send().await.unwrap();
    let tap_rule = unique("tamp-tap");
    eb.put_rule().name(&tap_rule).event_bus_name(&bus).event_pattern(r#"{"source":["tamp"]}"#).send().await.unwrap();
    eb.put_targets()
        .rule(&tap_rule)
        .event_bus_name(&bus)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("tap").arn(queue_arn(&sqs, tap_q.url()).await).build().unwrap())
        .send()
        .await
        .unwrap();
    let (hook_url, hooks) = receiver();
    let webhook_secret = "a-team-secret-of-some-length".to_owned();
    // The targets and the HMAC key live in an SSM SecureString, as the module stores them;
    // the functions' settings carry only its name.
    let parameter = format!("/{}/notify/webhooks", unique("tamp"));
    let secrets = serde_json::json!({
        "slack_webhook_url": format!("{hook_url}/slack"),
        "teams_webhook_url": format!("{hook_url}/teams"),
        "webhook_urls": [format!("{hook_url}/hook")],
        "webhook_secret": webhook_secret,
    });
    aws_sdk_ssm::Client::new(&cfg)
        .put_parameter()
        .name(&parameter)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .value(secrets.to_string())
        .send()
        .await
        .unwrap();
    let settings = Settings {
        bucket,
        table,
        queue_url: orch_q.url().to_owned(),
        dlq_url: String::new(),
        event_bus: bus,
        batch_queue: std::env::var("TAMP_TEST_BATCH_QUEUE").unwrap(),
        batch_job_definition: std::env::var("TAMP_TEST_BATCH_JOBDEF").unwrap(),
        batch_gpu_queue: std::env::var("TAMP_TEST_BATCH_GPU_QUEUE").ok(),
        batch_gpu_job_definition: std::env::var("TAMP_TEST_BATCH_GPU_JOBDEF").ok(),
        retry: RetryPolicy { max_attempts: 3, base_delay_s: 0, max_delay_s: 0 },
        public_url: "https://tamp.example.com".into(),
        rate_limit: 1000,
        secrets_parameter: Some(parameter),
        ..Settings::default()
    }
    .with_secrets()
    .await
    .unwrap();
    assert_eq!(settings.webhook_urls, vec![format!("{hook_url}/hook")], "read from SSM");
    let svc = settings.services().await;
    let runner = settings.batch_runner(&cfg);
    Stack {
        svc,
        s3,
        sqs,
        ingest_q: ingest_q.url().to_owned(),
        orch_q: orch_q.url().to_owned(),
        ingest_park: SqsQueue::new(&cfg, ingest_q.dlq_url(), ingest_q.dlq_url()),
        orch_park: SqsQueue::new(&cfg, orch_q.dlq_url(), orch_q.dlq_url()),
        tap_q: tap_q.url().to_owned(),
        runner,
        hooks,
        webhook_secret,
        settings,
    }
}

impl Stack {
    /// Waits up to `secs` for messages on a queue, as Lambda's SQS poller would, and wraps
    /// them in an SQS event shaped like `events/sqs-ingest.json`'s records.
    async fn poll(&self, url: &str, secs: u64) -> (SqsEvent, Vec<String>) {
        let template = sample("sqs-ingest.json")["Records"][1].clone();
        let mut records = Vec::new();
        let mut receipts = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            let out = self.sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).visibility_timeout(30).send().await.unwrap();
            for m in out.messages() {
                let mut r = template.clone();
                r["messageId"] = m.message_id().unwrap().into();
                r["receiptHandle"] = m.receipt_handle().unwrap().into();
                r["body"] = m.body().unwrap().into();
                records.push(r);
                receipts.push(m.receipt_handle().unwrap().to_owned());
            }
            if !records.is_empty() {
                break;
            }
        }
        (serde_json::from_value(serde_json::json!({ "Records": records })).unwrap(), receipts)
    }

    async fn delete(&self, url: &str, receipts: &[String]) {
        for r in receipts {
            self.sqs.delete_message().queue_url(url).receipt_handle(r).send().await.unwrap();
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.s3.put_object().bucket(&self.settings.bucket).key(key).body(bytes.into()).send().await.unwrap();
    }

    /// Runs the ingest handler on whatever reached the ingest queue; `times` deliveries.
    async fn run_ingest(&self, times: usize) -> usize {
        let (event, receipts) = self.poll(&self.ingest_q, 20).await;
        assert!(!event.records.is_empty(), "the S3 notification never reached the ingest queue");
        let n = event.records.len();
        for _ in 0..times {
            let resp = ingest::handle(&self.svc, Some(&self.ingest_park), event.clone()).await.unwrap();
            assert!(resp.batch_item_failures.is_empty());
        }
        self.delete(&self.ingest_q, &receipts).await;
        n
    }

    /// Hands everything on the orchestrator queue to the orchestrator, `times` deliveries each.
    async fn run_orchestrator(&self, times: usize, secs: u64) -> usize {
        let (event, receipts) = self.poll(&self.orch_q, secs).await;
        let n = event.records.len();
        for _ in 0..times {
            let out = orchestrator::handle(&self.svc, Some(&self.orch_park), serde_json::to_value(&event).unwrap()).await.unwrap();
            let orchestrator::Outcome::Batch(resp) = out else { panic!("not a batch outcome") };
            assert!(resp.batch_item_failures.is_empty());
        }
        self.delete(&self.orch_q, &receipts).await;
        n
    }

    /// Reports `run`'s container as killed (RUNNING, then FAILED with 137), lets the
    /// orchestrator react, and checks that it retried the stage as attempt 2.
    async fn container_died_and_retried(&self, run: &StageRun) {
        self.state_change(run, "RUNNING", None).await;
        self.state_change(run, "FAILED", Some(137)).await;
        self.run_orchestrator(1, 10).await;
        let j = self.svc.meta.get_job(&run.job).await.unwrap().unwrap();
        assert_eq!((j.stages[0].attempt, j.state.as_str()), (2, "running"), "retried: {j:?}");
    }

    /// Sends a Batch Job State Change for `run` to the orchestrator queue, as the rule would.
    async fn state_change(&self, run: &StageRun, status: &str, exit: Option<i64>) {
        let (id, _) = self.runner.find(run).await.unwrap().into_iter().next().expect("no Batch job for the run");
        let mut e = sample("batch-job-state-change.json");
        let d = &mut e["detail"];
        d["jobId"] = id.clone().into();
        d["jobArn"] = format!("arn:aws:batch:us-east-1:123456789012:job/{id}").into();
        d["jobName"] = run.name().into();
        d["status"] = status.into();
        d["parameters"] = serde_json::json!({ "job": run.job, "stage": run.stage.to_string(), "attempt": run.attempt.to_string() });
        match exit {
            Some(code) => {
                d["container"]["exitCode"] = code.into();
                d["attempts"][0]["container"] = serde_json::json!({ "exitCode": code, "reason": "Essential container in task exited" });
            }
            None => {
                d["container"].as_object_mut().unwrap().remove("exitCode");
                d["attempts"] = serde_json::json!([]);
                d.as_object_mut().unwrap().remove("stoppedAt");
            }
        }
        self.sqs.send_message().queue_url(&self.orch_q).message_body(e.to_string()).send().await.unwrap();
    }

    /// Plays the Batch container for `run`: the submitted job's parameters → the worker binary.
    async fn play_container(&self, run: &StageRun, envs: &[(&str, &str)]) -> std::process::ExitStatus {
        let (id, _) = self.runner.find(run).await.unwrap().into_iter().next().expect("no Batch job for the run");
        let batch = aws_sdk_batch::Client::new(&aws_config().await);
        let job = batch.describe_jobs().jobs(&id).send().await.unwrap().jobs()[0].clone();
        let p = job.parameters().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(worker_bin());
        cmd.args(["worker", "--job", &p["job"], "--stage", &p["stage"], "--attempt", &p["attempt"]])
            .current_dir(root())
            .env("TAMP_BUCKET", &self.settings.bucket)
            .env("TAMP_TABLE", &self.settings.table)
            .env("TAMP_SCRATCH", scratch.path())
            .env("AWS_BATCH_JOB_ATTEMPT", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.status().unwrap()
    }

    /// Plays the Batch container of the export stage named `name` (submitted by the export
    /// function): its parameters → `tamp-batch-worker export`, with the team bus to announce on.
    async fn play_export(&self, name: &str) -> std::process::ExitStatus {
        let batch = aws_sdk_batch::Client::new(&aws_config().await);
        let filter = aws_sdk_batch::types::KeyValuesPair::builder().name("JOB_NAME").values(name).build();
        let found = batch.list_jobs().job_queue(&self.settings.batch_queue).filters(filter).send().await.unwrap();
        let summaries = found.job_summary_list();
        assert_eq!(summaries.len(), 1, "one Batch job named {name}");
        let job = batch.describe_jobs().jobs(summaries[0].job_id().unwrap()).send().await.unwrap().jobs()[0].clone();
        let p = job.parameters().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        std::process::Command::new(worker_bin())
            .args(["export", "--job", &p["job"], "--runtime", &p["runtime"]])
            .current_dir(root())
            .env("TAMP_BUCKET", &self.settings.bucket)
            .env("TAMP_TABLE", &self.settings.table)
            .env("TAMP_EVENT_BUS", &self.settings.event_bus)
            .env("TAMP_SCRATCH", scratch.path())
            .status()
            .unwrap()
    }

    /// Hands the team bus's events to the report, notify and export handlers; returns their
    /// kinds.
    async fn run_subscribers(&self, secs: u64) -> Vec<String> {
        let (event, receipts) = self.poll(&self.tap_q, secs).await;
        let targets = self.settings.webhooks().unwrap();
        let mut kinds = Vec::new();
        for r in &event.records {
            let envelope: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            kinds.push(envelope["detail-type"].as_str().unwrap().to_owned());
            report::handle(&self.svc, envelope.clone()).await.unwrap();
            export::handle(&self.settings, &self.svc, envelope.clone()).await.unwrap();
            notify::handle(&targets, self.svc.meta.as_ref(), envelope).await.unwrap();
        }
        self.delete(&self.tap_q, &receipts).await;
        kinds
    }

    async fn only_job(&self) -> tamp_domain::job::Job {
        let jobs = self.svc.meta.list_jobs(None, 100).await.unwrap();
        assert_eq!(jobs.len(), 1, "exactly one job: {:?}", jobs.iter().map(|j| &j.id).collect::<Vec<_>>());
        jobs.into_iter().next().unwrap()
    }
}

fn cnn_file(name: &str) -> Vec<u8> {
    let p = root().join("models/fmnist-resnet8").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `make models`)", p.display()))
}

/// Everything the handlers log in this process, as Lambda's log stream would hold it.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(move || Sink(sink.clone())).try_init();
        buf
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_on_the_emulator() {
    let logs = captured_logs();
    let mut st = stack().await;
    for f in ["model.onnx", "calib.npz", "eval.npz"] {
        st.put(&format!("uploads/vision/fmnist/v1/{f}"), cnn_file(f)).await;
    }
    // Targets ONNX Runtime and TFLite: the export function makes the TFLite file once the job
    // has succeeded (checked below).
    st.put("uploads/vision/fmnist/v1/recipe.yaml", std::fs::read(root().join("configs/policy_examples/ptq_tflite.yaml")).unwrap()).await;

    // S3 → EventBridge → SQS → ingest, delivered twice: one job, stages planned. Only the
    // recipe's upload matches the module's rule (the model and data uploads do not).
    assert_eq!(st.run_ingest(2).await, 1, "the rule passed a non-recipe upload");
    let job = st.only_job().await;
    assert_eq!((job.project.as_str(), job.model.as_str(), job.version.as_str()), ("vision", "fmnist", "v1"));
    assert_eq!(job.stages.len(), 1);

    // The Advance message (the duplicate upload sends it again: it cannot know the first
    // delivery got that far), each delivered twice: one Batch job.
    let advances = st.run_orchestrator(2, 10).await;
    assert!((1..=2).contains(&advances), "{advances} messages");
    let a1 = StageRun { job: job.id.clone(), stage: 0, attempt: 1, device: Default::default() };
    assert_eq!(st.runner.find(&a1).await.unwrap().len(), 1, "one Batch job for one stage attempt");

    // Attempt 1: the container dies after the artifact upload, before the manifest.
    let marker = tempfile::tempdir().unwrap();
    let crash = marker.path().join("crashed");
    let status = st.play_container(&a1, &[("TAMP_FAULT_CRASH_AFTER_ARTIFACT", crash.to_str().unwrap())]).await;
    assert!(!status.success() && crash.exists(), "the fault hook fired: {status}");
    st.container_died_and_retried(&a1).await;

    // Attempt 2 runs to the end; its events arrive out of order and twice, with attempt 1's
    // RUNNING replayed late.
    let a2 = StageRun { attempt: 2, ..a1.clone() };
    assert_eq!(st.runner.find(&a2).await.unwrap().len(), 1);
    assert!(st.play_container(&a2, &[]).await.success());
    st.state_change(&a2, "SUCCEEDED", Some(0)).await;
    st.state_change(&a2, "RUNNING", None).await;
    st.state_change(&a1, "RUNNING", None).await;
    st.state_change(&a2, "SUCCEEDED", Some(0)).await;
    while st.run_orchestrator(1, 3).await > 0 {}
    let j = st.svc.meta.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.state.as_str(), "succeeded", "{j:?}");
    let keys = st.svc.store.list(&format!("artifacts/{}/0/", job.id)).await.unwrap();
    let models: Vec<_> = keys.iter().filter(|k| k.ends_with(".onnx")).collect();
    assert_eq!(models.len(), 1, "one artifact despite the crash and the retry: {keys:?}");

    // job.succeeded on the bus → report, notify and export. The export function converts
    // artifacts up to its in-place limit itself; with the limit at 0 here, it hands this one
    // to a Batch CPU export stage, whose container records and announces the TFLite file.
    st.settings.export_in_place_max_bytes = 0;
    let mut kinds = st.run_subscribers(10).await;
    assert!(kinds.iter().all(|k| k != "tamp.artifact.exported"), "submitted, not exported yet: {kinds:?}");
    assert!(st.play_export(&tamp_adapters_aws::batch::export_run_name(&job.id, "tflite")).await.success());
    kinds.extend(st.run_subscribers(3).await); // report.ready and artifact.exported
    assert!(kinds.iter().any(|k| k == "tamp.job.succeeded") && kinds.iter().any(|k| k == "tamp.report.ready"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "tamp.artifact.exported").count(), 1, "the TFLite export is announced once: {kinds:?}");
    // job.succeeded delivered again (at least once), now under the in-place limit: the
    // export is found recorded, nothing is converted or announced twice.
    st.settings.export_in_place_max_bytes = 256 << 20;
    let again = serde_json::json!({ "source": "tamp", "detail-type": "tamp.job.succeeded", "detail": {
        "id": "evt_replayed", "detail_type": "tamp.job.succeeded", "time": 1, "project": "vision", "model": "fmnist", "version": "v1",
        "job": job.id, "state": "succeeded", "reason": null, "link": "/jobs/x", "detail": null } });
    let done = export::handle(&st.settings, &st.svc, again).await.unwrap();
    assert!(matches!(done.as_slice(), [(r, tamp_control::exports::Exported::Already(_))] if r == "tflite"), "{done:?}");
    let keys = st.svc.store.list(&format!("artifacts/{}/0/", job.id)).await.unwrap();
    assert!(st.svc.store.head(&tamp_control::report_key(&job.id)).await.unwrap().is_some(), "report stored");
    let hooks = st.hooks.lock().unwrap().clone();
    let signed =
        hooks.iter().find(|(p, _, b)| p == "/hook" && String::from_utf8_lossy(b).contains("tamp.job.succeeded")).expect("generic webhook got job.succeeded");
    let sig = signed.1.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-tamp-signature:").map(|v| v.trim().to_owned())).unwrap();
    assert!(tamp_control::notify::verify(st.webhook_secret.as_bytes(), &signed.2, &sig), "valid HMAC");
    let slack: serde_json::Value = hooks
        .iter()
        .find(|(p, _, b)| p == "/slack" && String::from_utf8_lossy(b).contains("succeeded"))
        .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
        .expect("Slack got a message");
    assert!(slack["text"].as_str().unwrap().contains(&job.id), "{slack}");
    assert!(hooks.iter().any(|(p, _, b)| p == "/teams" && String::from_utf8_lossy(b).contains("AdaptiveCard")));

    // GET /models/{id}/best through the api handler, from an API Gateway v2 event.
    let (rec, token) = tamp_control::auth::mint(
        "ci-bot",
        "vision",
        tamp_ports::Role::Viewer,
        Duration::from_secs(600),
        "test",
        tamp_ports::Clock::now(&tamp_ports::SystemClock),
    );
    st.svc.meta.put_token(&rec).await.unwrap();
    let mut event = sample("apigw-v2-get-best.json");
    event["headers"]["authorization"] = format!("Bearer {token}").into();
    let req = lambda_http::request::from_str(&event.to_string()).unwrap();
    let req = req.map(|b| axum::body::Body::from(b.to_vec()));
    let router = api::router(&st.settings, st.svc.clone()).await.unwrap();
    let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let best: serde_json::Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!(best["key"], models[0].as_str(), "{best}");
    let bytes = reqwest::get(best["uri"].as_str().unwrap()).await.unwrap().bytes().await.unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), best["sha256"].as_str().unwrap(), "the presigned link serves the artifact");

    // The same model for LiteRT: best?target_runtime=tflite.
    let mut event = sample("apigw-v2-get-best.json");
    event["headers"]["authorization"] = format!("Bearer {token}").into();
    event["rawQueryString"] = "target_runtime=tflite".into();
    event["queryStringParameters"]["target_runtime"] = "tflite".into();
    let req = lambda_http::request::from_str(&event.to_string()).unwrap().map(|b| axum::body::Body::from(b.to_vec()));
    let router = api::router(&st.settings, st.svc.clone()).await.unwrap();
    let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let tfl: serde_json::Value = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!((tfl["runtime"].as_str(), tfl["precision"].as_str()), (Some("tflite"), Some("int8")), "{tfl}");
    assert!(tfl["metrics"]["top1_agreement"].as_f64().unwrap() >= 0.99, "measured in LiteRT by the export stage: {tfl}");
    assert!(tfl["key"].as_str().unwrap().ends_with(".tflite") && keys.iter().any(|k| k == tfl["key"].as_str().unwrap()), "{tfl}");
    let bytes = reqwest::get(tfl["uri"].as_str().unwrap()).await.unwrap().bytes().await.unwrap();
    assert_eq!(&bytes[4..8], b"TFL3");
    assert_eq!(hex::encode(sha2::Sha256::digest(&bytes)), tfl["sha256"].as_str().unwrap());

    // A Slack URL that stops answering: the failure is logged (as the Lambda runtime logs a
    // handler's error) naming the target by its key, never by the URL, which is the secret.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/services/T0/B0/secret-path", dead.local_addr().unwrap());
    drop(dead);
    let mut broken = st.settings.clone();
    broken.slack_webhook_url = Some(dead_url.clone());
    let event = st.svc.meta.list_records(tamp_control::notify::DELIVERY, "").await.unwrap();
    assert!(!event.is_empty(), "the ledger recorded the deliveries");
    let envelope = serde_json::json!({ "source": "tamp", "detail-type": "tamp.job.succeeded", "detail": {
        "id": "evt_dead_target", "detail_type": "tamp.job.succeeded", "time": 1, "project": "vision", "model": "fmnist", "version": "v1",
        "job": job.id, "state": "succeeded", "reason": null, "link": "/jobs/x", "detail": null } });
    let err = notify::handle(&broken.webhooks().unwrap(), st.svc.meta.as_ref(), envelope).await.unwrap_err();
    tracing::error!(error = %err, "notify failed");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("notify failed") && logs.contains("slack target"), "{logs}");
    for secret in [st.webhook_secret.as_str(), dead_url.as_str(), "/slack", "/teams", "secret-path"] {
        assert!(!logs.contains(secret), "a secret reached the logs: {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uploads_fail_with_the_reason_and_write_nothing_else() {
    let st = stack().await;
    // A recipe with a typo: failed at ingest, naming the file and the line.
    for f in ["model.onnx", "eval.npz"] {
        st.put(&format!("uploads/vision/fmnist/v2/{f}"), cnn_file(f)).await;
    }
    st.put("uploads/vision/fmnist/v2/recipe.yaml", b"policy:\n  name: typo\n  stagez:\n    - ptq: {}\n".to_vec()).await;
    st.run_ingest(1).await;
    let job = st.only_job().await;
    let reason = job.reason.clone().unwrap();
    assert_eq!(job.state.as_str(), "failed");
    assert!(reason.contains("uploads/vision/fmnist/v2/recipe.yaml") && reason.contains("line 3") && reason.contains("stagez"), "{reason}");
    assert_eq!(st.run_orchestrator(1, 3).await, 0, "nothing queued for a failed job");
    assert!(st.runner.find(&StageRun { job: job.id.clone(), stage: 0, attempt: 1, device: Default::default() }).await.unwrap().is_empty(), "nothing submitted");
    assert!(st.svc.store.list(&format!("artifacts/{}/", job.id)).await.unwrap().is_empty());
    let kinds = st.run_subscribers(10).await;
    assert!(kinds.contains(&"tamp.job.failed".to_owned()), "{kinds:?}");
    assert!(st.hooks.lock().unwrap().iter().any(|(p, _, b)| p == "/slack" && String::from_utf8_lossy(b).contains("stagez")), "the team channel heard why");

    // A corrupt model: the container exits 3, the job fails at once with the worker's reason.
    st.put("uploads/vision/broken/v1/model.onnx", b"this is not an ONNX model".to_vec()).await;
    st.put("uploads/vision/broken/v1/eval.npz", cnn_file("eval.npz")).await;
    st.put("uploads/vision/broken/v1/recipe.yaml", std::fs::read(root().join("configs/policy_examples/ptq_8bit.yaml")).unwrap()).await;
    st.run_ingest(1).await;
    let broken = st.svc.meta.list_jobs(None, 10).await.unwrap().into_iter().find(|j| j.model == "broken").unwrap();
    st.run_orchestrator(1, 10).await;
    let run = StageRun { job: broken.id.clone(), stage: 0, attempt: 1, device: Default::default() };
    let status = st.play_container(&run, &[]).await;
    assert_eq!(status.code(), Some(3), "bad input exit status");
    st.state_change(&run, "FAILED", Some(3)).await;
    st.run_orchestrator(1, 10).await;
    let j = st.svc.meta.get_job(&broken.id).await.unwrap().unwrap();
    let reason = j.reason.clone().unwrap_or_default();
    assert_eq!((j.state.as_str(), j.stages[0].attempt), ("failed", 1), "not retried: {j:?}");
    assert!(reason.contains("uploads/vision/broken/v1/model.onnx") && reason.contains("not a valid ONNX model"), "{reason}");
    let written = st.svc.store.list(&format!("artifacts/{}/", broken.id)).await.unwrap();
    assert!(written.iter().all(|k| k.ends_with(".error.json")), "only the failure record: {written:?}");
    assert!(st.svc.meta.best_artifact("vision.broken", "onnxruntime").await.unwrap().is_none());
    let kinds = st.run_subscribers(10).await;
    assert!(kinds.contains(&"tamp.job.failed".to_owned()), "{kinds:?}");

    // A message no handler can ever act on is parked on the queue's DLQ at once, with why.
    st.sqs.send_message().queue_url(&st.orch_q).message_body(r#"{"type": "advance"}"#).send().await.unwrap();
    st.run_orchestrator(1, 10).await;
    let parked = st.sqs.receive_message().queue_url(st.orch_park.url()).message_attribute_names("All").max_number_of_messages(10).send().await.unwrap();
    let m = parked.messages().iter().find(|m| m.body() == Some(r#"{"type": "advance"}"#)).expect("the poison message is on the DLQ");
    let reason = m.message_attributes().and_then(|a| a.get("tamp_reason")).and_then(|v| v.string_value()).unwrap_or_default();
    assert!(reason.contains("not a Tamp message") && reason.contains("job"), "{reason}");
}

/// `tamp jobs submit` against the AWS API with a service-account token (a Tamp token, which
/// API Gateway's JWT authorizer used to refuse): the api function behind an HTTP listener as
/// API Gateway forwards to it, uploads by presigned S3 links (whose responses are empty), the
/// S3 event through EventBridge to ingest, and the CLI finding the job that created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_through_the_aws_api_with_a_service_account_token() {
    let st = stack().await;
    let now = tamp_ports::Clock::now(&tamp_ports::SystemClock);
    let (rec, token) = tamp_control::auth::mint("ci-bot", "vision", tamp_ports::Role::Admin, Duration::from_secs(600), "test", now);
    st.svc.meta.put_token(&rec).await.unwrap();
    let router = api::router(&st.settings, st.svc.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "eval.npz"] {
        std::fs::write(dir.path().join(f), cnn_file(f)).unwrap();
    }
    std::fs::copy(root().join("configs/policy_examples/ptq_8bit.yaml"), dir.path().join("recipe.yaml")).unwrap();
    let tamp = worker_bin().with_file_name("tamp");
    let mut cli = std::process::Command::new(&tamp)
        .args(["jobs", "submit", "--url", &url, "--token", &token, "--project", "vision", "--model", "fmnist", "--version", "v9"])
        .arg("--model-file")
        .arg(dir.path().join("model.onnx"))
        .arg("--eval")
        .arg(dir.path().join("eval.npz"))
        .arg("--recipe")
        .arg(dir.path().join("recipe.yaml"))
        .env("TAMP_CONFIG_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Lambda's SQS poller: hand what reaches the ingest queue to the ingest function until
    // the CLI is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while cli.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the CLI did not finish");
        let (event, receipts) = st.poll(&st.ingest_q, 1).await;
        if !event.records.is_empty() {
            ingest::handle(&st.svc, Some(&st.ingest_park), event).await.unwrap();
            st.delete(&st.ingest_q, &receipts).await;
        }
    }
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let job = st.only_job().await;
    assert_eq!((job.id.as_str(), job.version.as_str(), job.state.as_str()), (id.as_str(), "v9", "queued"), "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_stages_go_to_the_gpu_queue_and_ptq_to_the_cpu_queue() {
    let st = stack().await;
    let recipes = [
        ("gpu", "policy:\n  name: qat\n  stages:\n    - qat: {fine_tune: {epochs: 1}}\n"),
        ("cpu", "policy:\n  name: ptq\n  stages:\n    - ptq: {}\n"),
        // A training stage the recipe keeps on the CPU.
        ("forced", "policy:\n  name: ft-cpu\n  stages:\n    - pruning: {fine_tune: {epochs: 1, device: cpu}}\n"),
    ];
    for (version, recipe) in recipes {
        for (f, from) in [("model.onnx", "model.onnx"), ("calib.npz", "calib.npz"), ("eval.npz", "eval.npz"), ("train.npz", "calib.npz")] {
            st.put(&format!("uploads/vision/route/{version}/{f}"), cnn_file(from)).await;
        }
        st.put(&format!("uploads/vision/route/{version}/recipe.yaml"), recipe.as_bytes().to_vec()).await;
        st.run_ingest(1).await;
    }
    while st.run_orchestrator(1, 5).await > 0 {}
    let batch = aws_sdk_batch::Client::new(&aws_config().await);
    let (cpu_q, gpu_q) = (st.settings.batch_queue.clone(), st.settings.batch_gpu_queue.clone().unwrap());
    for j in st.svc.meta.list_jobs(None, 10).await.unwrap() {
        let want = if j.version == "gpu" { tamp_ports::Device::Gpu } else { tamp_ports::Device::Cpu };
        assert_eq!(j.stages[0].device, want, "{}: the planner's record", j.version);
        let run = StageRun { job: j.id.clone(), stage: 0, attempt: 1, device: want };
        let (on, off, definition) =
            if want == tamp_ports::Device::Gpu { (&gpu_q, &cpu_q, "tamp-test-worker-gpu") } else { (&cpu_q, &gpu_q, "tamp-test-worker:") };
        let named = |q: &str| {
            let filter = aws_sdk_batch::types::KeyValuesPair::builder().name("JOB_NAME").values(run.name()).build();
            batch.list_jobs().job_queue(q).filters(filter).send()
        };
        let found = named(on).await.unwrap();
        assert_eq!(found.job_summary_list().len(), 1, "{}: one Batch job on {on}", j.version);
        assert!(named(off).await.unwrap().job_summary_list().is_empty(), "{}: nothing on {off}", j.version);
        let described = batch.describe_jobs().jobs(found.job_summary_list()[0].job_id().unwrap()).send().await.unwrap();
        let def = described.jobs()[0].job_definition().unwrap_or_default().to_owned();
        assert!(def.contains(definition), "{}: job definition {def}", j.version);
        assert_eq!(st.runner.find(&run).await.unwrap().len(), 1, "the runner observes it where it went");
    }
}

/// Search stages on AWS: trials as Batch jobs, and resuming from the stored journal.
#[path = "aws_search.rs"]
mod search;
