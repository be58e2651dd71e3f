//! Tamp's ONNX IR: the protobuf types generated from `onnx.proto`, model load/save
//! (external data, models over 2 GB), tensor ⇄ `ndarray` conversion, read-only graph views
//! (producers, consumers, topological order), a builder for test graphs, and patches: the
//! only way a pass edits a graph.

pub mod builder;
pub mod error;
pub mod graph;
pub mod model;
pub mod patch;
pub mod tensor;
pub mod types;

/// The ONNX protobuf messages (onnx 1.23.2, proto2: most fields are `Option`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!("generated/onnx.rs");
}

pub use error::OnnxError;
pub use graph::GraphView;
pub use model::{ExternalData, FileInfo, Model, SaveOptions};
pub use patch::{Pass, Patch, PatchError};
pub use tensor::{Element, TensorValue};
