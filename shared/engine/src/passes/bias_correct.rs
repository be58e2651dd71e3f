//! Empirical bias correction (Nagel et al., 2019, §4.2): quantizing a layer's weights
//! shifts the mean of its output by `(W − Ŵ)·E[x]`; adding that to the bias puts the mean
//! back. `E[x]` is the per-channel mean of the layer's input over the calibration rows
//! (gathered in the calibration pass, [`crate::calibrate::Collector::with_channel_means`]); `Ŵ` is exactly what the QDQ pass will store
//! ([`super::quantize::fake_quantized`] with the same axis, granularity and symmetry).
//! Conv (group 1 or depthwise) and Gemm layers are corrected; a layer without a bias gets one.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, Axis, IxDyn};

use tamp_onnx::graph::attr_int;
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
        let group = attr_int(n, "group", 1);
        if (op == "Conv" && group > 1 && w.shape().get(1) != Some(&1)) || (op == "Gemm" && attr_int(n, "transA", 0) != 0) {
            continue; // grouped (not depthwise) convs and transposed Gemm inputs: not handled
        }
        let axis = weight_axis(n, &w);
        let err = &w - &fake_quantized(&w, per_channel.then_some(axis), symmetric);
        let outs = w.shape()[axis];
        let shift: Vec<f64> = match op {
            "Conv" => {
                let depthwise = attr_int(n, "group", 1) > 1;
                err.axis_iter(Axis(0))
                    .enumerate()
                    .map(|(o, f)| {
                        if depthwise {
                            f.iter().map(|&e| f64::from(e)).sum::<f64>() * mean.get(o).copied().unwrap_or(0.0)
                        } else {
                            f.axis_iter(Axis(0))
                                .enumerate()
                                .map(|(c, k)| k.iter().map(|&e| f64::from(e)).sum::<f64>() * mean.get(c).copied().unwrap_or(0.0))
                                .sum()
                        }
                    })
                    .collect()
            }
            _ => {
                // Gemm: y = x·B (B [K, N]) or x·Bᵀ (B [N, K]).
                let e2 = if axis == 0 { err } else { err.reversed_axes() };
                e2.axis_iter(Axis(0)).map(|row| row.iter().zip(mean).map(|(&e, &m)| f64::from(e) * m).sum()).collect()
            }
        };
        if shift.len() != outs {
            continue;
        }
        let (bias_name, old) = match n.input.get(2).filter(|b| !b.is_empty()) {
            Some(b) => match view.constant(b).and_then(|t| to_array::<f32>(t).ok()).filter(|a| a.len() == outs && view.consumers(b).len() == 1) {
                Some(a) => (b.clone(), a),
                None => continue,
            },
            None => (format!("{key}.bias_correction"), ArrayD::zeros(IxDyn(&[outs]))),
        };
        let new = ArrayD::from_shape_fn(old.raw_dim(), |ix| old[&ix] + shift[ix[0]] as f32);
        let scale = old.iter().map(|v| f64::from(v.abs())).sum::<f64>() / outs.max(1) as f64;
        let moved = shift.iter().map(|v| v.abs()).sum::<f64>() / outs.max(1) as f64;
        report.push(CorrectedLayer { node: key.to_owned(), mean_abs_shift: if scale > 0.0 { moved / scale } else { 0.0 } });
        patch.add_initializers.push(from_array(&bias_name, &new));
        if n.input.get(2).is_none_or(String::is_empty) {
            let mut m = n.clone();
            m.input.resize(2, String::new());
            m.input.push(bias_name);
            patch.remove_nodes.insert(i);
            patch.add_nodes.push(m);
        }
    }
    Ok((!patch.is_empty()).then_some((patch, report)))
}
