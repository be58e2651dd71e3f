//! Patches: how passes edit graphs. A pass reads a [`Model`] and returns a [`Patch`]; the
//! driver ([`Patch::apply`]) applies it to a copy, restores topological order, checks the
//! graph and labels any error with the pass that made the patch. Inputs are never mutated.

use std::collections::{BTreeSet, HashSet};

use crate::error::OnnxError;
use crate::graph::{GraphView, NodeId, sort_nodes};
use crate::model::Model;
use crate::proto::{NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto};

/// A set of edits against one version of a graph (node ids index that version's nodes).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Patch {
    pub remove_nodes: BTreeSet<NodeId>,
    pub add_nodes: Vec<NodeProto>,
    pub remove_initializers: BTreeSet<String>,
    /// Added initializers; one with an existing name replaces it.
    pub add_initializers: Vec<TensorProto>,
    /// (node, input slot, new value): re-points one input of an existing node.
    pub rewire: Vec<(NodeId, usize, String)>,
    /// (old, new): graph outputs renamed to read another value.
    pub rename_outputs: Vec<(String, String)>,
    pub add_outputs: Vec<ValueInfoProto>,
    pub add_value_info: Vec<ValueInfoProto>,
    /// (domain, version) imports the new nodes need.
    pub opsets: Vec<(String, i64)>,
}

/// A patch that could not be applied, labelled with the pass that produced it.
#[derive(Debug, thiserror::Error)]
#[error("pass '{pass}' produced an invalid graph: {source}")]
pub struct PatchError {
    pub pass: String,
    #[source]
    pub source: OnnxError,
}

/// A graph transformation. Implementations must not mutate the model or write files.
pub trait Pass {
    /// What the pass did, for reports (per-layer records, a count, or `()`).
    type Report;
    /// Stable name used in errors and reports.
    fn name(&self) -> &str;
    /// The edits to make and what they do, or `None` when the pass has nothing (more) to do.
    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError>;

    /// Builds and applies the patch: the rewritten model and the report, or `None` when there
    /// is nothing to do. Errors name the pass.
    fn apply(&self, model: &Model) -> Result<Option<(Model, Self::Report)>, PatchError> {
        let built = self.build(model).map_err(|source| PatchError { pass: self.name().to_owned(), source })?;
        built.map(|(patch, report)| Ok((patch.apply(model, self.name())?, report))).transpose()
    }
}

impl Patch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Re-points every existing consumer of `from` (and graph outputs named `from`) to `to`,
    /// except nodes in `except` (typically the new node that reads `from` itself).
    pub fn redirect_consumers(&mut self, view: &GraphView<'_>, from: &str, to: &str) {
        for &c in view.consumers(from) {
            for (slot, input) in view.graph.node[c].input.iter().enumerate() {
                if input == from {
                    self.rewire.push((c, slot, to.to_owned()));
                }
            }
        }
        if view.graph.output.iter().any(|o| o.name.as_deref() == Some(from)) {
            self.rename_outputs.push((from.to_owned(), to.to_owned()));
        }
    }

    /// Applies the patch to a copy of `model` and checks the result.
    pub fn apply(&self, model: &Model, pass: &str) -> Result<Model, PatchError> {
        let label = |source: OnnxError| PatchError { pass: pass.to_owned(), source };
        let mut out = model.clone();
        let g = out.graph_mut();
        let n = g.node.len();
        // Values whose shape this patch may change: what new nodes produce, replaced
        // initializers, the outputs of rewired nodes, and everything downstream of them.
        let mut dirty: HashSet<String> = self.add_nodes.iter().flat_map(|n| n.output.iter().cloned()).collect();
        dirty.extend(self.add_initializers.iter().filter_map(|t| t.name.clone()));
        for &(node, _, _) in &self.rewire {
            dirty.extend(g.node.get(node).map(|n| n.output.clone()).unwrap_or_default());
        }
        for &(node, slot, ref value) in &self.rewire {
            let target = g.node.get_mut(node).ok_or_else(|| label(OnnxError::Graph(format!("rewire names node {node}, but the graph has {n}"))))?;
            let input =
                target.input.get_mut(slot).ok_or_else(|| label(OnnxError::Graph(format!("rewire names input {slot} of node {node}, which has fewer"))))?;
            *input = value.clone();
        }
        for (old, new) in &self.rename_outputs {
            let o = g
                .output
                .iter_mut()
                .find(|o| o.name.as_deref() == Some(old))
                .ok_or_else(|| label(OnnxError::Graph(format!("no graph output '{old}' to rename"))))?;
            o.name = Some(new.clone());
        }
        if let Some(&bad) = self.remove_nodes.iter().find(|&&i| i >= n) {
            return Err(label(OnnxError::Graph(format!("remove names node {bad}, but the graph has {n}"))));
        }
        let mut idx = 0;
        g.node.retain(|_| {
            let keep = !self.remove_nodes.contains(&idx);
            idx += 1;
            keep
        });
        g.node.extend(self.add_nodes.iter().cloned());
        g.initializer.retain(|t| !self.remove_initializers.contains(t.name.as_deref().unwrap_or("")));
        g.input.retain(|i| !self.remove_initializers.contains(i.name.as_deref().unwrap_or("")));
        for t in &self.add_initializers {
            match g.initializer.iter_mut().find(|e| e.name == t.name) {
                Some(existing) => *existing = t.clone(),
                None => g.initializer.push(t.clone()),
            }
        }
        g.output.extend(self.add_outputs.iter().cloned());
        g.value_info.extend(self.add_value_info.iter().cloned());
        // Drop initializers nothing reads any more (those that are also graph inputs stay:
        // they are overridable inputs), then value infos of values that no longer exist.
        let mut read: HashSet<String> = g.output.iter().filter_map(|o| o.name.clone()).collect();
        for n in &g.node {
            read.extend(n.input.iter().cloned());
            for a in &n.attribute {
                for sub in crate::graph::subgraphs(a) {
                    read.extend(crate::graph::free_values(sub).into_iter().map(str::to_owned));
                }
            }
        }
        let inputs: HashSet<String> = g.input.iter().filter_map(|i| i.name.clone()).collect();
        g.initializer.retain(|t| t.name.as_ref().is_some_and(|n| read.contains(n) || inputs.contains(n)));
        // Drop value infos of values that no longer exist, so shapes never go stale.
        let live: HashSet<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
        g.value_info.retain(|v| v.name.as_ref().is_some_and(|n| live.contains(n)));
        sort_nodes(g).map_err(label)?;
        for n in &g.node {
            if n.input.iter().any(|i| dirty.contains(i)) {
                dirty.extend(n.output.iter().cloned());
            }
        }
        // Stale shapes make ONNX Runtime refuse the model (a pruned Conv's old channel count
        // against its new weight), so they go; the runtime infers them again.
        let declared: HashSet<&str> = self.add_value_info.iter().filter_map(|v| v.name.as_deref()).collect();
        g.value_info.retain(|v| v.name.as_ref().is_some_and(|n| !dirty.contains(n) || declared.contains(n.as_str())));
        for (domain, version) in &self.opsets {
            match out.proto.opset_import.iter_mut().find(|o| o.domain.as_deref().unwrap_or("") == domain) {
                Some(o) => o.version = Some(o.version.unwrap_or(0).max(*version)),
                None => out.proto.opset_import.push(OperatorSetIdProto { domain: Some(domain.clone()), version: Some(*version) }),
            }
        }
        GraphView::new(out.graph()).check(&HashSet::new()).map_err(label)?;
        Ok(out)
    }
}

/// Runs passes in order, repeating the list until none returns a patch (a fixpoint).
/// A pass list that is still changing the graph after `max_rounds` is a bug and an error.
pub fn run_to_fixpoint<P: Pass + ?Sized>(model: &Model, passes: &[&P], max_rounds: usize) -> Result<Model, PatchError> {
    let mut current = model.clone();
    for _ in 0..max_rounds {
        let mut changed = false;
        for pass in passes {
            let built = pass.build(&current).map_err(|source| PatchError { pass: pass.name().to_owned(), source })?;
            if let Some((p, _)) = built.filter(|(p, _)| !p.is_empty()) {
                current = p.apply(&current, pass.name())?;
                changed = true;
            }
        }
        if !changed {
            return Ok(current);
        }
    }
    let names: Vec<&str> = passes.iter().map(|p| p.name()).collect();
    Err(PatchError { pass: names.join(","), source: OnnxError::Graph(format!("no fixpoint after {max_rounds} rounds: a pass keeps firing")) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::GraphBuilder;
    use crate::proto::tensor_proto::DataType;
    use ndarray::{ArrayD, IxDyn};

    fn relu_model() -> Model {
        let mut b = GraphBuilder::new("t", 17);
        let x = b.input_f32("x", &[Some(1), Some(4)]);
        let w = b.init_f32("w", ArrayD::from_elem(IxDyn(&[4, 4]), 0.5));
        let y = b.op("MatMul", &[&x, &w], &[]);
        let z = b.op("Relu", &[&y], &[]);
        b.output_f32(&z, &[Some(1), Some(4)]);
        b.build()
    }

    #[test]
    fn shapes_downstream_of_a_replaced_weight_are_dropped() {
        // A pruned layer: same node, narrower weight. The old shapes of its output and of
        // everything after it would make ONNX Runtime refuse the model; unrelated ones stay.
        let mut m = relu_model();
        let (mm, relu) = (m.graph().node[0].output[0].clone(), m.graph().node[1].output[0].clone());
        m.graph_mut().value_info.push(crate::builder::value_info(&mm, DataType::Float, &[Some(1), Some(4)]));
        m.graph_mut().value_info.push(crate::builder::value_info(&relu, DataType::Float, &[Some(1), Some(4)]));
        m.graph_mut().value_info.push(crate::builder::value_info("x", DataType::Float, &[Some(1), Some(4)]));
        let mut p = Patch::default();
        p.add_initializers.push(crate::tensor::from_array("w", &ArrayD::from_elem(IxDyn(&[4, 2]), 0.5f32)));
        let out = p.apply(&m, "prune").unwrap();
        let names: Vec<&str> = out.graph().value_info.iter().filter_map(|v| v.name.as_deref()).collect();
        assert!(!names.contains(&mm.as_str()) && !names.contains(&relu.as_str()), "{names:?}");
    }

    #[test]
    fn inserting_a_node_keeps_order_and_input_intact() {
        let m = relu_model();
        let before = m.clone();
        let view = GraphView::new(m.graph());
        let mm_out = m.graph().node[0].output[0].clone();
        let mut p = Patch::default();
        p.redirect_consumers(&view, &mm_out, "neg");
        p.add_nodes.push(NodeProto { op_type: Some("Neg".into()), input: vec![mm_out], output: vec!["neg".into()], ..Default::default() });
        let out = p.apply(&m, "neg-insert").unwrap();
        assert_eq!(m, before, "the input model must not change");
        let ops: Vec<_> = out.graph().node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["MatMul", "Neg", "Relu"]);
    }

    #[test]
    fn dangling_input_is_labelled_with_the_pass() {
        let m = relu_model();
        let p = Patch { rewire: vec![(1, 0, "nowhere".into())], ..Default::default() };
        let e = p.apply(&m, "bad-pass").unwrap_err().to_string();
        assert!(e.contains("bad-pass") && e.contains("nowhere"), "{e}");
    }

    #[test]
    fn cycles_are_rejected() {
        let m = relu_model();
        let relu_out = m.graph().node[1].output[0].clone();
        let p = Patch { rewire: vec![(0, 0, relu_out)], ..Default::default() };
        assert!(p.apply(&m, "cyc").unwrap_err().to_string().contains("cycle"));
    }

    struct Forever;
    impl Pass for Forever {
        type Report = ();
        fn name(&self) -> &str {
            "forever"
        }
        fn build(&self, m: &Model) -> Result<Option<(Patch, ())>, OnnxError> {
            let k = m.graph().initializer.len();
            let t = crate::tensor::from_array(&format!("c{k}"), &ArrayD::<f32>::zeros(IxDyn(&[1])));
            Ok(Some((Patch { add_initializers: vec![t], ..Default::default() }, ())))
        }
    }

    #[test]
    fn a_pass_that_never_settles_is_caught() {
        let e = run_to_fixpoint(&relu_model(), &[&Forever], 5).unwrap_err().to_string();
        assert!(e.contains("forever") && e.contains("fixpoint"), "{e}");
    }
}
