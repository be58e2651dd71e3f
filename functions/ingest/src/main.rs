//! The ingest function: S3 uploads (via EventBridge → SQS) → jobs.

use lambda_runtime::{LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tamp_lambda::init_tracing();
    let settings = tamp_lambda::Settings::from_env()?;
    let (svc, dlq) = (settings.services().await, settings.parking().await);
    run(service_fn(|e: LambdaEvent<_>| tamp_lambda::ingest::handle(&svc, dlq.as_ref(), e.payload))).await
}
