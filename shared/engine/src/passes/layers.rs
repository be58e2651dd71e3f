//! Transformer layer dropping: a student with fewer layers, initialised from the teacher's
//! own (DistilBERT keeps every other layer of BERT).
//!
//! Layers are found from their self-attention blocks ([`heads::find`]): the value the Q/K/V
//! projections read is layer `i`'s input `x_i`. In a post-norm encoder (BERT, MiniLM) `x_i`
//! also feeds the residual `Add`, and is the residual stream itself; in a pre-norm one (GPT)
//! the projections read a normalisation of the stream, whose input is the boundary. Dropping
//! layers `a..=b` re-points the readers of `x_{b+1}` to `x_a`, and everything only the
//! dropped layers used (nodes, Constants, initializers) goes.
//!
//! The last layer always stays: its output is where the graph's head reads, and keeping it
//! means no boundary after it has to be guessed. Keeping every k-th layer counting from the
//! last (`keep_every: 2` on 6 layers keeps 1, 3, 5) satisfies that.

use std::collections::{BTreeSet, HashSet};

use tamp_onnx::proto::NodeProto;
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

use super::heads;

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

const NORMS: &[&str] = &["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization"];

/// Each transformer layer's input value (the residual stream entering it), in order.
pub fn boundaries(model: &Model) -> Result<Vec<String>, OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    let order = view.topological_order()?;
    let position: std::collections::HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let mut found: Vec<(usize, String)> = Vec::new();
    for group in heads::find(model) {
        let Some((wq, _)) = group.projections.first() else { continue };
        let Some(&proj) = view.consumers(wq).first() else { continue };
        let Some(x) = g.node[proj].input.first().filter(|x| *x != wq).or_else(|| g.node[proj].input.get(1)) else { continue };
        // Readers besides the projections: the residual Add reads the stream itself.
        let projections: HashSet<usize> = group.projections.iter().filter_map(|(w, _)| view.consumers(w).first().copied()).collect();
        let boundary = if view.consumers(x).iter().any(|c| !projections.contains(c)) {
            x.clone()
        } else {
            match view.producer(x).map(|p| &g.node[p]) {
                Some(norm) if NORMS.contains(&op(norm)) => norm.input[0].clone(),
                _ => return Err(OnnxError::Graph(format!("cannot locate the residual stream entering attention block '{}'", group.name))),
            }
        };
        let at = view.producer(&boundary).and_then(|p| position.get(&p).copied()).unwrap_or(0);
        found.push((at, boundary));
    }
    found.sort();
    found.dedup_by(|a, b| a.1 == b.1);
    Ok(found.into_iter().map(|(_, b)| b).collect())
}

/// The layers [`drop_layers`] keeps for `keep_every: k` on `layers` layers: every k-th
/// counting back from the last.
pub fn every_kth(layers: usize, k: usize) -> Vec<usize> {
    (0..layers).filter(|i| (layers - 1 - i).is_multiple_of(k.max(1))).collect()
}

/// `model` with only the transformer layers in `keep` (0-based; the last must be among them).
pub fn drop_layers(model: &Model, keep: &[usize]) -> Result<Model, OnnxError> {
    let bounds = boundaries(model)?;
    let layers = bounds.len();
    if layers < 2 {
        return Err(OnnxError::Graph(format!("layer dropping needs a stack of transformer layers; found {layers} self-attention block(s)")));
    }
    let keep: BTreeSet<usize> = keep.iter().copied().collect();
    if let Some(bad) = keep.iter().find(|&&i| i >= layers) {
        return Err(OnnxError::Graph(format!("layer {bad} does not exist: the model has {layers} layers (0–{})", layers - 1)));
    }
    if !keep.contains(&(layers - 1)) {
        return Err(OnnxError::Graph(format!(
            "the last layer ({}) must be kept (the head reads its output); keep e.g. {:?}",
            layers - 1,
            every_kth(layers, 2)
        )));
    }
    if keep.len() == layers {
        return Err(OnnxError::Graph("every layer is kept: nothing to drop".into()));
    }
    let g = model.graph();
    let view = GraphView::new(g);
    let mut patch = Patch::default();
    // Each run of dropped layers a..=b: the first kept layer after it reads x_a.
    let mut i = 0;
    while i < layers {
        if keep.contains(&i) {
            i += 1;
            continue;
        }
        let a = i;
        while !keep.contains(&i) {
            i += 1;
        }
        patch.redirect_consumers(&view, &bounds[i], &bounds[a]);
    }
    // What is still reachable backwards from the graph outputs once rewired.
    let mut inputs_of: Vec<Vec<String>> = g.node.iter().map(|n| n.input.clone()).collect();
    for (node, slot, to) in &patch.rewire {
        inputs_of[*node][*slot] = to.clone();
    }
    let mut live: HashSet<usize> = HashSet::new();
    let mut needed: Vec<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(v) = needed.pop() {
        if !seen.insert(v.clone()) {
            continue;
        }
        if let Some(p) = view.producer(&v)
            && live.insert(p)
        {
            needed.extend(inputs_of[p].iter().filter(|s| !s.is_empty()).cloned());
            // Subgraph bodies read outer values by name.
            for a in &g.node[p].attribute {
                for body in a.g.iter().chain(&a.graphs) {
                    needed.extend(body.node.iter().flat_map(|n| n.input.iter().cloned()));
                }
            }
        }
    }
    patch.remove_nodes = (0..g.node.len()).filter(|i| !live.contains(i)).collect();
    patch.rewire.retain(|(n, _, _)| live.contains(n));
    patch.remove_initializers = g.initializer.iter().filter_map(|t| t.name.clone()).filter(|n| !seen.contains(n)).collect();
    patch.apply(model, "drop-layers").map_err(|e| OnnxError::Graph(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kth_keeps_the_last() {
        assert_eq!(every_kth(6, 2), vec![1, 3, 5]);
        assert_eq!(every_kth(6, 3), vec![2, 5]);
        assert_eq!(every_kth(12, 2), vec![1, 3, 5, 7, 9, 11]);
        assert_eq!(every_kth(4, 1), vec![0, 1, 2, 3]);
    }
}
