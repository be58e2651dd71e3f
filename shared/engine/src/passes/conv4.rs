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

use std::collections::BTreeSet;

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::{attr_ints, node_label};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{NodeProto, TensorProto};
use tamp_onnx::tensor::{from_array, pack_int4, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

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
}

impl Default for QuantizeConv4 {
    fn default() -> Self {
        Self { min_elements: 256, exclude: BTreeSet::new() }
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
            patch.add_initializers.push(from_array(&sn, &ArrayD::from_shape_vec(IxDyn(&[scales.len()]), scales)?));
            patch.add_nodes.push(NodeProto {
                op_type: Some("DequantizeLinear".into()),
                name: Some(format!("{key}.DQ4")),
                input: vec![qn, sn],
                output: vec![dq.clone()],
                attribute: vec![attribute("axis", Attr::Int(0))],
                ..Default::default()
            });
            patch.rewire.push((i, 1, dq));
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
}
