//! Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019): for two
//! convolutions in a row, `Conv₁ → [Relu] → Conv₂`, channel `i` between them can be scaled
//! down by `sᵢ` in `Conv₁` (filter and bias) and up by `sᵢ` in `Conv₂` (its input slice)
//! without changing the function, because ReLU is positively homogeneous. Choosing
//! `sᵢ = √(r₁ᵢ / r₂ᵢ)` (r: the channel's max |w| on each side) gives both layers the same
//! per-channel range, so per-tensor — and per-channel activation-aware — int8 grids waste
//! less of their levels on a few wide channels. Chains are equalized together, repeated
//! until the scales settle.
//!
//! Pairs need: constant weights read by one node, `Conv₁` of group 1 or depthwise, its
//! output (or the Relu's) read only by `Conv₂` (group 1, or depthwise), nothing that is a
//! graph output in between. Clip/ReLU6 is not scale-equivariant, so it ends a pair.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis};

use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

pub use tamp_domain::results::EqualizedPair;

struct Pair {
    first: usize,
    second: usize,
    /// The axis of the second weight holding the channels (1, or 0 for depthwise).
    second_axis: usize,
}

fn is_depthwise(n: &NodeProto, w: &ArrayD<f32>) -> bool {
    let group = attr_int(n, "group", 1) as usize;
    group > 1 && w.shape().first() == Some(&group) && w.shape().get(1) == Some(&1)
}

fn find_pairs(model: &Model) -> Vec<Pair> {
    let g = model.graph();
    let view = GraphView::new(g);
    let outputs: std::collections::HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let weight = |n: &NodeProto| -> Option<ArrayD<f32>> {
        let w = n.input.get(1)?;
        (view.consumers(w).len() == 1 && g.initializer.iter().any(|t| t.name.as_deref() == Some(w.as_str()))).then_some(())?;
        to_array::<f32>(view.constant(w)?).ok().filter(|a| a.ndim() >= 3)
    };
    let only_reader = |v: &str| -> Option<usize> {
        let c = view.consumers(v);
        (c.len() == 1 && !outputs.contains(v)).then(|| c[0])
    };
    let mut pairs = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        if n.op_type.as_deref() != Some("Conv") || n.input.get(2).is_some_and(|b| !b.is_empty() && (view.constant(b).is_none() || view.consumers(b).len() != 1))
        {
            continue;
        }
        let Some(w1) = weight(n) else { continue };
        if attr_int(n, "group", 1) != 1 && !is_depthwise(n, &w1) {
            continue;
        }
        let Some(mut next) = n.output.first().and_then(|y| only_reader(y)) else { continue };
        if g.node[next].op_type.as_deref() == Some("Relu") {
            match g.node[next].output.first().and_then(|y| only_reader(y)) {
                Some(c) => next = c,
                None => continue,
            }
        }
        let m = &g.node[next];
        if m.op_type.as_deref() != Some("Conv") {
            continue;
        }
        let Some(w2) = weight(m) else { continue };
        let second_axis = if is_depthwise(m, &w2) {
            0
        } else if attr_int(m, "group", 1) == 1 {
            1
        } else {
            continue;
        };
        if w2.shape()[second_axis] != w1.shape()[0] {
            continue;
        }
        pairs.push(Pair { first: i, second: next, second_axis });
    }
    pairs
}

fn channel_ranges(w: &ArrayD<f32>, axis: usize) -> Vec<f32> {
    w.axis_iter(Axis(axis)).map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs()))).collect()
}

fn spread(r: &[f32]) -> f64 {
    let max = r.iter().copied().fold(0f32, f32::max);
    let min = r.iter().copied().filter(|v| *v > 0.0).fold(f32::INFINITY, f32::min);
    if min.is_finite() { f64::from(max / min) } else { 1.0 }
}

/// Equalizes every pair (`iterations` sweeps); `None` when the graph has no pair.
pub fn equalize(model: &Model, iterations: usize) -> Result<Option<(Patch, Vec<EqualizedPair>)>, OnnxError> {
    let pairs = find_pairs(model);
    if pairs.is_empty() {
        return Ok(None);
    }
    let g = model.graph();
    let view = GraphView::new(g);
    let mut arrays: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
    let load = |name: &str, arrays: &mut BTreeMap<String, ArrayD<f32>>| -> Result<(), OnnxError> {
        if !arrays.contains_key(name) {
            let t = view.constant(name).ok_or_else(|| OnnxError::Graph(format!("{name} is not a constant")))?;
            arrays.insert(name.to_owned(), to_array::<f32>(t)?);
        }
        Ok(())
    };
    for p in &pairs {
        load(&g.node[p.first].input[1], &mut arrays)?;
        load(&g.node[p.second].input[1], &mut arrays)?;
        if let Some(b) = g.node[p.first].input.get(2).filter(|b| !b.is_empty()) {
            load(b, &mut arrays)?;
        }
    }
    let before: Vec<f64> = pairs.iter().map(|p| spread(&channel_ranges(&arrays[&g.node[p.first].input[1]], 0))).collect();
    for _ in 0..iterations.max(1) {
        for p in &pairs {
            let (w1n, w2n) = (g.node[p.first].input[1].clone(), g.node[p.second].input[1].clone());
            let r1 = channel_ranges(&arrays[&w1n], 0);
            let r2 = channel_ranges(&arrays[&w2n], p.second_axis);
            let s: Vec<f32> = r1.iter().zip(&r2).map(|(&a, &b)| if a > 0.0 && b > 0.0 { (a / b).sqrt().clamp(1e-4, 1e4) } else { 1.0 }).collect();
            if let Some(w1) = arrays.get_mut(&w1n) {
                for (c, mut f) in w1.axis_iter_mut(Axis(0)).enumerate() {
                    f.mapv_inplace(|v| v / s[c]);
                }
            }
            if let Some(bn) = g.node[p.first].input.get(2).filter(|b| !b.is_empty())
                && let Some(b) = arrays.get_mut(bn)
            {
                for (c, v) in b.iter_mut().enumerate() {
                    *v /= s[c];
                }
            }
            if let Some(w2) = arrays.get_mut(&w2n) {
                for (c, mut f) in w2.axis_iter_mut(Axis(p.second_axis)).enumerate() {
                    f.mapv_inplace(|v| v * s[c]);
                }
            }
        }
    }
    let report = pairs
        .iter()
        .zip(before)
        .map(|(p, b)| EqualizedPair {
            first: super::quantize::node_key(&g.node[p.first]).to_owned(),
            second: super::quantize::node_key(&g.node[p.second]).to_owned(),
            channels: arrays[&g.node[p.first].input[1]].shape()[0],
            spread_before: b,
            spread_after: spread(&channel_ranges(&arrays[&g.node[p.first].input[1]], 0)),
        })
        .collect();
    let mut patch = Patch::default();
    for (name, a) in &arrays {
        patch.add_initializers.push(from_array(name, a));
    }
    Ok(Some((patch, report)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::{Session, SessionConfig};
    use ndarray::IxDyn;
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::{Attr, GraphBuilder};

    /// Conv(8, channel 3 a hundred times wider) → Relu → Conv → Relu → depthwise → Conv.
    fn net() -> Model {
        let mut b = GraphBuilder::new("cle", 17);
        let x = b.input_f32("x", &[None, Some(3), Some(6), Some(6)]);
        let w = |shape: &[usize], seed: usize, wide: Option<usize>| {
            ArrayD::from_shape_fn(IxDyn(shape), |d| {
                let v = (((0..shape.len()).fold(seed, |a, k| a * 31 + d[k]) * 2_654_435_761) % 1000) as f32 / 1000.0 - 0.5;
                if Some(d[0]) == wide { v * 100.0 } else { v }
            })
        };
        let (w1, b1) = (b.init_f32("w1", w(&[8, 3, 3, 3], 1, Some(3))), b.init_f32("b1", w(&[8], 2, None)));
        let c1 = b.op("Conv", &[&x, &w1, &b1], &[("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let r1 = b.op("Relu", &[&c1], &[]);
        let w2 = b.init_f32("w2", w(&[8, 8, 1, 1], 3, None));
        let c2 = b.op("Conv", &[&r1, &w2], &[]);
        let r2 = b.op("Relu", &[&c2], &[]);
        let w3 = b.init_f32("w3", w(&[8, 1, 3, 3], 4, Some(5)));
        let c3 = b.op("Conv", &[&r2, &w3], &[("group", Attr::Int(8)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let w4 = b.init_f32("w4", w(&[4, 8, 1, 1], 5, None));
        let y = b.op("Conv", &[&c3, &w4], &[]);
        b.output_f32(&y, &[None, Some(4), Some(6), Some(6)]);
        b.build()
    }

    #[test]
    fn equalization_keeps_outputs_and_narrows_ranges() {
        let m = net();
        let (patch, pairs) = equalize(&m, 8).unwrap().unwrap();
        assert_eq!(pairs.len(), 3, "w1→w2 (through Relu), w2→depthwise, depthwise→w4: {pairs:?}");
        assert!(pairs[0].spread_after < pairs[0].spread_before / 3.0 && pairs[2].spread_after < pairs[2].spread_before / 3.0, "{pairs:?}");
        let e = patch.apply(&m, "cle").unwrap();
        let x = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[2, 3, 6, 6]), |d| ((d[1] * 7 + d[2] * 3 + d[3]) as f32 * 0.3).sin()));
        let run = |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &x)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        let (a, b) = (run(&m), run(&e));
        let rel = (&a - &b).mapv(|v| v * v).sum().sqrt() / a.mapv(|v| v * v).sum().sqrt();
        assert!(rel < 1e-5, "{rel}");
    }
}
