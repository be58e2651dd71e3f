//! Weights inside `If`/`Loop`/`Scan` bodies (recurrent and streaming models keep them there,
//! e.g. Silero VAD's 16 kHz and 8 kHz branches) — Conv, MatMul, Gemm and the W/R of
//! LSTM/GRU/RNN — and the recurrent layers' weights at the top level: int8 per output
//! channel, stored quantized and read through `DequantizeLinear`, at every nesting depth. ONNX Runtime's quantizer
//! leaves them alone; Tamp quantizes them with the same symmetric per-channel scheme as the
//! top-level weights, so the file shrinks about 4× wherever the weights are, and outputs
//! move only by the int8 weight rounding.
//!
//! Activations inside a body stay float: a body's values cannot be captured as graph
//! outputs for calibration, and its ops run float kernels on the dequantized weights.

use ndarray::ArrayD;
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{GraphProto, NodeProto, TensorProto};
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{Model, OnnxError, Pass, Patch};

use super::quantize::quantize_weight;

/// Quantizes the weights of `Conv`, `MatMul` and `Gemm` nodes inside subgraphs.
#[derive(Debug, Clone)]
pub struct QuantizeSubgraphWeights {
    /// Weights with fewer elements stay float.
    pub min_elements: usize,
    /// Top-level recurrent layers (node keys) whose weights stay float. ONNX Runtime has no
    /// integer LSTM/GRU/RNN kernel for a QDQ model: a weight read through `DequantizeLinear`
    /// is dequantized at every run and the layer repacks it at every run, where a float
    /// weight is packed once at load. Static PTQ keeps those the kernel profile finds
    /// slower ([`crate::kernels`]); bodies' weights are quantized whatever this holds.
    pub keep_float: std::collections::BTreeSet<String>,
}

impl Default for QuantizeSubgraphWeights {
    fn default() -> Self {
        Self { min_elements: 256, keep_float: Default::default() }
    }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// The output-channel axis of a weight read at `slot` (None: not a weight slot quantized here).
/// Recurrent layers (`LSTM`, `GRU`, `RNN`): W and R are `[directions, gates·hidden, ·]`,
/// one scale per gate row.
fn channel_axis(n: &NodeProto, slot: usize, rank: usize) -> Option<usize> {
    match (op(n), slot) {
        ("Conv", 1) if rank >= 3 => Some(0),
        ("MatMul", 1) if rank == 2 => Some(1),
        ("Gemm", 1) if rank == 2 => Some(if attr_int(n, "transB", 0) == 1 { 0 } else { 1 }),
        ("LSTM" | "GRU" | "RNN", 1 | 2) if rank == 3 => Some(1),
        _ => None,
    }
}

fn recurrent(n: &NodeProto) -> bool {
    matches!(op(n), "LSTM" | "GRU" | "RNN")
}

/// A float constant of `g` by value name: an initializer or a `Constant` node's tensor.
fn constant_of<'g>(g: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    g.initializer.iter().find(|t| t.name.as_deref() == Some(name)).or_else(|| {
        g.node
            .iter()
            .find(|n| op(n) == "Constant" && n.output.first().map(String::as_str) == Some(name))
            .and_then(|n| n.attribute.iter().find(|a| a.name.as_deref() == Some("value")))
            .and_then(|a| a.t.as_ref())
    })
}

/// Quantizes the weights of one graph (at the top level only those of recurrent layers,
/// which no other pass touches) and, recursively, of the bodies inside it.
fn body(g: &GraphProto, top: Option<&QuantizeSubgraphWeights>, min_elements: usize, count: &mut usize) -> Result<GraphProto, OnnxError> {
    let mut out = g.clone();
    let readers = |v: &str| g.node.iter().filter(|n| n.input.iter().any(|i| i == v)).count();
    let mut gone: Vec<String> = Vec::new();
    let at_top = |n: &NodeProto| top.is_none_or(|t| recurrent(n) && !t.keep_float.contains(super::quantize::node_key(n)));
    let slots = g.node.iter().enumerate().filter(|(_, n)| at_top(n)).flat_map(|(i, n)| [1usize, 2].map(|s| (i, n, s)));
    for (i, n, slot) in slots {
        let Some(w) = n.input.get(slot).filter(|w| !w.is_empty()) else { continue };
        let Some(t) = constant_of(g, w).filter(|t| t.data_type == Some(DataType::Float as i32)) else { continue };
        let Some(axis) = channel_axis(n, slot, t.dims.len()) else { continue };
        let arr: ArrayD<f32> = to_array(t)?;
        if arr.len() < min_elements || readers(w) != 1 {
            continue;
        }
        let (q, scales) = quantize_weight(&arr, Some(axis));
        let (qn, sn, dqn) = (format!("{w}.q"), format!("{w}.s"), format!("{w}.dq"));
        out.initializer.push(from_array(&qn, &q));
        out.initializer.push(from_array(&sn, &ndarray::Array1::from(scales).into_dyn()));
        out.node.push(NodeProto {
            op_type: Some("DequantizeLinear".into()),
            name: Some(format!("{w}.DQ")),
            input: vec![qn, sn],
            output: vec![dqn.clone()],
            attribute: vec![attribute("axis", Attr::Int(axis as i64))],
            ..Default::default()
        });
        out.node[i].input[slot] = dqn;
        gone.push(w.clone());
        *count += 1;
    }
    out.initializer.retain(|t| !t.name.as_ref().is_some_and(|n| gone.contains(n)));
    out.node.retain(|m| !(op(m) == "Constant" && m.output.first().is_some_and(|o| gone.contains(o))));
    // The DequantizeLinear nodes were appended: restore a topological order.
    tamp_onnx::graph::sort_nodes(&mut out)?;
    for n in &mut out.node {
        for a in &mut n.attribute {
            if let Some(sub) = &a.g {
                a.g = Some(body(sub, None, min_elements, count)?);
            }
            for sub in &mut a.graphs {
                *sub = body(sub, None, min_elements, count)?;
            }
        }
    }
    Ok(out)
}

impl Pass for QuantizeSubgraphWeights {
    /// Weights quantized, at every depth.
    type Report = usize;

    fn name(&self) -> &str {
        "quantize-subgraph-weights"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, usize)>, OnnxError> {
        if model.opset("").unwrap_or(0) < 13 {
            return Ok(None); // per-axis DequantizeLinear needs 13; preparation upgrades first
        }
        // The whole graph is rewritten (bodies are attributes, not patchable nodes); the patch
        // replaces every node and initializer that changed.
        let g = model.graph();
        let mut count = 0;
        let new = body(g, Some(self), self.min_elements, &mut count)?;
        if count == 0 {
            return Ok(None);
        }
        let mut patch = Patch { remove_nodes: (0..g.node.len()).collect(), add_nodes: new.node, ..Patch::default() };
        let old: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let kept: std::collections::HashSet<&str> = new.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        patch.remove_initializers = old.difference(&kept).map(|s| (*s).to_owned()).collect();
        patch.add_initializers = new.initializer.into_iter().filter(|t| !t.name.as_deref().is_some_and(|n| old.contains(n))).collect();
        Ok(Some((patch, count)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use tamp_onnx::builder::GraphBuilder;

    /// `y = If(c, then: x·W1, else: x·W2)` with the weights held inside the branches.
    pub fn if_model() -> Model {
        let branch = |name: &str, seed: f32| {
            let mut b = GraphBuilder::new(name, 13);
            let w = Array2::from_shape_fn((64, 32), |(i, j)| ((i * 31 + j * 7) as f32 * seed).sin()).into_dyn();
            let w = b.init_f32(&format!("{name}_w"), w);
            let y = b.op("MatMul", &["x", &w], &[]);
            b.output_f32(&y, &[None, Some(32)]);
            b.build_graph()
        };
        let mut b = GraphBuilder::new("if", 13);
        let _x = b.input_f32("x", &[None, Some(64)]);
        let c = b.input("c", DataType::Bool, &[]);
        let y = b.op("If", &[&c], &[("then_branch", Attr::Graph(branch("then", 0.37))), ("else_branch", Attr::Graph(branch("else", 0.11)))]);
        b.output_f32(&y, &[None, Some(32)]);
        b.build()
    }

    #[test]
    fn weights_in_both_branches_become_int8() {
        let m = if_model();
        let (q, n) = QuantizeSubgraphWeights::default().apply(&m).unwrap().unwrap();
        assert_eq!(n, 2);
        let ifnode = q.graph().node.iter().find(|n| op(n) == "If").unwrap();
        for a in &ifnode.attribute {
            let g = a.g.as_ref().unwrap();
            assert!(g.initializer.iter().any(|t| t.data_type == Some(DataType::Int8 as i32)));
            assert!(!g.initializer.iter().any(|t| t.data_type == Some(DataType::Float as i32) && t.dims == [64, 32]));
        }
        assert!(q.to_bytes().unwrap().len() < m.to_bytes().unwrap().len() / 2);
    }
}
