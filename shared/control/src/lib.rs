//! Tamp's control plane over the ports: the ingest, orchestrator and reconcile handlers, the
//! notify subscriber (signed webhooks), the HTTP API (axum), and the local stack behind
//! `tamp serve`. The AWS functions will wire the same handlers to AWS adapters.

pub mod api;
pub mod auth;
pub mod handlers;
pub mod local;
pub mod notify;

pub use handlers::{Services, StageFailure, StageManifest, report_key, stage_error_key, stage_manifest_key};
