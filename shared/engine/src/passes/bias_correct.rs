//! Empirical bias correction (Nagel et al., 2019, §4.2): quantizing a layer's weights
//! shifts the mean of its output by `(W − Ŵ)·E[x]`; adding that to the bias puts the mean
//! back. `E[x]` is the per-channel mean of the layer's input over the calibration rows
//! (gathered in the calibration pass, [`crate::calibrate::Collector::with_channel_means`]); `Ŵ` is exactly what the QDQ pass will store
//! ([`super::quantize::fake_quantized`] with the same axis, granularity and symmetry).
//! Conv (group 1 or depthwise) and Gemm layers are corrected; a layer without a bias gets one.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, Axis, IxDyn};

use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::{NodeProto, TensorProto};
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

use super::quantize::{fake_quantized, node_key, weight_axis};

pub use tamp_domain::results::CorrectedLayer;

/// Bias corrections for the weighted nodes whose input means are known.
pub fn correct(
    model: &Model,
    means: &BTreeMap<String, Vec<f64>>,
    per_channel: bool,
    symmetric: bool,
    exclude: &BTreeSet<String>,
) -> Result<Option<(Patch, Vec<CorrectedLayer>)>, OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut patch = Patch::default();
    let mut report = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let key = node_key(n);
        let op = n.op_type.as_deref().unwrap_or_default();
        let Some(mean) = means.get(key).filter(|_| !exclude.contains(key) && matches!(op, "Conv" | "Gemm")) else { continue };
        let Some(w) = n.input.get(1).and_then(|w| view.constant(w)).and_then(|t| to_array::<f32>(t).ok()) else { continue };
        let axis = weight_axis(n, &w);
        let err = &w - &fake_quantized(&w, per_channel.then_some(axis), symmetric);
        let Some(shift) = output_shift(n, &err, axis, mean) else { continue };
        let Some(bias) = corrected_bias(&view, n, &shift) else { continue };
        report.push(CorrectedLayer { node: key.to_owned(), mean_abs_shift: bias.relative_shift });
        if bias.added {
            let mut m = n.clone();
            m.input.resize(2, String::new());
            m.input.push(bias.tensor.name.clone().unwrap_or_default());
            patch.remove_nodes.insert(i);
            patch.add_nodes.push(m);
        }
        patch.add_initializers.push(bias.tensor);
    }
    Ok((!patch.is_empty()).then_some((patch, report)))
}

/// The shift of each output channel's mean, `(W − Ŵ)·E[x]`, of a Conv (group 1 or
/// depthwise) or Gemm `n` whose weight error `W − Ŵ` is `err` (output channels on `axis`),
/// for the per-channel means of its input. `None` for layers not handled: grouped (not
/// depthwise) convs, transposed Gemm inputs.
pub fn output_shift(n: &NodeProto, err: &ArrayD<f32>, axis: usize, mean: &[f64]) -> Option<Vec<f64>> {
    let op = n.op_type.as_deref().unwrap_or_default();
    let group = attr_int(n, "group", 1);
    if (op == "Conv" && group > 1 && err.shape().get(1) != Some(&1)) || (op == "Gemm" && attr_int(n, "transA", 0) != 0) || !matches!(op, "Conv" | "Gemm") {
        return None;
    }
    let shift: Vec<f64> = if op == "Conv" {
        err.axis_iter(Axis(0))
            .enumerate()
            .map(|(o, f)| {
                if group > 1 {
                    f.iter().map(|&e| f64::from(e)).sum::<f64>() * mean.get(o).copied().unwrap_or(0.0)
                } else {
                    f.axis_iter(Axis(0)).enumerate().map(|(c, k)| k.iter().map(|&e| f64::from(e)).sum::<f64>() * mean.get(c).copied().unwrap_or(0.0)).sum()
                }
            })
            .collect()
    } else {
        // Gemm: y = x·B (B [K, N]) or x·Bᵀ (B [N, K]).
        let e2 = if axis == 0 { err.view() } else { err.view().reversed_axes() };
        e2.axis_iter(Axis(0)).map(|row| row.iter().zip(mean).map(|(&e, &m)| f64::from(e) * m).sum()).collect()
    };
    (shift.len() == err.shape()[axis]).then_some(shift)
}

/// A layer's bias with an output shift added.
pub struct CorrectedBias {
    /// The new bias initializer (the old one's name, or `<node>.bias_correction`).
    pub tensor: TensorProto,
    /// The layer had no bias: the caller adds `tensor` as its input 2.
    pub added: bool,
    /// Mean |shift| over mean |old bias|.
    pub relative_shift: f64,
}

/// `n`'s bias plus `shift`, or `None` where its bias is not a constant of one value per output
/// channel read by `n` alone.
pub fn corrected_bias(view: &GraphView<'_>, n: &NodeProto, shift: &[f64]) -> Option<CorrectedBias> {
    let outs = shift.len();
    let (name, old, added) = match n.input.get(2).filter(|b| !b.is_empty()) {
        Some(b) => (b.clone(), view.constant(b).and_then(|t| to_array::<f32>(t).ok()).filter(|a| a.len() == outs && view.consumers(b).len() == 1)?, false),
        None => (format!("{}.bias_correction", node_key(n)), ArrayD::zeros(IxDyn(&[outs])), true),
    };
    let new = ArrayD::from_shape_fn(old.raw_dim(), |ix| old[&ix] + shift[ix[0]] as f32);
    let scale = old.iter().map(|v| f64::from(v.abs())).sum::<f64>() / outs.max(1) as f64;
    let moved = shift.iter().map(|v| v.abs()).sum::<f64>() / outs.max(1) as f64;
    Some(CorrectedBias { tensor: from_array(&name, &new), added, relative_shift: if scale > 0.0 { moved / scale } else { 0.0 } })
}
