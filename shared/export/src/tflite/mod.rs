//! ONNX → TFLite: [`convert`] builds the TFLite graph (NHWC, fused activations, int8 where
//! the model's QDQ pairs say), [`write`] serialises it with the `flatc`-generated builders
//! of the vendored schema.

pub mod convert;
pub mod ir;
pub mod write;

/// The TFLite schema (`schema.fbs`, vendored in `shared/export/schema/tflite.fbs`), compiled
/// by `flatc` 25.12.19 (`make tflite-schema`).
#[allow(
    unsafe_code,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unused_imports,
    non_camel_case_types,
    mismatched_lifetime_syntaxes,
    deprecated
)]
pub mod schema {
    include!("generated/schema.rs");
}

pub use convert::{Options, Precision};

use crate::Problem;
use tamp_onnx::Model;

/// A converted model: the flatbuffer and what is in it.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    /// `OP:input-type → count` (e.g. `CONV_2D:int8 → 8`).
    pub op_counts: std::collections::BTreeMap<String, usize>,
    pub inputs: Vec<(String, Vec<i32>)>,
    pub outputs: Vec<(String, Vec<i32>)>,
}

/// Converts `model` to `.tflite` bytes, or lists every node in the way.
pub fn export(model: &Model, opts: &Options) -> Result<Exported, Vec<Problem>> {
    let g = convert::convert(model, opts).map_err(|ps| ps.into_iter().map(|p| p.on("tflite")).collect::<Vec<_>>())?;
    let io = |ids: &[i32]| ids.iter().map(|&i| (g.tensor(i).name.clone(), g.tensor(i).shape.clone())).collect();
    Ok(Exported { bytes: write::to_bytes(&g), op_counts: g.op_counts(), inputs: io(&g.inputs), outputs: io(&g.outputs) })
}
