//! Weight sparsity without changing the graph: magnitude pruning of Conv / Gemm / MatMul
//! weights, unstructured or in patterns kernels can use.
//!
//! Every weight is viewed as `[outputs, reduction]` (Conv `[Cout, Cin·kh·kw]`, MatMul
//! `[N, K]` of `W[K, N]`, Gemm by its `transB`), so blocks and N:M groups run along the
//! reduction axis, the way sparse kernels (and NVIDIA's 2:4 sparse tensor cores) read them.
//! - **unstructured**: the smallest |w| go; one threshold for all layers (`global`) or the
//!   same fraction of each layer;
//! - **block R×C**: blocks of R outputs × C consecutive reduction elements, scored by L2
//!   norm, the weakest removed;
//! - **N:M**: of every M consecutive reduction elements the N largest stay.
//!
//! Zeros are stored as zeros in dense float initializers: ONNX Runtime runs the model
//! unchanged, and the file deflates to a fraction of its size (reported as the coded size).

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, Ix2};
use serde::{Deserialize, Serialize};
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

use super::quantize::node_key;

pub use tamp_domain::recipe::SparsityPattern as Pattern;

/// One prunable weight: the node, its weight value and the `[outputs, reduction]` view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseUnit {
    pub node: String,
    pub weight: String,
    pub elements: usize,
}

pub use tamp_domain::results::SparseLayer;

/// Weights as `[outputs, reduction]` and back.
fn to_matrix(w: &ArrayD<f32>, op: &str, trans_b: bool) -> Option<ndarray::Array2<f32>> {
    match (op, w.ndim()) {
        ("Conv", n) if n >= 3 => {
            let co = w.shape()[0];
            w.as_standard_layout().into_owned().into_shape_with_order((co, w.len() / co.max(1))).ok()
        }
        ("Gemm", 2) if trans_b => w.clone().into_dimensionality::<Ix2>().ok(),
        ("Gemm" | "MatMul", 2) => w.clone().into_dimensionality::<Ix2>().ok().map(|m| m.reversed_axes().as_standard_layout().into_owned()),
        _ => None,
    }
}

fn from_matrix(m: ndarray::Array2<f32>, like: &ArrayD<f32>, op: &str, trans_b: bool) -> Option<ArrayD<f32>> {
    let m = if op == "Conv" || trans_b { m } else { m.reversed_axes().as_standard_layout().into_owned() };
    m.into_shape_with_order(like.shape()).ok()
}

fn trans_b(n: &tamp_onnx::proto::NodeProto) -> bool {
    n.attribute.iter().any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1))
}

/// The weights a sparsity pass may touch: float constants of Conv/Gemm/MatMul used once,
/// with at least `min_elements` elements.
pub fn units(model: &Model, min_elements: usize) -> Vec<SparseUnit> {
    let g = model.graph();
    let view = GraphView::new(g);
    g.node
        .iter()
        .filter(|n| matches!(n.op_type.as_deref(), Some("Conv" | "Gemm" | "MatMul")))
        .filter_map(|n| {
            let w = n.input.get(1)?;
            let t = view.constant(w)?;
            let a = to_array::<f32>(t).ok()?;
            (a.len() >= min_elements && view.consumers(w).len() == 1 && to_matrix(&a, n.op_type.as_deref()?, trans_b(n)).is_some()).then(|| SparseUnit {
                node: node_key(n).to_owned(),
                weight: w.clone(),
                elements: a.len(),
            })
        })
        .collect()
}

/// Zeroes `level[unit]` of each unit's weights in `pattern` (N:M ignores the level: it is
/// fixed at 1 − N/M). `global_threshold` (unstructured only) instead removes the smallest
/// |w| across all units at the mean level.
pub fn sparsify(model: &Model, units: &[SparseUnit], levels: &[f64], pattern: Pattern, global: bool) -> Result<(Model, Vec<SparseLayer>), OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    let by_weight: BTreeMap<&str, &tamp_onnx::proto::NodeProto> = g.node.iter().filter_map(|n| n.input.get(1).map(|w| (w.as_str(), n))).collect();
    let load = |u: &SparseUnit| -> Result<(ArrayD<f32>, ndarray::Array2<f32>, String, bool), OnnxError> {
        let n = by_weight.get(u.weight.as_str()).ok_or_else(|| OnnxError::Graph(format!("{} has no consumer", u.weight)))?;
        let t = view.constant(&u.weight).ok_or_else(|| OnnxError::Graph(format!("{} is not a constant", u.weight)))?;
        let a = to_array::<f32>(t)?;
        let op = n.op_type.clone().unwrap_or_default();
        let tb = trans_b(n);
        let m = to_matrix(&a, &op, tb).ok_or_else(|| OnnxError::Graph(format!("{}: unsupported weight shape {:?}", u.node, a.shape())))?;
        Ok((a, m, op, tb))
    };
    let threshold = if global && pattern == Pattern::Unstructured {
        let mut all: Vec<f32> = Vec::new();
        for u in units {
            all.extend(load(u)?.1.iter().map(|x| x.abs()));
        }
        let level = levels.iter().sum::<f64>() / levels.len().max(1) as f64;
        let k = ((all.len() as f64 * level).round() as usize).min(all.len());
        if k == 0 {
            None
        } else {
            all.select_nth_unstable_by(k - 1, f32::total_cmp);
            Some(all[k - 1])
        }
    } else {
        None
    };
    let mut patch = Patch::default();
    let mut report = Vec::new();
    for (u, &level) in units.iter().zip(levels) {
        let (orig, mut m, op, tb) = load(u)?;
        match pattern {
            Pattern::Unstructured => match threshold {
                Some(th) => m.mapv_inplace(|x| if x.abs() <= th { 0.0 } else { x }),
                None => zero_smallest(&mut m, level),
            },
            Pattern::Block { rows, cols } => zero_blocks(&mut m, rows, cols, level),
            Pattern::NOfM { n, m: group } => keep_n_of_m(&mut m, n, group),
        }
        let zeros = m.iter().filter(|x| **x == 0.0).count();
        report.push(SparseLayer { node: u.node.clone(), elements: m.len(), zeros, sparsity: zeros as f64 / m.len().max(1) as f64 });
        let back = from_matrix(m, &orig, &op, tb).ok_or_else(|| OnnxError::Graph(format!("{}: reshape back failed", u.node)))?;
        patch.add_initializers.push(from_array(&u.weight, &back));
    }
    if patch.is_empty() {
        return Ok((model.clone(), report));
    }
    Ok((patch.apply(model, "sparsify")?, report))
}

fn zero_smallest(m: &mut ndarray::Array2<f32>, level: f64) {
    let k = ((m.len() as f64 * level).round() as usize).min(m.len());
    if k == 0 {
        return;
    }
    let mut idx: Vec<usize> = (0..m.len()).collect();
    let flat: Vec<f32> = m.iter().map(|x| x.abs()).collect();
    idx.select_nth_unstable_by(k - 1, |&a, &b| flat[a].total_cmp(&flat[b]).then(a.cmp(&b)));
    let cols = m.ncols();
    for &i in &idx[..k] {
        m[[i / cols, i % cols]] = 0.0;
    }
}

/// Zeroes the weakest (L2) `level` of the R×C blocks; edge blocks are partial.
fn zero_blocks(m: &mut ndarray::Array2<f32>, rows: usize, cols: usize, level: f64) {
    let (r, c) = m.dim();
    let (br, bc) = (r.div_ceil(rows), c.div_ceil(cols));
    let mut scores: Vec<(f64, usize)> = Vec::with_capacity(br * bc);
    for b in 0..br * bc {
        let (i, j) = ((b / bc) * rows, (b % bc) * cols);
        let s: f64 = m.slice(ndarray::s![i..(i + rows).min(r), j..(j + cols).min(c)]).iter().map(|x| f64::from(*x).powi(2)).sum();
        scores.push((s, b));
    }
    scores.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let k = ((scores.len() as f64 * level).round() as usize).min(scores.len());
    for &(_, b) in &scores[..k] {
        let (i, j) = ((b / bc) * rows, (b % bc) * cols);
        m.slice_mut(ndarray::s![i..(i + rows).min(r), j..(j + cols).min(c)]).fill(0.0);
    }
}

/// Keeps the `n` largest |w| of every `m` consecutive reduction elements (a trailing
/// partial group keeps the same share, rounded up).
fn keep_n_of_m(w: &mut ndarray::Array2<f32>, n: usize, m: usize) {
    for mut row in w.axis_iter_mut(Axis(0)) {
        let len = row.len();
        let mut start = 0;
        while start < len {
            let end = (start + m).min(len);
            let keep = (n * (end - start)).div_ceil(m);
            let mut idx: Vec<usize> = (start..end).collect();
            idx.sort_by(|&a, &b| row[b].abs().total_cmp(&row[a].abs()).then(a.cmp(&b)));
            for &i in &idx[keep..] {
                row[i] = 0.0;
            }
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ndarray::{Array2, IxDyn};
    use tamp_onnx::builder::GraphBuilder;

    fn model() -> Model {
        let mut b = GraphBuilder::new("sparse", 17);
        let x = b.input_f32("x", &[None, Some(4), Some(5), Some(5)]);
        let w = b.init_f32("conv.w", ArrayD::from_shape_fn(IxDyn(&[8, 4, 3, 3]), |d| ((d[0] * 37 + d[1] * 11 + d[2] * 5 + d[3]) % 23) as f32 - 11.0));
        let c = b.op("Conv", &[&x, &w], &[]);
        let f = b.op("Flatten", &[&c], &[]);
        let mw = b.init_f32("mm.w", ArrayD::from_shape_fn(IxDyn(&[72, 6]), |d| ((d[0] * 13 + d[1] * 7) % 19) as f32 - 9.0));
        let y = b.op("MatMul", &[&f, &mw], &[]);
        b.output_f32(&y, &[None, Some(6)]);
        b.build()
    }

    fn weight(m: &Model, name: &str) -> ArrayD<f32> {
        to_array::<f32>(GraphView::new(m.graph()).constant(name).unwrap()).unwrap()
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(Pattern::parse("2:4"), Some(Pattern::NOfM { n: 2, m: 4 }));
        assert_eq!(Pattern::parse("1x4"), Some(Pattern::Block { rows: 1, cols: 4 }));
        assert_eq!(Pattern::parse("4:2"), None);
        assert_eq!(Pattern::parse("1x1"), None);
        assert_eq!(Pattern::parse("x"), None);
    }

    #[test]
    fn two_of_four_along_the_reduction_axis() {
        let m = model();
        let u = units(&m, 1);
        assert_eq!(u.len(), 2);
        let (p, layers) = sparsify(&m, &u, &[0.0, 0.0], Pattern::NOfM { n: 2, m: 4 }, false).unwrap();
        // MatMul W[K=72, N=6]: groups of 4 run down K for each output column.
        let w = weight(&p, "mm.w").into_dimensionality::<Ix2>().unwrap();
        for col in w.columns() {
            for g in col.as_slice_memory_order().map_or_else(|| col.to_vec(), <[f32]>::to_vec).chunks(4) {
                assert!(g.iter().filter(|x| **x == 0.0).count() >= 2, "{g:?}");
            }
        }
        // Conv [8, 4·3·3 = 36]: groups of 4 within each filter.
        let c = weight(&p, "conv.w");
        for f in c.outer_iter() {
            for g in f.iter().copied().collect::<Vec<_>>().chunks(4) {
                assert!(g.iter().filter(|x| **x == 0.0).count() >= 2);
            }
        }
        assert!(layers.iter().all(|l| l.sparsity >= 0.5));
    }

    #[test]
    fn unstructured_global_and_per_layer_hit_the_level() {
        let m = model();
        let u = units(&m, 1);
        let (_, per) = sparsify(&m, &u, &[0.6, 0.6], Pattern::Unstructured, false).unwrap();
        for l in &per {
            assert!((l.sparsity - 0.6).abs() < 0.02, "{l:?}");
        }
        let (_, glob) = sparsify(&m, &u, &[0.6, 0.6], Pattern::Unstructured, true).unwrap();
        let zeros: usize = glob.iter().map(|l| l.zeros).sum();
        let all: usize = glob.iter().map(|l| l.elements).sum();
        // Ties at the threshold may zero a few more.
        assert!(zeros as f64 / all as f64 >= 0.6, "{glob:?}");
    }

    #[test]
    fn blocks_are_zeroed_whole() {
        let mut w = Array2::from_shape_fn((4, 8), |(i, j)| (i * 8 + j) as f32 + 1.0);
        zero_blocks(&mut w, 1, 4, 0.5);
        let zero_blocks_n =
            w.rows().into_iter().flat_map(|r| r.to_vec().chunks(4).map(|c| c.iter().all(|x| *x == 0.0)).collect::<Vec<_>>()).filter(|z| *z).count();
        assert_eq!(zero_blocks_n, 4);
        // The weakest blocks are the first ones (smallest values).
        assert!(w.row(0).iter().all(|x| *x == 0.0));
    }
}
