//! 4-bit weight-only quantization for MatMul and Gemm by constant weights, as ONNX Runtime's
//! `com.microsoft.MatMulNBits` (block-wise asymmetric uint4 weights, fp32 activations; with
//! `accuracy_level: 4` ORT multiplies with int8 activations internally).
//!
//! Layout (ORT's): for weight `W[K, N]`, `B[N, blocks, block_size / 2]` uint8 with two
//! values per byte (even index in the low nibble), `scales[N · blocks]` fp32, and
//! `zero_points[N · ⌈blocks / 2⌉]` uint8 packed the same way; `K` is padded to whole blocks
//! with zeros. Dequantized `w = (q − zp) · scale`. A Gemm (no transA, alpha = beta = 1)
//! becomes one `MatMulNBits` with its constant 1-D bias as the op's `bias` input; `transB`
//! only changes which way the weight's columns are read.

use std::collections::BTreeSet;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::node_key;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NBitsConfig {
    /// Weights per block along K (a power of two, ≥ 16).
    pub block_size: usize,
    /// ORT's `accuracy_level` (0: fp32 compute … 4: int8 activations, fastest on CPU).
    pub accuracy_level: i64,
    pub min_elements: usize,
    pub exclude: BTreeSet<String>,
}

impl Default for NBitsConfig {
    fn default() -> Self {
        Self { block_size: 32, accuracy_level: 4, min_elements: 4096, exclude: BTreeSet::new() }
    }
}

#[derive(Debug, Clone, Default)]
pub struct QuantizeNBits {
    pub config: NBitsConfig,
}

/// One column's blocks: packed values, scales, packed zero points.
fn quantize_column(col: &[f32], block: usize) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let blocks = col.len().div_ceil(block);
    let mut packed = vec![0u8; blocks * block / 2];
    let mut scales = Vec::with_capacity(blocks);
    let mut zps = vec![0u8; blocks.div_ceil(2)];
    for b in 0..blocks {
        let vals: Vec<f32> = (0..block).map(|i| col.get(b * block + i).copied().unwrap_or(0.0)).collect();
        let (lo, hi) = vals.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
        let scale = if hi > lo { (hi - lo) / 15.0 } else { 1.0 };
        let zp = (-lo / scale).round().clamp(0.0, 15.0) as u8;
        for (i, &v) in vals.iter().enumerate() {
            let q = ((v / scale).round() + f32::from(zp)).clamp(0.0, 15.0) as u8;
            let byte = &mut packed[(b * block + i) / 2];
            *byte |= if i.is_multiple_of(2) { q } else { q << 4 };
        }
        scales.push(scale);
        zps[b / 2] |= if b.is_multiple_of(2) { zp } else { zp << 4 };
    }
    (packed, scales, zps)
}

/// Dequantizes what [`quantize_column`] produced (for tests and error estimates).
pub fn dequantize_column(packed: &[u8], scales: &[f32], zps: &[u8], k: usize, block: usize) -> Vec<f32> {
    (0..k)
        .map(|i| {
            let b = i / block;
            let q = if i.is_multiple_of(2) { packed[i / 2] & 0x0f } else { packed[i / 2] >> 4 };
            let zp = if b.is_multiple_of(2) { zps[b / 2] & 0x0f } else { zps[b / 2] >> 4 };
            (f32::from(q) - f32::from(zp)) * scales[b]
        })
        .collect()
}

impl Pass for QuantizeNBits {
    type Report = usize;

    fn name(&self) -> &str {
        "quantize-4bit"
    }

    /// The patch and the number of MatMuls and Gemms it turned into `MatMulNBits`.
    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let block = self.config.block_size;
        if !(block.is_power_of_two() && block >= 16) {
            return Err(OnnxError::Graph(format!("4-bit block size {block} must be a power of two ≥ 16")));
        }
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut n = 0;
        for (i, node) in g.node.iter().enumerate() {
            let op = node.op_type.as_deref().unwrap_or_default();
            if !matches!(op, "MatMul" | "Gemm") || self.config.exclude.contains(node_key(node)) {
                continue;
            }
            let (Some(x), Some(wname), Some(y)) = (node.input.first(), node.input.get(1), node.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.ndim() != 2 || w.len() < self.config.min_elements || view.constant(x).is_some() {
                continue;
            }
            // Gemm: Y = X · W (transB = 0) or X · Wᵀ (transB = 1), plus a constant bias.
            let trans_b = op == "Gemm" && tamp_onnx::graph::attr_int(node, "transB", 0) != 0;
            let mut bias = None;
            if op == "Gemm" {
                let plain = tamp_onnx::graph::attr_int(node, "transA", 0) == 0
                    && tamp_onnx::graph::attr_float(node, "alpha", 1.0) == 1.0
                    && tamp_onnx::graph::attr_float(node, "beta", 1.0) == 1.0;
                let n_out = w.shape()[usize::from(!trans_b)];
                match node.input.get(2).filter(|c| !c.is_empty()) {
                    None => {}
                    Some(c) => match view.constant(c).and_then(|t| to_array::<f32>(t).ok()) {
                        Some(b) if b.len() == n_out && b.shape().iter().rev().skip(1).all(|&d| d == 1) => bias = Some(b.into_raw_vec_and_offset().0),
                        _ => continue,
                    },
                }
                if !plain {
                    continue;
                }
            }
            let (k, cols) = if trans_b { (w.shape()[1], w.shape()[0]) } else { (w.shape()[0], w.shape()[1]) };
            let blocks = k.div_ceil(block);
            let (mut b_all, mut s_all, mut z_all) = (Vec::new(), Vec::new(), Vec::new());
            for c in 0..cols {
                let col: Vec<f32> = (0..k).map(|r| if trans_b { w[[c, r]] } else { w[[r, c]] }).collect();
                let (p, s, z) = quantize_column(&col, block);
                b_all.extend(p);
                s_all.extend(s);
                z_all.extend(z);
            }
            let key = if view.consumers(wname).len() == 1 { wname.clone() } else { format!("{wname}#{i}") };
            let (bn, sn, zn) = (format!("{key}.q4"), format!("{key}.s4"), format!("{key}.zp4"));
            let shaped_u8 = |shape: &[usize], v: Vec<u8>| ArrayD::from_shape_vec(IxDyn(shape), v).map_err(OnnxError::from);
            patch.add_initializers.push(from_array(&bn, &shaped_u8(&[cols, blocks, block / 2], b_all)?));
            patch.add_initializers.push(from_array(&sn, &ArrayD::from_shape_vec(IxDyn(&[cols * blocks]), s_all)?));
            patch.add_initializers.push(from_array(&zn, &shaped_u8(&[cols * blocks.div_ceil(2)], z_all)?));
            let mut inputs = vec![x.clone(), bn, sn, zn];
            if let Some(b) = bias {
                // MatMulNBits inputs: A, B, scales, zero_points, g_idx (absent), bias.
                let bname = format!("{key}.bias4");
                patch.add_initializers.push(from_array(&bname, &ArrayD::from_shape_vec(IxDyn(&[cols]), b)?));
                inputs.extend([String::new(), bname]);
            }
            patch.add_nodes.push(NodeProto {
                op_type: Some("MatMulNBits".into()),
                domain: Some("com.microsoft".into()),
                name: Some(format!("{y}.MatMulNBits")),
                input: inputs,
                output: vec![y.clone()],
                attribute: vec![
                    attribute("K", Attr::Int(k as i64)),
                    attribute("N", Attr::Int(cols as i64)),
                    attribute("bits", Attr::Int(4)),
                    attribute("block_size", Attr::Int(block as i64)),
                    attribute("accuracy_level", Attr::Int(self.config.accuracy_level)),
                ],
                ..Default::default()
            });
            patch.remove_nodes.insert(i);
            n += 1;
        }
        if n > 0 {
            patch.opsets.push(("com.microsoft".into(), 1));
        }
        Ok((!patch.is_empty()).then_some((patch, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every weight comes back within half a step of its block.
        #[test]
        fn round_trip_within_half_a_step(col in proptest::collection::vec(-3.0f32..3.0, 1..100)) {
            let (p, s, z) = quantize_column(&col, 16);
            let back = dequantize_column(&p, &s, &z, col.len(), 16);
            for (i, (a, b)) in col.iter().zip(&back).enumerate() {
                prop_assert!((a - b).abs() <= s[i / 16] * 0.5 + 1e-5, "{a} vs {b} (scale {})", s[i / 16]);
            }
        }
    }

    /// Gemm with transB = 1 and 0, each with a bias, as MatMulNBits in ONNX Runtime: the
    /// outputs match the float Gemm to within the 4-bit weights' error, and a Gemm with
    /// alpha ≠ 1 is left alone.
    #[test]
    fn gemm_becomes_matmulnbits_with_its_bias() {
        use crate::runtime::{Session, SessionConfig};
        use tamp_onnx::TensorValue;
        use tamp_onnx::builder::GraphBuilder;
        let (k, n) = (96, 24);
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[3, k]), |d| ((d[0] * 17 + d[1] * 5) as f32 * 0.11).sin()));
        let run = |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        for (trans_b, alpha) in [(1, 1.0), (0, 1.0), (1, 0.5)] {
            let mut gb = GraphBuilder::new("gemm", 17);
            let x = gb.input_f32("x", &[None, Some(k as i64)]);
            let shape = if trans_b == 1 { [n, k] } else { [k, n] };
            let w = gb.init_f32("w", ArrayD::from_shape_fn(IxDyn(&shape), |d| ((d[0] * 31 + d[1] * 7) as f32 * 0.13).cos()));
            let b = gb.init_f32("b", ArrayD::from_shape_fn(IxDyn(&[n]), |d| d[0] as f32 * 0.25 - 2.0));
            let y = gb.op("Gemm", &[&x, &w, &b], &[("transB", Attr::Int(trans_b)), ("alpha", Attr::Float(alpha))]);
            gb.output_f32(&y, &[None, Some(n as i64)]);
            let m = gb.build();
            let pass = QuantizeNBits { config: NBitsConfig { block_size: 32, min_elements: 16, ..NBitsConfig::default() } };
            let Some((patch, count)) = pass.build(&m).unwrap() else {
                assert_eq!(alpha, 0.5, "transB {trans_b}: nothing quantized");
                continue;
            };
            assert_eq!((count, alpha), (1, 1.0));
            let q = patch.apply(&m, "4bit").unwrap();
            assert_eq!(q.graph().node[0].op_type.as_deref(), Some("MatMulNBits"));
            let (before, after) = (run(&m), run(&q));
            // The product with the dequantized 4-bit weights, computed here.
            let inits = |name: &str| q.graph().initializer.iter().find(|t| t.name.as_deref() == Some(name)).unwrap().clone();
            let (packed, scales, zps) =
                (to_array::<u8>(&inits("w.q4")).unwrap(), to_array::<f32>(&inits("w.s4")).unwrap(), to_array::<u8>(&inits("w.zp4")).unwrap());
            let blocks = k / 32;
            let x = match &input {
                TensorValue::F32(a) => a.clone(),
                _ => unreachable!(),
            };
            let mut want = ArrayD::<f32>::zeros(IxDyn(&[3, n]));
            for c in 0..n {
                let col = dequantize_column(
                    &packed.as_slice().unwrap()[c * k / 2..(c + 1) * k / 2],
                    &scales.as_slice().unwrap()[c * blocks..(c + 1) * blocks],
                    &zps.as_slice().unwrap()[c * blocks.div_ceil(2)..(c + 1) * blocks.div_ceil(2)],
                    k,
                    32,
                );
                for r in 0..3 {
                    want[[r, c]] = (0..k).map(|i| x[[r, i]] * col[i]).sum::<f32>() + c as f32 * 0.25 - 2.0;
                }
            }
            let rel = |a: &ArrayD<f32>, b: &ArrayD<f32>| (a - b).mapv(|v| v * v).sum().sqrt() / b.mapv(|v| v * v).sum().sqrt();
            assert!(rel(&after, &want) < 0.02, "transB {trans_b}: ORT vs dequantized product {}", rel(&after, &want));
            assert!(rel(&after, &before) < 0.2, "transB {trans_b}: 4-bit vs float {}", rel(&after, &before));
        }
    }
}
