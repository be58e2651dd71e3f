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
