//! Tamp's control plane over the ports only: the ingest, orchestrator, reconcile, recovery
//! and deletion handlers, the notify outbox (signed webhooks, Slack, Teams), auth, and the
//! HTTP API (axum). The composition roots choose the adapters: the CLI's `tamp serve` the
//! local ones, the Lambda functions the AWS ones.

pub mod api;
pub mod auth;
mod catalog;
pub mod erasure;
pub mod exports;
pub mod guards;
pub mod handlers;
mod jobs;
pub mod metrics;
pub mod notify;
pub mod problem;
mod purge;
pub mod views;

pub use handlers::{Services, StageFailure, StageManifest, report_key, stage_error_key, stage_manifest_key};
