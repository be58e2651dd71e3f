//! Capture of intermediate tensors for calibration: chosen values are exposed as extra
//! graph outputs, and batches stream through a callback, so memory is bounded by one
//! batch's activations, never by the dataset.

use std::collections::{BTreeMap, HashSet};

use tamp_onnx::proto::ValueInfoProto;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::{GraphView, Model, Patch, TensorValue};

use crate::dataset::{Dataset, batches};
use crate::error::{EngineError, Result};
use crate::runtime::{Session, SessionConfig};

/// A copy of `model` whose graph also outputs `values`. Values must be produced in the main
/// graph (by a node or as an input); unknown names are an error naming them.
pub fn with_outputs(model: &Model, values: &[String]) -> Result<Model> {
    let view = GraphView::new(model.graph());
    let existing: HashSet<&str> = model.graph().output.iter().filter_map(|o| o.name.as_deref()).collect();
    let inputs: HashSet<&str> = model.graph().input.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut patch = Patch::default();
    let mut unknown = Vec::new();
    for v in values {
        if existing.contains(v.as_str()) {
            continue;
        }
        if view.producer(v).is_none() && !inputs.contains(v.as_str()) {
            unknown.push(v.clone());
            continue;
        }
        // Keep the known type; otherwise declare float (activations are what calibration reads).
        let info = view.value_info(v).cloned().unwrap_or_else(|| tamp_onnx::builder::value_info(v, DataType::Float, &[]));
        patch.add_outputs.push(ValueInfoProto { r#type: info.r#type.map(drop_shape), ..info });
    }
    if !unknown.is_empty() {
        return Err(EngineError::Config(format!("cannot capture {unknown:?}: no node in the main graph produces them")));
    }
    patch.apply(model, "capture-outputs").map_err(|e| EngineError::Config(e.to_string()))
}

/// Shapes of intermediates are often unknown or symbolic; ONNX Runtime only needs the type.
fn drop_shape(mut t: tamp_onnx::proto::TypeProto) -> tamp_onnx::proto::TypeProto {
    if let Some(tamp_onnx::proto::type_proto::Value::TensorType(tt)) = t.value.as_mut() {
        tt.shape = None;
    }
    t
}

/// Runs `indices` of `data` through `model` in batches and hands each batch's captured
/// `values` to `sink` together with the batch's row indices.
pub fn capture(
    model: &Model,
    data: &Dataset,
    indices: &[usize],
    values: &[String],
    batch_size: usize,
    cfg: &SessionConfig,
    mut sink: impl FnMut(&[usize], &BTreeMap<String, TensorValue>) -> Result<()>,
) -> Result<()> {
    let augmented = with_outputs(model, values)?;
    let mut session = Session::from_model(&augmented, cfg)?;
    data.check_against(&session.inputs)?;
    let wanted: HashSet<&str> = values.iter().map(String::as_str).collect();
    for rows in batches(indices, batch_size) {
        let batch = data.select(rows);
        let inputs: Vec<(&str, &TensorValue)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let outputs = session.run(&inputs)?;
        let captured: BTreeMap<String, TensorValue> = outputs.into_iter().filter(|(k, _)| wanted.contains(k.as_str())).collect();
        sink(rows, &captured)?;
    }
    Ok(())
}
