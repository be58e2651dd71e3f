//! The report function: finished jobs on the team bus → report documents.

use lambda_runtime::{LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tamp_lambda::init_tracing();
    let svc = tamp_lambda::Settings::from_env()?.services().await;
    run(service_fn(|e: LambdaEvent<serde_json::Value>| tamp_lambda::report::handle(&svc, e.payload))).await
}
