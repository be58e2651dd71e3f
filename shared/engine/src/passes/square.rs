//! Rewrites `Pow(x, 2)` as `Mul(x, x)`. The two are the same function, bit for bit (the
//! square of a float is one correctly rounded product either way), but ONNX Runtime runs
//! `Pow` through its general power kernel: on oww_melspec's two STFT magnitudes it took
//! 11 µs each at batch 1 where a `Mul` of the same tensor takes about 3 µs. Spectrogram
//! front ends (`real² + imag²`) and variance computations written as `Pow` carry it.
//!
//! Only a scalar exponent that is a constant exactly equal to 2 is rewritten; the output
//! keeps its name, so nothing after it is rewired. The exponent's initializer goes when the
//! `Pow` was its only reader.
//!
//! A square that a `ReduceMean` reads stays a `Pow`: that is the variance of a decomposed
//! LayerNorm (`ReduceMean → Sub → Pow → ReduceMean → Add → Sqrt → Div`) or RMSNorm, and
//! ONNX Runtime's LayerNorm fusions match the `Pow`. Rewritten, tashkeel's 15 LayerNorms ran
//! as their 8 separate ops (about 200 µs more per run than 15 fused `LayerNormalization`s).

use std::collections::HashSet;

use tamp_onnx::proto::NodeProto;
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::hardswish::scalar;

/// The `Pow(x, 2)` → `Mul(x, x)` pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct SquareByMul;

impl Pass for SquareByMul {
    /// Squares rewritten.
    type Report = usize;

    fn name(&self) -> &str {
        "square-by-mul"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let inits: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let mut patch = Patch::default();
        let mut n = 0;
        for (i, node) in g.node.iter().enumerate() {
            let [x, e] = node.input.as_slice() else { continue };
            if node.op_type.as_deref() != Some("Pow") || scalar(&view, e) != Some(2.0) {
                continue;
            }
            let variance = view.consumers(&node.output[0]).iter().any(|&c| g.node[c].op_type.as_deref() == Some("ReduceMean"));
            if variance {
                continue;
            }
            patch.remove_nodes.insert(i);
            patch.add_nodes.push(NodeProto {
                op_type: Some("Mul".into()),
                name: Some(format!("{}.square", node.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| node.output[0].clone()))),
                input: vec![x.clone(), x.clone()],
                output: node.output.clone(),
                ..Default::default()
            });
            if inits.contains(e.as_str()) && view.consumers(e).len() == 1 {
                patch.remove_initializers.insert(e.clone());
            }
            n += 1;
        }
        Ok((n > 0).then_some((patch, n)))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tamp_onnx::builder::{Attr, GraphBuilder};

    use super::*;

    fn pow(e: f32) -> Model {
        let mut b = GraphBuilder::new("pow", 13);
        let x = b.input_f32("x", &[Some(1), Some(4)]);
        let c = b.init_f32("e", ArrayD::from_elem(IxDyn(&[]), e));
        let y = b.op("Pow", &[&x, &c], &[]);
        b.output_f32(&y, &[Some(1), Some(4)]);
        b.build()
    }

    #[test]
    fn only_a_constant_square_is_rewritten() {
        let (m, n) = SquareByMul.apply(&pow(2.0)).unwrap().unwrap();
        assert_eq!(n, 1);
        let g = m.graph();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].op_type.as_deref(), Some("Mul"));
        assert_eq!(g.node[0].input, [g.input[0].name.clone().unwrap(), g.input[0].name.clone().unwrap()]);
        assert_eq!(g.node[0].output[0], pow(2.0).graph().output[0].name.clone().unwrap(), "the output keeps its name");
        assert!(g.initializer.is_empty(), "the exponent had no other reader");
        for e in [3.0, 0.5, 2.0001] {
            assert!(SquareByMul.apply(&pow(e)).unwrap().is_none(), "Pow(x, {e}) is not a square");
        }
    }

    #[test]
    fn a_variance_square_stays_a_pow_for_the_layernorm_fusion() {
        let mut b = GraphBuilder::new("var", 13);
        let x = b.input_f32("x", &[Some(1), Some(4)]);
        let c = b.init_f32("e", ArrayD::from_elem(IxDyn(&[]), 2.0));
        let sq = b.op("Pow", &[&x, &c], &[]);
        let v = b.op("ReduceMean", &[&sq], &[("axes", Attr::Ints(vec![-1]))]);
        b.output_f32(&v, &[Some(1), Some(1)]);
        assert!(SquareByMul.apply(&b.build()).unwrap().is_none());
    }
}
