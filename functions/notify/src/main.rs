//! The notify function: job events and quality alerts → Slack, Teams, signed webhooks.

use lambda_runtime::{LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tamp_lambda::init_tracing();
    let settings = tamp_lambda::Settings::from_env()?.with_secrets().await?;
    let targets = settings.webhooks()?;
    let ledger = settings.services().await.meta;
    run(service_fn(|e: LambdaEvent<serde_json::Value>| tamp_lambda::notify::handle(&targets, ledger.as_ref(), e.payload))).await
}
