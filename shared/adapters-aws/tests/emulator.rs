//! The ports' conformance suite against the AWS emulator (moto) that `make test` starts and
//! points `AWS_ENDPOINT_URL` at. Run through `make test`; plain `cargo test` without the
//! emulator fails here with that advice rather than skipping silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tamp_adapters_aws::{DynamoStore, S3Store, SqsQueue, aws_config, unique};

fn require_emulator() {
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run the tests with `make test`, which starts the moto emulator on 127.0.0.1"
    );
}

#[tokio::test]
async fn s3_object_store_conformance() {
    require_emulator();
    let cfg = aws_config().await;
    let store = S3Store::new(&cfg, unique("tamp-test"));
    store.create_bucket().await.unwrap();
    tamp_ports::conformance::object_store(&store).await;
}

#[tokio::test]
async fn sqs_queue_conformance() {
    require_emulator();
    let cfg = aws_config().await;
    let q = SqsQueue::create(&cfg, &unique("tamp-test"), 3).await.unwrap();
    tamp_ports::conformance::queue(&q, 3).await;
}

#[tokio::test]
async fn dynamodb_metadata_store_conformance() {
    require_emulator();
    let cfg = aws_config().await;
    let store = DynamoStore::new(&cfg, unique("tamp-test"));
    store.create_table().await.unwrap();
    tamp_ports::conformance::metadata_store(&store).await;
}

/// An event published on the bus reaches a rule's SQS target with Tamp's shape intact.
#[tokio::test]
async fn eventbridge_bus_delivers_to_a_rule_target() {
    use tamp_ports::{EventBus, Queue, TampEvent};
    require_emulator();
    let cfg = aws_config().await;
    let name = unique("tamp-bus");
    let bus = tamp_adapters_aws::EventBridgeBus::new(&cfg, &name);
    bus.client().create_event_bus().name(&name).send().await.unwrap();
    let q = SqsQueue::create(&cfg, &unique("tamp-events"), 3).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&cfg);
    let arn = sqs
        .get_queue_attributes()
        .queue_url(q.url())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    bus.client()
        .put_rule()
        .name("to-notify")
        .event_bus_name(&name)
        .event_pattern(r#"{"source":["tamp"],"detail-type":[{"prefix":"tamp.job."}]}"#)
        .send()
        .await
        .unwrap();
    bus.client()
        .put_targets()
        .rule("to-notify")
        .event_bus_name(&name)
        .targets(aws_sdk_eventbridge::types::Target::builder().id("q").arn(arn).build().unwrap())
        .send()
        .await
        .unwrap();
    let event = TampEvent {
        id: "evt_1".into(),
        detail_type: "tamp.job.succeeded".into(),
        time: 1,
        project: "p".into(),
        model: "m".into(),
        version: "v1".into(),
        job: "job_1".into(),
        state: "succeeded".into(),
        reason: None,
        link: "/jobs/job_1".into(),
        detail: serde_json::json!({ "outputs": [] }),
    };
    bus.publish(&event).await.unwrap();
    // A stage event does not match the rule.
    bus.publish(&TampEvent { detail_type: "tamp.stage.started".into(), ..event.clone() }).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(q.receive(10, std::time::Duration::from_secs(30)).await.unwrap());
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let envelope: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(envelope["source"], "tamp");
    assert_eq!(envelope["detail-type"], "tamp.job.succeeded");
    let back: TampEvent = serde_json::from_value(envelope["detail"].clone()).unwrap();
    assert_eq!(back, event);
}

/// Submitting a run twice starts one Batch job with our ids in its parameters; cancelling a
/// finished run changes nothing. (The emulator completes jobs at once: no Docker.)
#[tokio::test]
async fn batch_runner_submits_once_per_run_name() {
    use tamp_ports::{BatchRunner, StageRun};
    require_emulator();
    let queue = std::env::var("TAMP_TEST_BATCH_QUEUE").expect("scripts/moto_setup.py sets TAMP_TEST_BATCH_QUEUE");
    let jobdef = std::env::var("TAMP_TEST_BATCH_JOBDEF").expect("scripts/moto_setup.py sets TAMP_TEST_BATCH_JOBDEF");
    let cfg = aws_config().await;
    let runner = tamp_adapters_aws::AwsBatchRunner::new(&cfg, &queue, &jobdef);
    let run = StageRun { job: unique("job"), stage: 0, attempt: 1, device: Default::default() };
    runner.submit(&run).await.unwrap();
    runner.submit(&run).await.unwrap();
    let found = runner.find(&run).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let batch = aws_sdk_batch::Client::new(&cfg);
    let described = batch.describe_jobs().jobs(&found[0].0).send().await.unwrap();
    let job = &described.jobs()[0];
    assert_eq!(job.job_name(), Some(run.name().as_str()));
    assert_eq!(job.parameters().unwrap()["job"], run.job);
    runner.cancel(&run).await.unwrap();
    let next = StageRun { attempt: 2, ..run.clone() };
    runner.submit(&next).await.unwrap();
    assert_eq!(runner.find(&next).await.unwrap().len(), 1, "a new attempt is a new Batch job");
}

/// Large files go up in parts (with SSE-KMS headers when a key is configured), and the
/// conditional variant writes once: a second identical upload is `Exists`, not an error.
#[tokio::test]
async fn s3_multipart_uploads_with_kms_and_write_once() {
    use tamp_ports::{ObjectStore, PutOutcome};
    require_emulator();
    let cfg = aws_config().await;
    let store = S3Store::new(&cfg, unique("tamp-test")).with_kms_key(Some("alias/tamp-test".into())).with_multipart(5 << 20, 5 << 20);
    store.create_bucket().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let bytes: Vec<u8> = (0..(11u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();

    store.put_file("uploads/p/m/v1/model.onnx", &path).await.unwrap();
    assert_eq!(store.get("uploads/p/m/v1/model.onnx").await.unwrap(), bytes);
    let head = store.client().head_object().bucket(store.bucket()).key("uploads/p/m/v1/model.onnx").send().await.unwrap();
    assert!(head.e_tag().unwrap().contains("-3"), "three parts: {:?}", head.e_tag());
    assert_eq!(head.server_side_encryption(), Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms));
    assert_eq!(head.ssekms_key_id(), Some("alias/tamp-test"));

    assert_eq!(store.put_if_absent_file("artifacts/j/0/abc.onnx", &path).await.unwrap(), PutOutcome::Created);
    assert_eq!(store.put_if_absent_file("artifacts/j/0/abc.onnx", &path).await.unwrap(), PutOutcome::Exists);
    assert_eq!(store.get("artifacts/j/0/abc.onnx").await.unwrap().len(), bytes.len());
    let small = dir.path().join("small.json");
    std::fs::write(&small, b"{}").unwrap();
    assert_eq!(store.put_if_absent_file("artifacts/j/0/abc.json", &small).await.unwrap(), PutOutcome::Created);
    assert_eq!(store.put_if_absent_file("artifacts/j/0/abc.json", &small).await.unwrap(), PutOutcome::Exists);
    let uploads = store.client().list_multipart_uploads().bucket(store.bucket()).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "no parts left behind");
}
