//! Tamp on AWS Lambda: each function's `main.rs` builds its [`Settings`] and hands events
//! to one handler here; the handlers map AWS event shapes onto the shared control-plane
//! handlers (`tamp_control::handlers`), which are the same ones `tamp serve` runs locally.
//!
//! | function | trigger | handler |
//! |---|---|---|
//! | api | API Gateway HTTP API (payload 2.0) | [`api::router`] through `lambda_http` |
//! | ingest | S3 Object Created → EventBridge → SQS | [`ingest::handle`] |
//! | orchestrator | SQS: Tamp messages and Batch Job State Change events; schedule | [`orchestrator::handle`] |
//! | report | team bus: `tamp.job.succeeded/failed/cancelled` | [`report::handle`] |
//! | notify | team bus: job events and quality alerts | [`notify::handle`] |
//! | export | team bus: `tamp.job.succeeded` | [`export::handle`] |
//!
//! SQS-fed handlers report partial batch failures (`batchItemFailures`): only messages that
//! failed with a retryable error go back to the queue (and after `maxReceiveCount`, to its
//! DLQ); a message that can never succeed is put on the source queue's DLQ at once
//! (`TAMP_SOURCE_DLQ_URL`), with the reason as a message attribute, for an operator to see
//! and replay.

pub mod api;
pub mod emf;
pub mod export;
pub mod ingest;
pub mod notify;
pub mod orchestrator;
pub mod report;
mod settings;

pub use settings::{ENV_VARS, Settings};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use tamp_adapters_aws::SqsQueue;
use tamp_control::handlers::HandlerError;

/// A handler's error. `retryable` decides whether the event is delivered again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error("{0}")]
    Delivery(String),
}

impl Error {
    pub fn retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Invalid(_) => false,
            Self::Handler(e) => e.retryable(),
            Self::Delivery(_) => true,
        }
    }
}

/// Lambda's error report: the type says whether a retry may help (`Tamp.Retryable` or
/// `Tamp.Invalid`), the message says what went wrong.
impl From<Error> for lambda_runtime::Diagnostic {
    fn from(e: Error) -> Self {
        let error_type = if e.retryable() { "Tamp.Retryable" } else { "Tamp.Invalid" };
        lambda_runtime::Diagnostic { error_type: error_type.into(), error_message: e.to_string() }
    }
}

/// Logs in Lambda's format (JSON when the function's log format is JSON; level from
/// `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`).
pub fn init_tracing() {
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber_filter(&level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).without_time();
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

fn tracing_subscriber_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_new(level.to_ascii_lowercase()).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Runs `each` on every record's body; retryable failures are reported back to SQS as
/// `batchItemFailures`; other failures are parked on `dlq` with their reason (or, if that
/// fails or there is no DLQ, reported back too, so nothing is lost).
pub(crate) async fn for_each_record<F, Fut>(event: SqsEvent, dlq: Option<&SqsQueue>, mut each: F) -> SqsBatchResponse
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut response = SqsBatchResponse::default();
    for record in event.records {
        let id = record.message_id.clone().unwrap_or_default();
        let Some(body) = record.body else {
            tracing::warn!(message_id = %id, "SQS record without a body dropped");
            continue;
        };
        let failed = match each(body.clone()).await {
            Ok(()) => false,
            Err(e) if e.retryable() => {
                tracing::warn!(message_id = %id, error = %e, "will be redelivered");
                true
            }
            Err(e) => match dlq {
                Some(q) => match q.park(&body, &e.to_string(), &id).await {
                    Ok(()) => {
                        tracing::error!(message_id = %id, error = %e, "cannot be handled; parked on the DLQ");
                        emf::emit("sqs", &[("PoisonMessages", 1.0, "Count")]);
                        false
                    }
                    Err(p) => {
                        tracing::error!(message_id = %id, error = %e, park_error = %p, "cannot be handled, nor parked; redelivered");
                        true
                    }
                },
                None => {
                    tracing::error!(message_id = %id, error = %e, "cannot be handled and no DLQ is configured; redelivered until the queue's redrive moves it");
                    true
                }
            },
        };
        if failed {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            response.batch_item_failures.push(f);
        }
    }
    response
}
