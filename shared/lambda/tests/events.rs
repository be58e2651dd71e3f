//! Every sample payload in `events/` parses into the type its handler takes, survives a
//! serialise → parse round trip unchanged, and means what the handler needs it to mean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lambda_events::sqs::SqsEvent;
use tamp_lambda::{ingest, orchestrator, report};
use tamp_ports::{Message, RunStatus};

fn text(name: &str) -> String {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("../../events");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(name: &str) -> T {
    let parsed: T = serde_json::from_str(&text(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again: T = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::to_value(&again).unwrap(), "{name} changes in a round trip");
    parsed
}

#[test]
fn sqs_ingest_sample_holds_a_test_event_an_eventbridge_upload_and_a_classic_one() {
    let event: SqsEvent = round_trip("sqs-ingest.json");
    let bodies: Vec<serde_json::Value> = event.records.iter().map(|r| serde_json::from_str(r.body.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(bodies[0]["Event"], "s3:TestEvent");
    assert!(ingest::uploads(&bodies[0]).is_empty());
    let eb = ingest::uploads(&bodies[1]);
    assert_eq!(
        eb,
        vec![ingest::Upload {
            bucket: "tamp-example-team".into(),
            key: "uploads/vision/fmnist/v1/recipe.yaml".into(),
            version: "b1946ac92492d2347c6235b4d2611184:IYV3p45BT0ac8hjHg1houSdS1a.Mro8e".into()
        }]
    );
    let classic = ingest::uploads(&bodies[2]);
    assert_eq!(classic[0].key, "uploads/vision/fmnist/vé 2/recipe.yaml", "URL-decoded");
    let direct: serde_json::Value = serde_json::from_str(&text("s3-object-created.json")).unwrap();
    assert_eq!(ingest::uploads(&direct), eb);
}

#[test]
fn sqs_orchestrator_sample_holds_a_tamp_message_and_a_batch_state_change() {
    let event: SqsEvent = round_trip("sqs-orchestrator.json");
    let msgs: Vec<Option<Message>> = event.records.iter().map(|r| orchestrator::message(r.body.as_deref().unwrap()).unwrap()).collect();
    assert_eq!(msgs[0], Some(Message::Advance { job: "job_ef335827e2c8116d".into() }));
    assert!(matches!(&msgs[1], Some(Message::Batch { status: RunStatus::Failed { retryable: false, .. }, .. })), "{:?}", msgs[1]);
    assert!(orchestrator::message("{\"type\":\"nonsense\"}").is_err());
}

#[test]
fn the_schedule_sample_is_a_schedule() {
    let e: serde_json::Value = round_trip("scheduled-reconcile.json");
    assert_eq!(e["detail-type"], "Scheduled Event");
    assert!(serde_json::from_value::<SqsEvent>(e).map_or(true, |s| s.records.is_empty()), "not an SQS batch");
}

#[test]
fn the_tamp_event_sample_unwraps_from_its_envelope() {
    let envelope: serde_json::Value = round_trip("tamp-job-succeeded.json");
    let e = report::tamp_event(&envelope).unwrap();
    assert_eq!((e.detail_type.as_str(), e.job.as_str(), e.state.as_str()), ("tamp.job.succeeded", "job_ef335827e2c8116d", "succeeded"));
    assert_eq!(report::tamp_event(&envelope["detail"]).unwrap(), e, "a bare event works too");
    let back: tamp_ports::TampEvent = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
    assert_eq!(back, e);
}

#[test]
fn the_api_gateway_sample_becomes_the_http_request() {
    let _: serde_json::Value = round_trip("apigw-v2-get-best.json");
    let req = lambda_http::request::from_str(&text("apigw-v2-get-best.json")).unwrap();
    assert_eq!(req.method(), "GET");
    assert_eq!(req.uri().path(), "/models/vision.fmnist/best");
    assert_eq!(req.uri().query(), Some("target_runtime=onnxruntime"));
    assert_eq!(req.headers()["authorization"], "Bearer TOKEN");
}
