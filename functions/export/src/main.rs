//! The export function: succeeded jobs on the team bus → their artifacts for other runtimes.

use lambda_runtime::{LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tamp_lambda::init_tracing();
    let settings = tamp_lambda::Settings::from_env()?;
    let svc = settings.services().await;
    run(service_fn(|e: LambdaEvent<serde_json::Value>| tamp_lambda::export::handle(&settings, &svc, e.payload))).await
}
