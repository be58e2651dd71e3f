//! The orchestrator function: Tamp messages and Batch state changes (SQS), and reconcile (schedule).

use lambda_runtime::{LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tamp_lambda::init_tracing();
    let settings = tamp_lambda::Settings::from_env()?;
    let (svc, dlq) = (settings.services().await, settings.parking().await);
    run(service_fn(|e: LambdaEvent<serde_json::Value>| tamp_lambda::orchestrator::handle(&svc, dlq.as_ref(), e.payload))).await
}
