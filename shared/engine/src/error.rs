//! Engine errors: one line each, naming the problem, where it is and how to fix it.

use std::path::PathBuf;

/// Everything the engine can report.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Onnx(#[from] tamp_onnx::OnnxError),
    #[error(transparent)]
    Patch(#[from] tamp_onnx::PatchError),
    #[error("ONNX Runtime library: {0}")]
    Library(String),
    #[error("ONNX Runtime {context}: {message}")]
    Ort { context: String, message: String },
    #[error("dataset {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("metric '{metric}': {message}")]
    Metric { metric: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Config(String),
}

impl EngineError {
    pub(crate) fn ort(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Ort { context: context.into(), message: e.to_string() }
    }
}

impl From<tamp_data::DataError> for EngineError {
    fn from(e: tamp_data::DataError) -> Self {
        match e {
            tamp_data::DataError::Dataset { path, message } => Self::Dataset { path, message },
            tamp_data::DataError::Io { path, source } => Self::Io { path, source },
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
