//! Multiply-accumulates per sample, counted from the shapes a real run produces: one row of
//! the dataset goes through ONNX Runtime with the outputs of every Conv / Gemm / MatMul
//! (float, QDQ or integer form) captured, so symbolic and data-dependent shapes (sequence
//! length, strides, padding) are the ones the model really sees. FLOPs ≈ 2 × MACs.
//!
//! - Conv / ConvInteger / QLinearConv: output elements × (Cin / group) × kernel area;
//! - Gemm, MatMul and their integer forms: output elements × the reduced dimension K.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tamp_onnx::{GraphView, Model};

use crate::capture;
use crate::dataset::Dataset;
use crate::error::Result;
use crate::runtime::SessionConfig;

/// MACs of one sample, in all and per op type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Macs {
    pub per_sample: u64,
    pub by_op: BTreeMap<String, u64>,
}

/// (output value, index of the input holding the weight / the reduced operand, op) of each
/// counted node.
fn counted(model: &Model) -> Vec<(String, String, String, Option<i64>)> {
    let g = model.graph();
    let mut out = Vec::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or_default();
        let w_index = match op {
            "Conv" | "ConvInteger" | "MatMul" | "Gemm" | "MatMulInteger" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat" => 1,
            "QLinearConv" | "QLinearMatMul" => 3,
            _ => continue,
        };
        let (Some(y), Some(w)) = (n.output.first(), n.input.get(w_index)) else { continue };
        let trans_b = (op == "Gemm").then(|| n.attribute.iter().find(|a| a.name.as_deref() == Some("transB")).and_then(|a| a.i).unwrap_or(0));
        out.push((y.clone(), w.clone(), op.to_owned(), trans_b));
    }
    out
}

/// Counts the MACs of one sample (`row` of `data`) through `model`.
pub fn count(model: &Model, data: &Dataset, row: usize) -> Result<Macs> {
    let nodes = counted(model);
    let view = GraphView::new(model.graph());
    // Constant weights give their dims directly; the rest (DequantizeLinear outputs, the
    // second operand of attention MatMuls) are captured with the outputs.
    let mut wanted: Vec<String> = nodes.iter().map(|(y, ..)| y.clone()).collect();
    wanted.extend(nodes.iter().filter(|(_, w, ..)| view.constant(w).is_none()).map(|(_, w, ..)| w.clone()));
    wanted.sort_unstable();
    wanted.dedup();
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    capture::capture(model, data, &[row], &wanted, 1, &SessionConfig { intra_threads: 1, ..SessionConfig::default() }, false, |_, got| {
        shapes.extend(got.iter().map(|(k, v)| (k.clone(), v.shape().to_vec())));
        Ok(())
    })?;
    let mut macs = Macs::default();
    for (y, w, op, trans_b) in nodes {
        let (Some(out), Some(wd)) =
            (shapes.get(&y), view.constant(&w).map(|t| t.dims.iter().map(|&d| d.max(0) as usize).collect::<Vec<_>>()).or_else(|| shapes.get(&w).cloned()))
        else {
            continue;
        };
        let out_elems: u64 = out.iter().map(|&d| d as u64).product();
        let per_output: u64 = match op.as_str() {
            "Conv" | "ConvInteger" | "QLinearConv" => wd.iter().skip(1).map(|&d| d as u64).product(),
            "Gemm" if trans_b == Some(1) => wd.last().copied().unwrap_or(1) as u64,
            // MatMul-like: B is [.., K, N].
            _ => wd.len().checked_sub(2).and_then(|i| wd.get(i)).copied().unwrap_or(1) as u64,
        };
        let m = out_elems * per_output;
        macs.per_sample += m;
        *macs.by_op.entry(op).or_default() += m;
    }
    Ok(macs)
}
