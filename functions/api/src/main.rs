//! The api function: Tamp's HTTP API behind API Gateway (HTTP API, payload 2.0).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    tamp_lambda::init_tracing();
    let settings = tamp_lambda::Settings::from_env()?;
    let router = tamp_lambda::api::router(&settings, settings.services().await).await?;
    lambda_http::run(router).await
}
