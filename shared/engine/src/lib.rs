//! Tamp's engine: ONNX Runtime sessions from a typed config, `.npz` datasets, streaming
//! capture of intermediate tensors, task metrics as plugins, latency/throughput/memory
//! measurement and the baseline record; model preparation (`prepare`) and the compression
//! passes. The stage runner is `tamp-pipeline` (see docs/architecture.md).

pub mod cache;
pub mod calibrate;
pub mod calibrate_auto;
pub mod capture;
pub mod error;
pub mod eval;
pub mod flops;
pub mod isa;
pub mod kernels;
pub mod litert;
pub mod metrics;
pub mod passes;
pub mod perf;
pub mod prepare;
pub mod ptq;
pub mod runtime;
pub mod smooth;
pub mod text_metrics;

pub use error::EngineError;
pub use runtime::{Session, SessionConfig};
/// Datasets live in `tamp-data` (training reads them without ONNX Runtime); re-exported
/// here so engine callers keep one import path.
pub use tamp_data as dataset;
pub use tamp_data::Dataset;

/// Tamp's version, recorded in every baseline and manifest.
pub const TAMP_VERSION: &str = env!("CARGO_PKG_VERSION");
