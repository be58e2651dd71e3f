//! Dynamic int8 quantization for transformer-style graphs: weights are quantized ahead of
//! time, activations at run time (no calibration data needed).
//!
//! - `MatMul` by a constant 2-D weight becomes, in standard ONNX ops,
//!   `DynamicQuantizeLinear(x) → MatMulInteger(x_q, W_q, x_zp, W_zp) → Cast → Mul(x_s·W_s)`,
//!   which ONNX Runtime fuses into one `DynamicQuantizeMatMul` kernel (bias `Add` included).
//!   Weights are int8 symmetric **per output column** (ORT's own dynamic quantizer uses one
//!   scale per tensor, the main reason it loses accuracy on sentence encoders).
//!   Activation × activation MatMuls (attention scores) stay float: their int8 error is the
//!   largest and their share of the time small at the sequence lengths these models serve.
//! - `Gather` on a constant float table (embeddings) keeps the table in int8 with one scale
//!   per row and gathers before dequantizing: `Gather(T_q, ids) → Cast → Mul(Gather(s, ids))`,
//!   so a lookup costs the rows it reads, not a pass over the whole table.

use std::collections::{BTreeSet, HashMap};

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::{node_key, quantize_weight, to_u8};

/// What the dynamic pass quantizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicConfig {
    /// One weight scale per output column (else per tensor, as ORT's `quantize_dynamic`).
    pub per_channel: bool,
    /// Store constant embedding tables in int8 (per row).
    pub embeddings: bool,
    /// Weights with fewer elements than this stay float (quantizing them saves nothing).
    pub min_elements: usize,
    /// Nodes (by [`node_key`]) left in float.
    pub exclude: BTreeSet<String>,
    /// Weights as uint8 with zero point 128 (ORT's U8U8 kernels), for CPUs whose u8×s8
    /// kernels saturate ([`crate::isa`]).
    pub u8_weights: bool,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        Self { per_channel: true, embeddings: true, min_elements: 4096, exclude: BTreeSet::new(), u8_weights: false }
    }
}

/// Counts for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicCounts {
    pub matmuls: usize,
    pub embeddings: usize,
    /// Weights inside If/Loop/Scan bodies ([`super::subgraph`]).
    #[serde(default)]
    pub subgraph_weights: usize,
}

#[derive(Debug, Clone, Default)]
pub struct QuantizeDynamic {
    pub config: DynamicConfig,
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn node(op_type: &str, name: String, inputs: Vec<String>, outputs: Vec<String>, attrs: Vec<tamp_onnx::proto::AttributeProto>) -> NodeProto {
    NodeProto { op_type: Some(op_type.into()), name: Some(name), input: inputs, output: outputs, attribute: attrs, ..Default::default() }
}

fn shaped(shape: &[usize], v: Vec<f32>) -> Result<ArrayD<f32>, OnnxError> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(OnnxError::from)
}

impl Pass for QuantizeDynamic {
    type Report = DynamicCounts;

    fn name(&self) -> &str {
        "quantize-dynamic"
    }

    /// The patch and what it quantized; `None` when there is nothing to do.
    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        if g.node.iter().any(|n| matches!(op(n), "MatMulInteger" | "DynamicQuantizeLinear")) {
            return Ok(None); // one-shot
        }
        let opset = model.opset("").unwrap_or(0);
        if opset < 13 {
            return Err(OnnxError::Graph(format!("the model imports opset {opset}; per-axis quantization needs 13 or later (re-export at opset ≥ 13)")));
        }
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut counts = DynamicCounts::default();
        let mut dql: HashMap<&str, (String, String, String)> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            if self.config.exclude.contains(node_key(n)) {
                continue;
            }
            match op(n) {
                "MatMul" => {
                    let (Some(x), Some(wname), Some(y)) = (n.input.first(), n.input.get(1), n.output.first()) else { continue };
                    let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
                    if w.ndim() != 2 || w.len() < self.config.min_elements || view.constant(x).is_some() {
                        continue;
                    }
                    let (q, scales) = quantize_weight(&w, self.config.per_channel.then_some(1));
                    let key = if view.consumers(wname).len() == 1 { wname.clone() } else { format!("{wname}#{i}") };
                    let (wq, ws, wz) = (format!("{key}.q"), format!("{key}.s"), format!("{key}.zp"));
                    let sshape: Vec<usize> = if scales.len() == 1 { vec![] } else { vec![scales.len()] };
                    patch.add_initializers.push(from_array(&ws, &shaped(&sshape, scales)?));
                    if self.config.u8_weights {
                        patch.add_initializers.push(from_array(&wq, &to_u8(&q)));
                        patch.add_initializers.push(from_array(&wz, &ArrayD::<u8>::from_elem(IxDyn(&sshape), 128)));
                    } else {
                        patch.add_initializers.push(from_array(&wq, &q));
                        patch.add_initializers.push(from_array(&wz, &ArrayD::<i8>::zeros(IxDyn(&sshape))));
                    }
                    let (xq, xs, xz) = dql
                        .entry(x.as_str())
                        .or_insert_with(|| {
                            let names = (format!("{x}.q"), format!("{x}.s"), format!("{x}.zp"));
                            patch.add_nodes.push(node(
                                "DynamicQuantizeLinear",
                                format!("{x}.DQL"),
                                vec![x.clone()],
                                vec![names.0.clone(), names.1.clone(), names.2.clone()],
                                vec![],
                            ));
                            names
                        })
                        .clone();
                    let (yi, yf, ys) = (format!("{y}.i32"), format!("{y}.f"), format!("{y}.scale"));
                    patch.add_nodes.push(node("MatMulInteger", format!("{y}.MatMulInteger"), vec![xq, wq, xz, wz], vec![yi.clone()], vec![]));
                    patch.add_nodes.push(node(
                        "Cast",
                        format!("{y}.Cast"),
                        vec![yi],
                        vec![yf.clone()],
                        vec![attribute("to", Attr::Int(DataType::Float as i64))],
                    ));
                    patch.add_nodes.push(node("Mul", format!("{y}.ScaleMul"), vec![xs, ws], vec![ys.clone()], vec![]));
                    patch.add_nodes.push(node("Mul", format!("{y}.Mul"), vec![yf, ys], vec![y.clone()], vec![]));
                    patch.remove_nodes.insert(i);
                    counts.matmuls += 1;
                }
                "Gather" if self.config.embeddings => {
                    let (Some(tname), Some(ids), Some(y)) = (n.input.first(), n.input.get(1), n.output.first()) else { continue };
                    let Some(t) = view.constant(tname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
                    if t.ndim() != 2 || t.len() < self.config.min_elements || attr_int(n, "axis", 0) != 0 {
                        continue;
                    }
                    let (q, scales) = quantize_weight(&t, Some(0));
                    let key = if view.consumers(tname).len() == 1 { tname.clone() } else { format!("{tname}#{i}") };
                    let (tq, ts) = (format!("{key}.q"), format!("{key}.s"));
                    let rows = scales.len();
                    // Scales shaped [rows, 1] so the gathered [.., 1] broadcasts over the row.
                    patch.add_initializers.push(from_array(&tq, &q));
                    patch.add_initializers.push(from_array(&ts, &shaped(&[rows, 1], scales)?));
                    let (gq, gf, gs) = (format!("{y}.q"), format!("{y}.f"), format!("{y}.s"));
                    patch.add_nodes.push(node("Gather", format!("{y}.GatherQ"), vec![tq, ids.clone()], vec![gq.clone()], vec![]));
                    patch.add_nodes.push(node(
                        "Cast",
                        format!("{y}.Cast"),
                        vec![gq],
                        vec![gf.clone()],
                        vec![attribute("to", Attr::Int(DataType::Float as i64))],
                    ));
                    patch.add_nodes.push(node("Gather", format!("{y}.GatherS"), vec![ts, ids.clone()], vec![gs.clone()], vec![]));
                    patch.add_nodes.push(node("Mul", format!("{y}.Mul"), vec![gf, gs], vec![y.clone()], vec![]));
                    patch.remove_nodes.insert(i);
                    counts.embeddings += 1;
                }
                _ => {}
            }
        }
        Ok((!patch.is_empty()).then_some((patch, counts)))
    }
}

/// The nodes the dynamic pass would quantize (the fallback's units), in graph order.
pub fn quantizable_nodes(model: &Model, cfg: &DynamicConfig) -> Result<Vec<String>, OnnxError> {
    let probe = QuantizeDynamic { config: DynamicConfig { exclude: BTreeSet::new(), ..cfg.clone() } };
    let Some((patch, _)) = probe.build(model)? else { return Ok(Vec::new()) };
    Ok(patch.remove_nodes.iter().map(|&i| node_key(&model.graph().node[i]).to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tamp_onnx::builder::GraphBuilder;

    fn toy() -> Model {
        let mut b = GraphBuilder::new("toy", 17);
        let x = b.input_f32("x", &[None, Some(64)]);
        let w = b.init_f32("w", ArrayD::from_shape_fn(IxDyn(&[64, 96]), |ix| ((ix[0] * 7 + ix[1] * 3) % 11) as f32 / 11.0 - 0.5));
        let y = b.op("MatMul", &[&x, &w], &[]);
        let r = b.op("Relu", &[&y], &[]);
        b.output_f32(&r, &[None, Some(96)]);
        b.build()
    }

    #[test]
    fn matmul_becomes_integer_matmul_and_weights_int8() {
        let m = toy();
        let (patch, counts) = QuantizeDynamic::default().build(&m).unwrap().unwrap();
        assert_eq!(counts, DynamicCounts { matmuls: 1, embeddings: 0, subgraph_weights: 0 });
        let q = patch.apply(&m, "quantize-dynamic").unwrap();
        let ops: Vec<&str> = q.graph().node.iter().map(op).collect();
        assert!(ops.contains(&"MatMulInteger") && ops.contains(&"DynamicQuantizeLinear") && !ops.contains(&"MatMul"), "{ops:?}");
        assert!(q.graph().initializer.iter().all(|t| t.name.as_deref() != Some("w")), "the float weight is dropped");
        assert!(QuantizeDynamic::default().build(&q).unwrap().is_none(), "one-shot");
    }
}
