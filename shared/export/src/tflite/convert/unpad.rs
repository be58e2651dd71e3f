//! Undoes Tamp's ONNX-Runtime-only channel padding (`tamp_engine::passes::pad_channels`):
//! a small int8 Conv whose one to three input channels were padded to four, by a `Pad`
//! (named `….pad4.Pad`) before the input's QuantizeLinear, with weight channels holding the
//! zero point. TFLite's kernels gain nothing from it, so the Conv reads the input itself
//! again and its weight loses the added channels: the same values, one op fewer.

use ndarray::{Axis, Slice};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, Patch};

/// The model without the padding, or `None` when it has none (or it is not the pattern).
pub(super) fn undo(model: &Model) -> Option<Model> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut patch = Patch::default();
    for (pi, pad) in g.node.iter().enumerate() {
        if pad.op_type.as_deref() != Some("Pad") || !pad.name.as_deref().is_some_and(|n| n.ends_with(".pad4.Pad")) {
            continue;
        }
        let (x, x4) = (&pad.input[0], &pad.output[0]);
        // Pad → QuantizeLinear → DequantizeLinear → Convs, nothing else.
        let [q] = view.consumers(x4) else { return None };
        let [dq] = view.consumers(&g.node[*q].output[0]) else { return None };
        // pads [0, 0, 0, 0, 0, 4 - cin, 0, 0]: the input's own channels.
        let pads = to_array::<i64>(view.initializer(pad.input.get(1)?)?).ok()?;
        let cin = usize::try_from(4 - pads.iter().nth(5)?).ok()?;
        let mut edits = Vec::new();
        for &c in view.consumers(&g.node[*dq].output[0]) {
            let conv = &g.node[c];
            let wdq = conv.input.get(1).and_then(|w| view.producer(w)).map(|p| &g.node[p])?;
            let wq = view.initializer(&wdq.input[0])?;
            let name = wdq.input[0].clone();
            let cut = match DataType::try_from(wq.data_type.unwrap_or(0)) {
                Ok(DataType::Int8) => from_array(&name, &to_array::<i8>(wq).ok()?.slice_axis(Axis(1), Slice::from(..cin)).to_owned()),
                Ok(DataType::Uint8) => from_array(&name, &to_array::<u8>(wq).ok()?.slice_axis(Axis(1), Slice::from(..cin)).to_owned()),
                _ => return None,
            };
            edits.push(cut);
        }
        patch.add_initializers.extend(edits);
        patch.rewire.push((*q, 0, x.clone()));
        patch.remove_nodes.insert(pi);
        patch.remove_initializers.extend(pad.input.get(1).cloned());
    }
    if patch.is_empty() {
        return None;
    }
    let mut m = patch.apply(model, "unpad-input-channels").ok()?;
    // The padded values' shapes changed back: let no stale value_info say four channels.
    if let Some(g) = m.proto.graph.as_mut() {
        g.value_info.retain(|v| !v.name.as_deref().is_some_and(|n| n.contains(".pad4")));
    }
    Some(m)
}
