//! Errors of the IR crate. Each says what went wrong, where, and how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong loading, saving or reading an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a valid ONNX model (protobuf decoding failed: {source}); \
         re-export it or check that the upload was not truncated"
    )]
    Decode { path: PathBuf, source: prost::DecodeError },
    #[error("{path} is not a valid ONNX model: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("external data for tensor '{tensor}': {reason}")]
    ExternalData { tensor: String, reason: String },
    #[error("tensor '{tensor}': {reason}")]
    Tensor { tensor: String, reason: String },
    #[error("model is {bytes} bytes, over protobuf's 2 GiB limit; save it with external data")]
    TooLarge { bytes: usize },
    #[error("graph is inconsistent: {0}")]
    Graph(String),
    /// A patch a pass built did not apply (names the pass).
    #[error("graph is inconsistent: {0}")]
    Patch(Box<crate::PatchError>),
    /// An array built for the graph did not have the shape asked for.
    #[error("graph is inconsistent: {0}")]
    Shape(#[from] ndarray::ShapeError),
}

impl From<crate::PatchError> for OnnxError {
    fn from(e: crate::PatchError) -> Self {
        Self::Patch(Box::new(e))
    }
}

impl OnnxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
