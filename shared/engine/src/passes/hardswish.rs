//! Rewrites a hard-swish spelled out in elementwise ops, `x · clip(x + 3, 0, 6) / 6` (Paddle's
//! exporter, older PyTorch and TF exports), as `Mul(x, HardSigmoid(x; α = 1/6, β = ½))`.
//! The two are the same function: clip(x + 3, 0, 6) / 6 = clip(x/6 + ½, 0, 1).
//!
//! Why: ONNX Runtime runs the spelled-out form as four memory passes (Add, Clip, Mul, Div: 52
//! of PicoDet's 133 ms at batch 1) and, once quantized, cannot carry it in int8. The two-op
//! form is one fused pass in fp32, and in int8 its Mul runs as QLinearMul
//! ([`super::quantize`] treats `x · gate(x)` as one unit).
//!
//! Recognised (either operand order of Add/Mul; `/ 6` as Div or as Mul by 1/6):
//! - `Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`;
//! - `Mul(x, Div(Clip(Add(x, 3), 0, 6), 6))`.
//!
//! Every intermediate value must have the one reader the pattern gives it and not be a graph
//! output; the pattern's last value keeps its name, so nothing after it is rewired.

use std::collections::HashSet;

use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::to_array;
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

/// The hard-swish rewriting pass.
#[derive(Debug, Default, Clone, Copy)]
pub struct FuseHardSwish;

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// The value of a one-element float constant (shared with [`super::square`]).
pub(crate) fn scalar(view: &GraphView<'_>, name: &str) -> Option<f32> {
    let a = view.constant(name).and_then(|t| to_array::<f32>(t).ok())?;
    (a.len() == 1).then(|| a.iter().next().copied()).flatten()
}

fn near(v: Option<f32>, want: f32) -> bool {
    v.is_some_and(|v| (v - want).abs() <= 1e-6 * want.abs().max(1.0))
}

/// For a binary op reading `known`, the other operand.
fn other<'a>(n: &'a NodeProto, known: &str) -> Option<&'a str> {
    match n.input.as_slice() {
        [a, b] if a == known => Some(b),
        [a, b] if b == known => Some(a),
        _ => None,
    }
}

/// `Div(v, 6)` or `Mul(v, 1/6)` (either order).
fn is_sixth(view: &GraphView<'_>, n: &NodeProto, v: &str) -> bool {
    match op(n) {
        "Div" => n.input.len() == 2 && n.input[0] == v && near(scalar(view, &n.input[1]), 6.0),
        "Mul" => other(n, v).is_some_and(|c| near(scalar(view, c), 1.0 / 6.0)),
        _ => false,
    }
}

impl Pass for FuseHardSwish {
    /// Hard-swishes rewritten.
    type Report = usize;

    fn name(&self) -> &str {
        "fuse-hard-swish"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
        // The one reader of an intermediate value, when it has exactly one and is not an output.
        let only_reader = |v: &str| match view.consumers(v) {
            [c] if !outputs.contains(v) => Some(*c),
            _ => None,
        };
        let mut patch = Patch::default();
        let mut fused = 0;
        let opset = model.opset("").unwrap_or(0);
        for (ci, clip) in g.node.iter().enumerate() {
            if op(clip) != "Clip" || clip.input.len() != 3 || !near(scalar(&view, &clip.input[1]), 0.0) || !near(scalar(&view, &clip.input[2]), 6.0) {
                continue;
            }
            let Some(ai) = view.producer(&clip.input[0]).filter(|&a| op(&g.node[a]) == "Add" && only_reader(&clip.input[0]) == Some(ci)) else { continue };
            let add = &g.node[ai];
            let x = match add.input.as_slice() {
                [a, b] if near(scalar(&view, b), 3.0) => a,
                [a, b] if near(scalar(&view, a), 3.0) => b,
                _ => continue,
            };
            let Some(ni) = only_reader(&clip.output[0]) else { continue };
            let next = &g.node[ni];
            // (first node after the clip, last node of the pattern)
            let (li, last) = if op(next) == "Mul" && other(next, &clip.output[0]) == Some(x.as_str()) {
                // x · clip, then / 6
                let Some(di) = only_reader(&next.output[0]) else { continue };
                if !is_sixth(&view, &g.node[di], &next.output[0]) {
                    continue;
                }
                (di, &g.node[di])
            } else if is_sixth(&view, next, &clip.output[0]) {
                // clip / 6, then x · that
                let Some(mi) = only_reader(&next.output[0]) else { continue };
                if op(&g.node[mi]) != "Mul" || other(&g.node[mi], &next.output[0]) != Some(x.as_str()) {
                    continue;
                }
                (mi, &g.node[mi])
            } else {
                continue;
            };
            let nodes = [ai, ci, ni, li];
            if nodes.iter().any(|i| patch.remove_nodes.contains(i)) {
                continue;
            }
            let y = &last.output[0];
            let gate = format!("{y}.hard_sigmoid");
            let stem = clip.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| y.clone());
            patch.remove_nodes.extend(nodes);
            fused += 1;
            if opset >= 13 {
                patch.add_nodes.push(NodeProto {
                    op_type: Some("HardSwish".into()),
                    name: Some(format!("{stem}.HardSwish")),
                    input: vec![x.clone()],
                    output: vec![y.clone()],
                    ..Default::default()
                });
                continue;
            }
            patch.add_nodes.push(NodeProto {
                op_type: Some("HardSigmoid".into()),
                name: Some(format!("{stem}.HardSigmoid")),
                input: vec![x.clone()],
                output: vec![gate.clone()],
                attribute: vec![attribute("alpha", Attr::Float(1.0 / 6.0)), attribute("beta", Attr::Float(0.5))],
                ..Default::default()
            });
            patch.add_nodes.push(NodeProto {
                op_type: Some("Mul".into()),
                name: Some(format!("{stem}.HardSwish")),
                input: vec![x.clone(), gate],
                output: vec![y.clone()],
                ..Default::default()
            });
        }
        if opset >= 13 && fused > 0 {
            patch.opsets.push((String::new(), 14));
        }
        Ok((!patch.is_empty()).then_some((patch, fused)))
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use tamp_onnx::builder::GraphBuilder;

    use super::*;

    /// `x · clip(x + 3, lo, hi) / six`, with the sum also read by `extra` when given.
    fn spelled_out(lo: f32, hi: f32, six: f32, extra: bool) -> Model {
        let mut b = GraphBuilder::new("hs", 13);
        let x = b.input_f32("x", &[Some(1), Some(4)]);
        let mut c = |name: &str, v: f32| b.init_f32(name, ArrayD::from_elem(IxDyn(&[]), v));
        let (three, lo, hi, six) = (c("three", 3.0), c("lo", lo), c("hi", hi), c("six", six));
        let a = b.op("Add", &[&x, &three], &[]);
        let k = b.op("Clip", &[&a, &lo, &hi], &[]);
        let m = b.op("Mul", &[&x, &k], &[]);
        let y = b.op("Div", &[&m, &six], &[]);
        b.output_f32(&y, &[Some(1), Some(4)]);
        if extra {
            let e = b.op("Relu", &[&a], &[]);
            b.output_f32(&e, &[Some(1), Some(4)]);
        }
        b.build()
    }

    #[test]
    fn only_the_exact_pattern_is_rewritten() {
        let (fused, n) = FuseHardSwish.apply(&spelled_out(0.0, 6.0, 6.0, false)).unwrap().unwrap();
        assert_eq!(n, 1);
        let ops: Vec<_> = fused.graph().node.iter().filter_map(|n| n.op_type.clone()).collect();
        assert_eq!(ops, ["HardSwish"]);
        assert_eq!(fused.graph().output[0].name, spelled_out(0.0, 6.0, 6.0, false).graph().output[0].name, "the output keeps its name");
        // Another clip range, another divisor, or a sum someone else reads: not a hard-swish.
        for model in
            [spelled_out(0.0, 5.0, 6.0, false), spelled_out(-1.0, 6.0, 6.0, false), spelled_out(0.0, 6.0, 5.0, false), spelled_out(0.0, 6.0, 6.0, true)]
        {
            assert!(FuseHardSwish.apply(&model).unwrap().is_none());
        }
    }
}
