//! Attention-head pruning for BERT-style self-attention written in standard ops (what
//! exporters emit for BERT/MiniLM-style encoders):
//!
//! ```text
//! q = Transpose₀₂₁₃(Reshape(x·Wq [+ bq], [.., .., H, d]))     (k: Transpose₀₂₃₁, v: like q)
//! p = Softmax(q·k [× or ÷ scale] [+ mask])
//! y = Reshape(Transpose₀₂₁₃(p·v), [.., .., H·d])·Wo
//! ```
//!
//! [`find`] matches that pattern from each Softmax; removing head `h` removes columns
//! `h·d..(h+1)·d` of Wq/Wk/Wv (and their biases) and the same rows of Wo, and gives the layer
//! its own head-shape constants (`H'` heads, `H'·d` merged), since exporters share one
//! `[0, 0, H, d]` constant across layers. Importance of a head: the L1 norms of its Wq/Wk/Wv
//! columns and Wo rows, each normalised by its mean, summed.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, IxDyn};
use serde::{Deserialize, Serialize};
use tamp_onnx::graph::attr_ints;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

/// One self-attention block's heads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeadGroup {
    pub id: usize,
    /// The output projection's weight name (a readable label).
    pub name: String,
    pub heads: usize,
    pub head_dim: usize,
    /// Projection weights (Wq, Wk, Wv) and their bias constants (when present).
    pub projections: Vec<(String, Option<String>)>,
    /// The q/k/v Reshape nodes and the merge Reshape node.
    pub split_reshapes: Vec<usize>,
    pub merge_reshape: usize,
    /// Output projection weight (rows cut).
    pub output_weight: String,
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

struct Finder<'g> {
    g: &'g tamp_onnx::proto::GraphProto,
    view: GraphView<'g>,
}

impl<'g> Finder<'g> {
    fn node(&self, value: &str) -> Option<(usize, &'g NodeProto)> {
        self.view.producer(value).map(|i| (i, &self.g.node[i]))
    }
    fn single_reader(&self, value: &str) -> Option<(usize, &'g NodeProto)> {
        let c = self.view.consumers(value);
        (c.len() == 1).then(|| (c[0], &self.g.node[c[0]]))
    }
    fn weight(&self, name: &str) -> Option<ArrayD<f32>> {
        (self.view.consumers(name).len() == 1 && self.g.initializer.iter().any(|t| t.name.as_deref() == Some(name)))
            .then(|| self.view.constant(name).and_then(|t| to_array::<f32>(t).ok()))
            .flatten()
    }
    fn shape_const(&self, name: &str) -> Option<Vec<i64>> {
        self.view.constant(name).and_then(|t| to_array::<i64>(t).ok()).map(|a| a.iter().copied().collect())
    }
    /// `Transpose(perm)(Reshape(x·W [+ b], [.., .., H, d]))` → (W, b, reshape node, H, d).
    fn branch(&self, value: &str, perm: &[i64]) -> Option<(String, Option<String>, usize, usize, usize)> {
        let (_, t) = self.node(value)?;
        if op(t) != "Transpose" || attr_ints(t, "perm") != perm || self.view.consumers(value).len() != 1 {
            return None;
        }
        let (ri, r) = self.node(t.input.first()?)?;
        let shape = self.shape_const(r.input.get(1)?)?;
        let (&h, &d) = (shape.get(2)?, shape.get(3)?);
        if op(r) != "Reshape" || shape.len() != 4 || h <= 1 || d <= 0 || self.view.consumers(&t.input[0]).len() != 1 {
            return None;
        }
        let lin = r.input.first()?;
        let (mm, bias) = match self.node(lin)? {
            (_, a) if op(a) == "Add" => {
                let (mm_v, b) =
                    if self.node(&a.input[0]).is_some_and(|(_, n)| op(n) == "MatMul") { (&a.input[0], &a.input[1]) } else { (&a.input[1], &a.input[0]) };
                self.weight(b).filter(|b| b.ndim() == 1)?;
                (self.node(mm_v)?.1, Some(b.clone()))
            }
            (_, m) => (m, None),
        };
        if op(mm) != "MatMul" || self.view.consumers(mm.output.first()?).len() != 1 {
            return None;
        }
        let w = mm.input.get(1)?;
        self.weight(w).filter(|a| a.ndim() == 2 && a.shape()[1] == (h * d) as usize)?;
        Some((w.clone(), bias, ri, h as usize, d as usize))
    }
}

/// The self-attention blocks whose heads can be pruned.
pub fn find(model: &Model) -> Vec<HeadGroup> {
    let g = model.graph();
    let f = Finder { g, view: GraphView::new(g) };
    let outputs: std::collections::HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let mut groups = Vec::new();
    for n in &g.node {
        if op(n) != "Softmax" {
            continue;
        }
        let found = (|| {
            // Scores: MatMul(q, k) then any of Mul/Div by a constant and Add (mask).
            let mut v = n.input.first()?.clone();
            let scores = loop {
                let (_, p) = f.node(&v)?;
                match op(p) {
                    "MatMul" => break p,
                    "Add" | "Mul" | "Div" => {
                        v = if f.node(&p.input[0]).is_some_and(|(_, x)| matches!(op(x), "MatMul" | "Add" | "Mul" | "Div"))
                            && f.view.constant(&p.input[0]).is_none()
                        {
                            p.input[0].clone()
                        } else {
                            p.input[1].clone()
                        }
                    }
                    _ => return None,
                }
            };
            let q = f.branch(&scores.input[0], &[0, 2, 1, 3])?;
            let k = f.branch(&scores.input[1], &[0, 2, 3, 1])?;
            let (_, ctx) = f.single_reader(n.output.first()?)?;
            if op(ctx) != "MatMul" || ctx.input.first() != n.output.first() {
                return None;
            }
            let v = f.branch(ctx.input.get(1)?, &[0, 2, 1, 3])?;
            let (_, t) = f.single_reader(ctx.output.first()?)?;
            if op(t) != "Transpose" || attr_ints(t, "perm") != [0, 2, 1, 3] {
                return None;
            }
            let (mi, merge) = f.single_reader(t.output.first()?)?;
            let shape = f.shape_const(merge.input.get(1)?)?;
            if op(merge) != "Reshape" || shape.len() != 3 || shape[2] != (q.3 * q.4) as i64 {
                return None;
            }
            let (_, out) = f.single_reader(merge.output.first()?)?;
            let wo = out.input.get(1)?;
            f.weight(wo).filter(|a| op(out) == "MatMul" && a.ndim() == 2 && a.shape()[0] == q.3 * q.4)?;
            if [&q, &k, &v].iter().any(|b| b.3 != q.3 || b.4 != q.4) || outputs.contains(merge.output[0].as_str()) {
                return None;
            }
            Some(HeadGroup {
                id: 0,
                name: wo.clone(),
                heads: q.3,
                head_dim: q.4,
                projections: vec![(q.0, q.1), (k.0, k.1), (v.0, v.1)],
                split_reshapes: vec![q.2, k.2, v.2],
                merge_reshape: mi,
                output_weight: wo.clone(),
            })
        })();
        if let Some(mut h) = found {
            h.id = groups.len();
            groups.push(h);
        }
    }
    groups
}

/// Per-head importance (see the module docs).
pub fn importance(model: &Model, group: &HeadGroup) -> Vec<f64> {
    let view = GraphView::new(model.graph());
    let d = group.head_dim;
    let mut score = vec![0.0; group.heads];
    let mut add = |w: &str, axis: usize| {
        let Some(a) = view.constant(w).and_then(|t| to_array::<f32>(t).ok()) else { return };
        let per: Vec<f64> =
            (0..group.heads).map(|h| a.slice_axis(Axis(axis), ndarray::Slice::from(h * d..(h + 1) * d)).iter().map(|x| f64::from(x.abs())).sum()).collect();
        let mean = per.iter().sum::<f64>() / per.len().max(1) as f64;
        score.iter_mut().zip(per).for_each(|(s, p)| *s += p / mean.max(1e-12));
    };
    for (w, _) in &group.projections {
        add(w, 1);
    }
    add(&group.output_weight, 0);
    score
}

/// Removes heads: `keep[group id]` lists the heads each block keeps (sorted).
pub fn prune(model: &Model, groups: &[HeadGroup], keep: &BTreeMap<usize, Vec<usize>>) -> Result<Model, OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut patch = Patch::default();
    let cut = |name: &str, axis: usize, idx: &[usize], patch: &mut Patch| -> Result<(), OnnxError> {
        let a = to_array::<f32>(view.constant(name).ok_or_else(|| OnnxError::Graph(format!("{name} is not a constant")))?)?;
        patch.add_initializers.push(from_array(name, &a.select(Axis(axis), idx)));
        Ok(())
    };
    for gr in groups {
        let Some(k) = keep.get(&gr.id).filter(|k| k.len() < gr.heads && !k.is_empty()) else { continue };
        let idx: Vec<usize> = k.iter().flat_map(|&h| h * gr.head_dim..(h + 1) * gr.head_dim).collect();
        for (w, b) in &gr.projections {
            cut(w, 1, &idx, &mut patch)?;
            if let Some(b) = b {
                cut(b, 0, &idx, &mut patch)?;
            }
        }
        cut(&gr.output_weight, 0, &idx, &mut patch)?;
        let (split, merged) = (format!("{}.heads.split", gr.name), format!("{}.heads.merge", gr.name));
        let split_shape = ArrayD::from_shape_vec(IxDyn(&[4]), vec![0i64, 0, k.len() as i64, gr.head_dim as i64])?;
        let merge_shape = ArrayD::from_shape_vec(IxDyn(&[3]), vec![0i64, 0, (k.len() * gr.head_dim) as i64])?;
        patch.add_initializers.push(from_array(&split, &split_shape));
        patch.add_initializers.push(from_array(&merged, &merge_shape));
        for &r in &gr.split_reshapes {
            patch.rewire.push((r, 1, split.clone()));
        }
        patch.rewire.push((gr.merge_reshape, 1, merged.clone()));
    }
    if patch.is_empty() {
        return Ok(model.clone());
    }
    patch.apply(model, "prune-heads").map_err(OnnxError::from)
}
