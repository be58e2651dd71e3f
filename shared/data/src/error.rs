//! Dataset errors: one line each, naming the file, the array and how to fix it.

use std::path::PathBuf;

/// What loading or reading a dataset can report.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
