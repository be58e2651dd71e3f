//! Capture of intermediate tensors for calibration: chosen values are exposed as extra
//! graph outputs, and batches stream through a callback, so memory is bounded by one
//! batch's activations, never by the dataset.

use std::collections::{BTreeMap, HashSet};

use tamp_onnx::proto::ValueInfoProto;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::{GraphView, Model, Patch, TensorValue};

use crate::dataset::Dataset;
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
        // Keep the known type; otherwise the type the producer makes (float for most).
        let info = view.value_info(v).cloned().unwrap_or_else(|| tamp_onnx::builder::value_info(v, produced_type(model, &view, v), &[]));
        patch.add_outputs.push(ValueInfoProto { r#type: info.r#type.map(drop_shape), ..info });
    }
    if !unknown.is_empty() {
        return Err(EngineError::Config(format!("cannot capture {unknown:?}: no node in the main graph produces them")));
    }
    patch.apply(model, "capture-outputs").map_err(|e| EngineError::Config(e.to_string()))
}

/// The element type of `v` when the graph declares none: integer kernels make int32,
/// quantizing ops make their zero point's type, everything else here reads float.
fn produced_type(model: &Model, view: &GraphView<'_>, v: &str) -> DataType {
    let Some(n) = view.producer(v).map(|i| &model.graph().node[i]) else { return DataType::Float };
    let zero_point_type = |i: usize| n.input.get(i).and_then(|z| view.constant(z)).and_then(|t| t.data_type).and_then(|d| DataType::try_from(d).ok());
    match n.op_type.as_deref() {
        Some("MatMulInteger" | "ConvInteger") => DataType::Int32,
        Some("QuantizeLinear") => zero_point_type(2).unwrap_or(DataType::Uint8),
        Some("QLinearConv" | "QLinearMatMul") => zero_point_type(7).unwrap_or(DataType::Uint8),
        // Outputs 0 (y) and 2 (zero point) are uint8; 1 (scale) is float.
        Some("DynamicQuantizeLinear") if n.output.get(1).is_none_or(|o| o != v) => DataType::Uint8,
        _ => DataType::Float,
    }
}

/// Shapes of intermediates are often unknown or symbolic; ONNX Runtime only needs the type.
fn drop_shape(mut t: tamp_onnx::proto::TypeProto) -> tamp_onnx::proto::TypeProto {
    if let Some(tamp_onnx::proto::type_proto::Value::TensorType(tt)) = t.value.as_mut() {
        tt.shape = None;
    }
    t
}

/// Captured tensors of one batch may take at most this much memory; batches shrink to fit.
/// Two batches are alive at once (one being consumed while the next runs).
pub const MAX_BATCH_BYTES: usize = 64 << 20;

fn byte_len(v: &TensorValue) -> usize {
    v.shape().iter().product::<usize>() * tamp_onnx::tensor::element_size(v.data_type()).unwrap_or(8)
}

/// Runs `indices` of `data` through `model` and hands each batch's captured `values` to
/// `sink` with the batch's row indices. The first batch is one row; it measures what a row's
/// captured tensors weigh, and later batches hold as many rows (up to `batch_size`) as fit in
/// [`MAX_BATCH_BYTES`], so memory stays bounded however large the activations are. The sink
/// runs on its own thread, one batch behind the session, so statistics overlap inference;
/// batches still reach it in order.
///
/// With `trim_padding`, right-padded token sequences ([`Dataset::sequence_lengths`]) run at
/// their true length: rows are taken longest first, each batch holds rows of one length and
/// every input is cut to it, so pad positions never reach the sink. Returns whether it did.
#[allow(clippy::too_many_arguments)]
pub fn capture(
    model: &Model,
    data: &Dataset,
    indices: &[usize],
    values: &[String],
    batch_size: usize,
    cfg: &SessionConfig,
    trim_padding: bool,
    mut sink: impl FnMut(&[usize], &BTreeMap<String, TensorValue>) -> Result<()> + Send,
) -> Result<bool> {
    let augmented = with_outputs(model, values)?;
    let mut session = Session::from_model(&augmented, cfg)?;
    data.check_against(&session.inputs)?;
    // A model exported with a fixed batch dimension runs at exactly that batch.
    let fixed = crate::dataset::fixed_batch(&session.inputs);
    let batch_size = fixed.unwrap_or(batch_size);
    let wanted: HashSet<&str> = values.iter().map(String::as_str).collect();
    let lengths = if trim_padding { data.sequence_lengths()? } else { None };
    let ordered: Vec<usize>;
    let indices = match &lengths {
        Some(len) => {
            let mut v = indices.to_vec();
            v.sort_by_key(|&i| std::cmp::Reverse(len[i]));
            ordered = v;
            &ordered[..]
        }
        None => indices,
    };
    // Rows that do not fill a last fixed-size batch are left out.
    let indices = match fixed {
        Some(b) if b > 1 => &indices[..indices.len() - indices.len() % b],
        _ => indices,
    };
    let length_of = |i: usize| lengths.as_ref().map(|l| l[i]);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(std::ops::Range<usize>, BTreeMap<String, TensorValue>)>(0);
    std::thread::scope(|scope| {
        let consumer = scope.spawn(move || -> Result<()> {
            for (range, captured) in rx {
                sink(&indices[range], &captured)?;
            }
            Ok(())
        });
        let produced = (|| -> Result<()> {
            let mut start = 0;
            let mut rows_per_batch = fixed.unwrap_or(1);
            while start < indices.len() {
                let mut end = (start + rows_per_batch).min(indices.len());
                if let Some(len) = length_of(indices[start]) {
                    end = start + indices[start..end].iter().take_while(|&&i| length_of(i) == Some(len)).count();
                }
                let batch = match length_of(indices[start]) {
                    Some(len) => data.select_trimmed(&indices[start..end], len)?,
                    None => data.select(&indices[start..end])?,
                };
                let inputs: Vec<(&str, &TensorValue)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
                let outputs = session.run(&inputs)?;
                let captured: BTreeMap<String, TensorValue> = outputs.into_iter().filter(|(k, _)| wanted.contains(k.as_str())).collect();
                if start == 0 {
                    let per_row = captured.values().map(byte_len).sum::<usize>().max(1);
                    rows_per_batch = (MAX_BATCH_BYTES / per_row).clamp(1, batch_size.max(1));
                }
                if let Some(b) = fixed {
                    rows_per_batch = b;
                }
                if tx.send((start..end, captured)).is_err() {
                    break; // the sink failed; its error is returned below
                }
                start = end;
            }
            Ok(())
        })();
        drop(tx);
        let consumed = consumer.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        consumed.and(produced)
    })?;
    Ok(lengths.is_some())
}
