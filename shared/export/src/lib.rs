//! Tamp's exporters: ONNX graphs written for other runtimes, and the pre-flight check that
//! says, before any compute, which nodes a requested runtime cannot run.

pub mod codebook;
pub mod compat;
pub mod tflite;
pub mod torchscript;

/// One thing a runtime cannot take (the domain's type: the compatibility report and the
/// API carry it as it is).
pub use tamp_domain::results::RuntimeProblem as Problem;
