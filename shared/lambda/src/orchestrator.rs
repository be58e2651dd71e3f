//! The orchestrator function. Its SQS queue carries Tamp's own messages (`Advance`,
//! delayed `Submit`) and, routed by an EventBridge rule, AWS Batch "Job State Change" events
//! for Tamp's job queues; an EventBridge schedule invokes it directly to reconcile. Stale and
//! duplicate state changes change nothing (the job state machine recognises them by attempt
//! number and state rank), so at-least-once delivery is safe.

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use tamp_adapters_aws::SqsQueue;
use tamp_adapters_aws::batch::message_from_state_change;
use tamp_control::Services;
use tamp_control::handlers;
use tamp_ports::Message;

use crate::{Error, for_each_record};

/// What the function was invoked with, and what it did.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Batch(SqsBatchResponse),
    Reconciled { resubmitted: usize },
}

/// Handles an SQS batch (a message that can never be handled goes to `dlq`), or a
/// scheduled (reconcile) invocation.
pub async fn handle(svc: &Services, dlq: Option<&SqsQueue>, payload: serde_json::Value) -> Result<Outcome, Error> {
    if payload["detail-type"] == "Scheduled Event" || payload["tamp"] == "reconcile" {
        let resubmitted = handlers::reconcile(svc).await?;
        tracing::info!(resubmitted, "reconciled");
        crate::emf::emit("orchestrator", &[("Reconciled", resubmitted as f64, "Count")]);
        return Ok(Outcome::Reconciled { resubmitted });
    }
    let event: SqsEvent = serde_json::from_value(payload).map_err(|e| Error::Invalid(format!("not an SQS event or a schedule: {e}")))?;
    Ok(Outcome::Batch(for_each_record(event, dlq, |body| async move { handle_body(svc, &body).await }).await))
}

/// The orchestrator message a queue body carries, if any: a Tamp message or a Batch state
/// change (`None` for Batch states Tamp does not act on and for other jobs).
pub fn message(body: &str) -> Result<Option<Message>, Error> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| Error::Invalid(format!("not JSON: {e}")))?;
    if value["source"] == "aws.batch" {
        return Ok(message_from_state_change(&value));
    }
    serde_json::from_value(value).map(Some).map_err(|e| Error::Invalid(format!("not a Tamp message: {e}")))
}

pub async fn handle_body(svc: &Services, body: &str) -> Result<(), Error> {
    match message(body)? {
        Some(msg) => {
            if let Message::Batch { status: tamp_ports::RunStatus::Failed { retryable, .. }, .. } = &msg {
                crate::emf::emit("orchestrator", &[(if *retryable { "WorkerFailures" } else { "WorkerBadInput" }, 1.0, "Count")]);
            }
            Ok(handlers::orchestrate(svc, &msg).await?)
        }
        None => {
            tracing::debug!("not a message the orchestrator acts on");
            Ok(())
        }
    }
}
