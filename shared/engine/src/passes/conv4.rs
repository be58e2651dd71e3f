//! 4-bit Conv weights: each constant float Conv weight becomes a signed int4 initializer
//! (symmetric, one scale per output channel, zero point 0) read through a per-axis
//! `DequantizeLinear` (opset 21, the first with int4 types; IR version 10).
//!
//! ONNX Runtime has no int4 convolution kernel: it runs `DequantizeLinear` and the float
//! `Conv`, so the gain is size on disk and in memory bandwidth for the weights, not compute.
//! Candidates say so (`mode: weight_only`, and the report's runtime notes).
//!
//! Opset 21 only widens the types of the ops Tamp's graphs use, except where a schema changed
//! meaning between opset 13 and 21:
//! - `Reduce{Max,Min,Prod,L1,L2,LogSum,LogSumExp,SumSquare,Mean}` (< 18): the `axes` attribute
//!   becomes an int64 input (rewritten here, as the opset-13 upgrade does for `ReduceSum`);
//! - `GroupNormalization` (< 21): per-group scale and bias became per-channel; a graph with
//!   one keeps its Convs float, and the reason is returned.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::{attr_ints, node_label};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{NodeProto, TensorProto};
use tamp_onnx::tensor::{from_array, pack_int4, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::bias_correct::{corrected_bias, output_shift};
use super::quantize::node_key;

/// The opset int4 `DequantizeLinear` needs.
pub const OPSET: i64 = 21;
/// The IR version that carries int4 tensors.
pub const IR_VERSION: i64 = 10;

/// Reduce ops whose `axes` moved from an attribute to an input at opset 18.
const REDUCE_18: &[&str] =
    &["ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ReduceMean"];

/// int4 Conv weights.
#[derive(Debug, Clone)]
pub struct QuantizeConv4 {
    /// Smallest weight (elements) quantized: tiny layers (a 1-channel stem) cost accuracy
    /// and save nothing.
    pub min_elements: usize,
    pub exclude: BTreeSet<String>,
    /// Per-channel means of each Conv's input over calibration rows, by node key: a Conv
    /// listed here gets its 4-bit weight error's effect on its output mean added back to its
    /// bias, `(W − Ŵ)·E[x]` ([`super::bias_correct`], as int8 does). int4's steps are 16×
    /// int8's, so the shift matters: ResNet-8 88.68 → 89.22 top-1 (fp32 89.25).
    pub input_means: BTreeMap<String, Vec<f64>>,
}

impl Default for QuantizeConv4 {
    fn default() -> Self {
        Self { min_elements: 256, exclude: BTreeSet::new(), input_means: BTreeMap::new() }
    }
}

/// Symmetric signed 4-bit codes of `w` per slice of axis 0 (`[-8, 7]`, scale `max|w| / 7`).
pub fn quantize_int4(w: &ArrayD<f32>) -> (Vec<i8>, Vec<f32>) {
    let out = w.shape()[0];
    let per = w.len() / out.max(1);
    let flat: Vec<f32> = w.iter().copied().collect();
    let mut codes = Vec::with_capacity(flat.len());
    let mut scales = Vec::with_capacity(out);
    for c in flat.chunks(per.max(1)) {
        let amax = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 7.0 } else { 1.0 };
        scales.push(s);
        codes.extend(c.iter().map(|&v| (v / s).round().clamp(-8.0, 7.0) as i8));
    }
    (codes, scales)
}

/// An int4 initializer of `shape` holding `codes`.
pub fn int4_tensor(name: &str, shape: &[usize], codes: &[i8]) -> TensorProto {
    TensorProto {
        name: Some(name.to_owned()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int4 as i32),
        raw_data: Some(pack_int4(codes)),
        ..Default::default()
    }
}

/// Why opset 21 would change what a node of `model` computes (and the rewrite cannot fix it).
pub fn opset21_blocker(model: &Model) -> Option<String> {
    let from = model.opset("").unwrap_or(1);
    let g = model.graph();
    g.node.iter().find_map(|n| {
        let op = n.op_type.as_deref().unwrap_or("");
        if op == "GroupNormalization" && from < 21 {
            return Some(format!("{} (GroupNormalization changes meaning at opset 21)", node_label(n)));
        }
        if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) && from < OPSET {
            return Some(format!("{} ({op} holds a subgraph, which is not upgraded to opset 21)", node_label(n)));
        }
        None
    })
}

impl Pass for QuantizeConv4 {
    /// The Convs given int4 weights.
    type Report = Vec<String>;

    fn name(&self) -> &str {
        "quantize-conv-int4"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        if opset21_blocker(model).is_some() {
            return Ok(None);
        }
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut done = Vec::new();
        for (i, n) in g.node.iter().enumerate() {
            if n.op_type.as_deref() != Some("Conv") || self.exclude.contains(node_key(n)) {
                continue;
            }
            let Some(wname) = n.input.get(1) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.ndim() < 3 || w.len() < self.min_elements {
                continue;
            }
            let (codes, scales) = quantize_int4(&w);
            let key = if view.consumers(wname).len() == 1 { wname.clone() } else { format!("{wname}#{i}") };
            let (qn, sn, dq) = (format!("{key}.q4"), format!("{key}.s4"), format!("{key}.dq4"));
            patch.add_initializers.push(int4_tensor(&qn, w.shape(), &codes));
            patch.add_initializers.push(from_array(&sn, &ArrayD::from_shape_vec(IxDyn(&[scales.len()]), scales.clone())?));
            let corrected = self.input_means.get(node_key(n)).and_then(|mean| {
                // Codes run in the weight's logical (row-major) order, one scale per `per`.
                let per = w.len() / scales.len().max(1);
                let err: Vec<f32> = w.iter().zip(&codes).enumerate().map(|(k, (&v, &c))| v - f32::from(c) * scales[k / per]).collect();
                let err = ArrayD::from_shape_vec(w.raw_dim(), err).ok()?;
                output_shift(n, &err, 0, mean).and_then(|shift| corrected_bias(&view, n, &shift))
            });
            patch.add_nodes.push(NodeProto {
                op_type: Some("DequantizeLinear".into()),
                name: Some(format!("{key}.DQ4")),
                input: vec![qn, sn],
                output: vec![dq.clone()],
                attribute: vec![attribute("axis", Attr::Int(0))],
                ..Default::default()
            });
            match corrected {
                Some(bias) if bias.added => {
                    let mut m = n.clone();
                    m.input[1] = dq;
                    m.input.resize(2, String::new());
                    m.input.push(bias.tensor.name.clone().unwrap_or_default());
                    patch.remove_nodes.insert(i);
                    patch.add_nodes.push(m);
                    patch.add_initializers.push(bias.tensor);
                }
                Some(bias) => {
                    patch.rewire.push((i, 1, dq));
                    patch.add_initializers.push(bias.tensor);
                }
                None => patch.rewire.push((i, 1, dq)),
            }
            done.push(node_key(n).to_owned());
        }
        if done.is_empty() {
            return Ok(None);
        }
        // Reduce ops of opset < 18 take their axes as an input from 18 on.
        if model.opset("").unwrap_or(1) < 18 {
            for (i, n) in g.node.iter().enumerate() {
                let op = n.op_type.as_deref().unwrap_or("");
                let axes = attr_ints(n, "axes");
                if !REDUCE_18.contains(&op) || axes.is_empty() {
                    continue;
                }
                let name = format!("{}.axes18", node_key(n));
                patch.add_initializers.push(from_array(&name, &ArrayD::from_shape_vec(IxDyn(&[axes.len()]), axes.to_vec())?));
                let mut rw = n.clone();
                rw.attribute.retain(|a| a.name.as_deref() != Some("axes"));
                rw.input.truncate(1);
                rw.input.push(name);
                patch.remove_nodes.insert(i);
                patch.add_nodes.push(rw);
            }
        }
        patch.opsets.push((String::new(), OPSET));
        Ok(Some((patch, done)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Session, SessionConfig};
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::GraphBuilder;
    use tamp_onnx::tensor::unpack_int4;

    #[test]
    fn int4_codes_round_trip_through_the_packing() {
        let codes: Vec<i8> = (-8..=7).chain([3, -1, 0]).collect();
        assert_eq!(unpack_int4(&pack_int4(&codes), codes.len()), codes);
    }

    /// A Conv with int4 weights runs in ONNX Runtime and matches the float Conv on the
    /// dequantized weights; a ReduceMean with an `axes` attribute keeps its meaning at opset 21.
    #[test]
    fn conv_with_int4_weights_runs_in_onnx_runtime() {
        let mut b = GraphBuilder::new("c4", 17);
        let x = b.input_f32("x", &[Some(2), Some(8), Some(6), Some(6)]);
        let w = ArrayD::from_shape_fn(IxDyn(&[12, 8, 3, 3]), |d| ((d[0] * 7 + d[1] * 3 + d[2] * 5 + d[3]) as f32 * 0.37).sin() * (1.0 + d[0] as f32 * 0.1));
        let wi = b.init_f32("w", w.clone());
        let y = b.op("Conv", &[&x, &wi], &[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let r = b.op("ReduceMean", &[&y], &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))]);
        b.output_f32(&r, &[Some(2), Some(12)]);
        let m = b.build();
        let (patch, done) = QuantizeConv4::default().build(&m).unwrap().unwrap();
        assert_eq!(done.len(), 1);
        let mut q = patch.apply(&m, "c4").unwrap();
        q.proto.ir_version = Some(IR_VERSION);
        assert_eq!(q.opset(""), Some(OPSET));
        // The reference: the same graph on the dequantized weights.
        let (codes, scales) = quantize_int4(&w);
        let per = w.len() / 12;
        let deq = ArrayD::from_shape_vec(IxDyn(w.shape()), codes.iter().enumerate().map(|(i, &c)| f32::from(c) * scales[i / per]).collect()).unwrap();
        let mut rb = GraphBuilder::new("ref", 17);
        let x2 = rb.input_f32("x", &[Some(2), Some(8), Some(6), Some(6)]);
        let wd = rb.init_f32("w", deq);
        let y2 = rb.op("Conv", &[&x2, &wd], &[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let r2 = rb.op("ReduceMean", &[&y2], &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))]);
        rb.output_f32(&r2, &[Some(2), Some(12)]);
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[2, 8, 6, 6]), |d| ((d[1] * 11 + d[2] * 3 + d[3] + d[0]) as f32 * 0.21).cos()));
        let run = |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        let (got, want) = (run(&q), run(&rb.build()));
        let err = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &b| a.max(b));
        assert!(err < 1e-4, "int4 Conv vs float Conv on the dequantized weights: {err}");
    }

    /// With the input's channel means, a Conv's bias takes back the shift its int4 weights
    /// make in the output mean: on an input whose channels are constant (and no padding, so
    /// every window sees the mean) the corrected int4 model gives the float model's output,
    /// for a Conv without a bias (one is added) and a depthwise Conv with one.
    #[test]
    fn bias_correction_puts_back_the_output_mean() {
        let mut b = GraphBuilder::new("bc4", 17);
        let x = b.input_f32("x", &[Some(1), Some(8), Some(5), Some(5)]);
        let w = ArrayD::from_shape_fn(IxDyn(&[16, 8, 3, 3]), |d| ((d[0] * 7 + d[1] * 3 + d[2] * 5 + d[3]) as f32 * 0.37).sin() * (1.0 + d[0] as f32 * 0.1));
        let wi = b.init_f32("w", w);
        let y = b.op("Conv", &[&x, &wi], &[]);
        let dw = ArrayD::from_shape_fn(IxDyn(&[16, 1, 3, 3]), |d| ((d[0] * 5 + d[2] * 3 + d[3]) as f32 * 0.53).cos());
        let dwi = b.init_f32("dw", dw);
        let bias = b.init_f32("db", ArrayD::from_shape_fn(IxDyn(&[16]), |d| d[0] as f32 * 0.01));
        let z = b.op("Conv", &[&y, &dwi, &bias], &[("group", Attr::Int(16))]);
        b.output_f32(&z, &[Some(1), Some(16), Some(1), Some(1)]);
        b.output_f32(&y, &[Some(1), Some(16), Some(3), Some(3)]);
        let m = b.build();
        let means_x: Vec<f64> = (0..8).map(|c| 0.5 + c as f64 * 0.25).collect();
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[1, 8, 5, 5]), |d| means_x[d[1]] as f32));
        let run = |m: &Model| Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap();
        let want = run(&m);
        let TensorValue::F32(y_float) = &want[1].1 else { panic!() };
        // The depthwise Conv's input is constant per channel too (valid 3×3 on 5×5 of constants).
        let means_y: Vec<f64> = (0..16).map(|c| f64::from(y_float[[0, c, 0, 0]])).collect();
        let node = |i: usize| node_key(&m.graph().node[i]).to_owned();
        let input_means = BTreeMap::from([(node(0), means_x), (node(1), means_y)]);
        let max_err = |q: &Model| {
            let got = run(q);
            let mut e = 0.0f32;
            for k in 0..2 {
                let (TensorValue::F32(a), TensorValue::F32(b)) = (&got[k].1, &want[k].1) else { panic!() };
                e = (a - b).mapv(f32::abs).fold(e, |m, &v| m.max(v));
            }
            e
        };
        let plain = QuantizeConv4 { min_elements: 16, ..QuantizeConv4::default() }.apply(&m).unwrap().unwrap().0;
        let corrected = QuantizeConv4 { min_elements: 16, input_means, ..QuantizeConv4::default() }.apply(&m).unwrap().unwrap().0;
        let (e0, e1) = (max_err(&plain), max_err(&corrected));
        assert!(e0 > 0.05, "int4 should move this output: {e0}");
        assert!(e1 < 1e-3, "corrected int4 vs float: {e1} (uncorrected {e0})");
        assert_eq!(corrected.graph().node.iter().filter(|n| n.input.len() == 3 && n.op_type.as_deref() == Some("Conv")).count(), 2, "a bias was added");
    }
}
