//! Read-only views of a graph: who produces and who consumes each value, a topological
//! order that accounts for values captured by `If`/`Loop`/`Scan` bodies, constant weights
//! (initializers and `Constant` nodes), op histograms and parameter counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::OnnxError;
use crate::proto::{AttributeProto, GraphProto, NodeProto, TensorProto, ValueInfoProto};
use crate::tensor::{element_count, payload_bytes};

/// Index of a node in its graph's `node` list.
pub type NodeId = usize;

/// Maps over one graph, built once and borrowed from it.
#[derive(Debug)]
pub struct GraphView<'g> {
    pub graph: &'g GraphProto,
    producer: HashMap<&'g str, NodeId>,
    consumers: HashMap<&'g str, Vec<NodeId>>,
    initializers: HashMap<&'g str, &'g TensorProto>,
    /// Values each node reads, including those its subgraphs capture from this scope.
    node_inputs: Vec<Vec<&'g str>>,
}

impl<'g> GraphView<'g> {
    /// Builds the maps. Duplicate producers are reported by [`GraphView::check`].
    pub fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<NodeId>> = HashMap::new();
        let mut node_inputs = Vec::with_capacity(graph.node.len());
        for (i, n) in graph.node.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.entry(o.as_str()).or_insert(i);
            }
            let mut ins: Vec<&str> = n.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
            for attr in &n.attribute {
                for sub in subgraphs(attr) {
                    ins.extend(free_values(sub));
                }
            }
            ins.sort_unstable();
            ins.dedup();
            for &v in &ins {
                consumers.entry(v).or_default().push(i);
            }
            node_inputs.push(ins);
        }
        let initializers = graph.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect();
        Self { graph, producer, consumers, initializers, node_inputs }
    }

    /// The node producing `value`, if a node does.
    pub fn producer(&self, value: &str) -> Option<NodeId> {
        self.producer.get(value).copied()
    }

    /// Nodes reading `value` (directly or from a subgraph).
    pub fn consumers(&self, value: &str) -> &[NodeId] {
        self.consumers.get(value).map_or(&[], Vec::as_slice)
    }

    /// The initializer named `name`.
    pub fn initializer(&self, name: &str) -> Option<&'g TensorProto> {
        self.initializers.get(name).copied()
    }

    /// A constant tensor by value name: an initializer or the output of a `Constant` node.
    pub fn constant(&self, value: &str) -> Option<&'g TensorProto> {
        if let Some(t) = self.initializer(value) {
            return Some(t);
        }
        let node = &self.graph.node[self.producer(value)?];
        if node.op_type.as_deref() != Some("Constant") {
            return None;
        }
        node.attribute.iter().find(|a| a.name.as_deref() == Some("value")).and_then(|a| a.t.as_ref())
    }

    /// Names defined at graph scope before any node runs: graph inputs and initializers.
    pub fn sources(&self) -> HashSet<&'g str> {
        let mut s: HashSet<&str> = self.graph.input.iter().filter_map(|v| v.name.as_deref()).collect();
        s.extend(self.initializers.keys().copied());
        s
    }

    /// Nodes in an order where every node follows its producers (Kahn's algorithm, stable:
    /// ties keep file order). Values not produced in this graph count as available.
    pub fn topological_order(&self) -> Result<Vec<NodeId>, OnnxError> {
        let n = self.graph.node.len();
        let mut indegree = vec![0usize; n];
        let mut succ: Vec<Vec<NodeId>> = vec![Vec::new(); n];
        for (i, ins) in self.node_inputs.iter().enumerate() {
            for v in ins {
                if let Some(&p) = self.producer.get(v) {
                    if p == i {
                        return Err(OnnxError::Graph(format!("node {} reads its own output '{v}'", node_label(&self.graph.node[i]))));
                    }
                    succ[p].push(i);
                    indegree[i] += 1;
                }
            }
        }
        let mut ready: std::collections::BTreeSet<NodeId> = (0..n).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &s in &succ[i] {
                indegree[s] -= 1;
                if indegree[s] == 0 {
                    ready.insert(s);
                }
            }
        }
        if order.len() != n {
            let stuck: Vec<String> = (0..n).filter(|&i| indegree[i] > 0).take(5).map(|i| node_label(&self.graph.node[i])).collect();
            return Err(OnnxError::Graph(format!("the graph has a cycle through {}", stuck.join(", "))));
        }
        Ok(order)
    }

    /// Consistency: each value is produced once; every input a node reads is a graph input,
    /// an initializer, another node's output or (for a subgraph) in `outer`; graph outputs
    /// are defined; no cycle. Subgraphs are checked recursively.
    pub fn check(&self, outer: &HashSet<String>) -> Result<(), OnnxError> {
        let mut defined: HashSet<&str> = self.sources();
        let mut seen_init = HashSet::new();
        for t in &self.graph.initializer {
            let name = t.name.as_deref().unwrap_or("");
            if !seen_init.insert(name) {
                return Err(OnnxError::Graph(format!("initializer '{name}' is defined twice")));
            }
        }
        for node in &self.graph.node {
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(o.as_str()) {
                    return Err(OnnxError::Graph(format!("value '{o}' is produced twice (again by {})", node_label(node))));
                }
            }
        }
        let is_defined = |v: &str| defined.contains(v) || outer.contains(v);
        for node in &self.graph.node {
            for i in node.input.iter().filter(|i| !i.is_empty()) {
                if !is_defined(i) {
                    return Err(OnnxError::Graph(format!("{} reads '{i}', which nothing defines", node_label(node))));
                }
            }
            let has_sub = node.attribute.iter().any(|a| subgraphs(a).next().is_some());
            if has_sub {
                let mut scope: HashSet<String> = outer.clone();
                scope.extend(defined.iter().map(|s| (*s).to_owned()));
                for attr in &node.attribute {
                    for sub in subgraphs(attr) {
                        GraphView::new(sub).check(&scope).map_err(|e| OnnxError::Graph(format!("in a subgraph of {}: {e}", node_label(node))))?;
                    }
                }
            }
        }
        for o in &self.graph.output {
            let name = o.name.as_deref().unwrap_or("");
            if !is_defined(name) {
                return Err(OnnxError::Graph(format!("graph output '{name}' is not produced by any node")));
            }
        }
        self.topological_order().map(|_| ())
    }

    /// Value info for `name` from inputs, outputs or `value_info`.
    pub fn value_info(&self, name: &str) -> Option<&'g ValueInfoProto> {
        let g = self.graph;
        g.input.iter().chain(&g.output).chain(&g.value_info).find(|v| v.name.as_deref() == Some(name))
    }
}

/// Subgraphs held by an attribute (`If` branches, `Loop`/`Scan` bodies).
pub fn subgraphs(attr: &AttributeProto) -> impl Iterator<Item = &GraphProto> {
    attr.g.iter().chain(attr.graphs.iter())
}

/// Values a subgraph reads from enclosing scopes (used but not defined inside it).
pub fn free_values(g: &GraphProto) -> Vec<&str> {
    let mut defined: HashSet<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
    defined.extend(g.initializer.iter().filter_map(|t| t.name.as_deref()));
    defined.extend(g.node.iter().flat_map(|n| n.output.iter().map(String::as_str)));
    let mut free = Vec::new();
    for n in &g.node {
        free.extend(n.input.iter().map(String::as_str).filter(|i| !i.is_empty() && !defined.contains(i)));
        for attr in &n.attribute {
            for sub in subgraphs(attr) {
                free.extend(free_values(sub).into_iter().filter(|i| !defined.contains(i)));
            }
        }
    }
    free.extend(g.output.iter().filter_map(|o| o.name.as_deref()).filter(|o| !defined.contains(o)));
    free.sort_unstable();
    free.dedup();
    free
}

/// "Conv 'conv1'" or "Conv #3"-style label for messages.
pub fn node_label(node: &NodeProto) -> String {
    let op = node.op_type.as_deref().unwrap_or("?");
    match node.name.as_deref() {
        Some(n) if !n.is_empty() => format!("{op} '{n}'"),
        _ => format!("{op} (outputs {:?})", node.output),
    }
}

/// Per-model statistics shown by `tamp inspect`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GraphStats {
    /// `domain::op` (domain omitted for the default) → count, subgraphs included.
    pub ops: BTreeMap<String, usize>,
    /// Elements in all constant tensors (initializers, `Constant` nodes, subgraph weights).
    pub params: usize,
    /// Bytes of those tensors.
    pub weight_bytes: usize,
    pub nodes: usize,
    pub subgraphs: usize,
}

/// Counts ops and parameters over a graph and its subgraphs.
pub fn stats(g: &GraphProto) -> GraphStats {
    let mut s = GraphStats::default();
    accumulate(g, &mut s);
    s
}

fn accumulate(g: &GraphProto, s: &mut GraphStats) {
    for t in &g.initializer {
        s.params = s.params.saturating_add(element_count(t));
        s.weight_bytes = s.weight_bytes.saturating_add(payload_bytes(t));
    }
    for n in &g.node {
        s.nodes += 1;
        let op = n.op_type.clone().unwrap_or_default();
        let key = match n.domain.as_deref() {
            None | Some("") | Some("ai.onnx") => op,
            Some(d) => format!("{d}::{op}"),
        };
        *s.ops.entry(key).or_default() += 1;
        for attr in &n.attribute {
            if let Some(t) = &attr.t {
                s.params = s.params.saturating_add(element_count(t));
                s.weight_bytes = s.weight_bytes.saturating_add(payload_bytes(t));
            }
            for sub in subgraphs(attr) {
                s.subgraphs += 1;
                accumulate(sub, s);
            }
        }
    }
}

/// Graph nodes in topological order (what ONNX requires of a saved graph).
pub fn sort_nodes(g: &mut GraphProto) -> Result<(), OnnxError> {
    let order = GraphView::new(g).topological_order()?;
    let mut old: Vec<Option<NodeProto>> = std::mem::take(&mut g.node).into_iter().map(Some).collect();
    g.node = order.into_iter().filter_map(|i| old[i].take()).collect();
    Ok(())
}

/// An attribute of a node by name.
pub fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// An integer attribute, or `default`.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

/// An integer-list attribute (empty when absent).
pub fn attr_ints<'n>(node: &'n NodeProto, name: &str) -> &'n [i64] {
    attr(node, name).map_or(&[], |a| a.ints.as_slice())
}

/// A string attribute (as UTF-8), when present.
pub fn attr_str<'n>(node: &'n NodeProto, name: &str) -> Option<&'n str> {
    attr(node, name).and_then(|a| a.s.as_deref()).and_then(|s| std::str::from_utf8(s).ok())
}

/// A float attribute, or `default`.
pub fn attr_float(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}
