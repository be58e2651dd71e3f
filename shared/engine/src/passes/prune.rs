//! Structured channel pruning that really removes channels, on ONNX graphs.
//!
//! [`analyze`] finds the channel groups of a graph — the ONNX analogue of a dependency
//! graph: every value with a channel axis (NCHW axis 1) gets a channel space; a Conv
//! (group 1) with a constant weight starts a new space for its output; channel-wise ops
//! (BatchNormalization, activations, pooling, depthwise Conv) pass the space through;
//! element-wise Add/Sub/Mul/Max/Min of two tracked tensors (residual connections) merge
//! their spaces; `Flatten` after a global pool carries channels into features (a following
//! Gemm/MatMul reads them). A Concat on the channel axis of tracked tensors makes a value of
//! segments (each input's space at its offset; nested Concats flatten, activations and
//! pooling pass it through), and a Conv reading it takes each segment's channels at that
//! offset. A MatMul/Gemm by a constant 2-D weight starts a last-axis
//! space (a transformer's FFN neurons): a bias Add by a constant `[N]` and element-wise
//! activations (GELU's Div/Erf/Add/Mul by scalars) pass it through, and the next MatMul
//! by a constant reads it. Spaces of the two kinds never merge. Anything else touching a
//! space (Reshape, Transpose, LayerNorm, graph inputs and outputs, shared weights) blocks
//! it, so pruning never breaks a shape.
//! A group's channels are pruned together: rows of its producers' weights and biases, its
//! BatchNorm parameters and depthwise filters (with `group` updated), and the matching input
//! slices of every consumer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ndarray::{ArrayD, Axis};
use serde::{Deserialize, Serialize};
use tamp_domain::recipe::ImportanceCriterion;
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

/// A set of channels that must be pruned together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelGroup {
    pub id: usize,
    /// The first producer's weight name (a readable label).
    pub name: String,
    pub channels: usize,
    /// (node, weight axis) of the Conv / MatMul / Gemm nodes whose output channels these are.
    pub producers: Vec<(usize, usize)>,
    /// BatchNormalization and depthwise Conv nodes on the way.
    pub channelwise: Vec<usize>,
    /// (node, input index) of per-channel constants on the way (a MatMul's bias Add).
    #[serde(default)]
    pub constants: Vec<(usize, usize)>,
    /// (node, weight axis) of the nodes reading these channels.
    pub consumers: Vec<(usize, usize)>,
    /// (node, weight axis, offset) of the nodes reading these channels through a Concat:
    /// they are the `channels` inputs from `offset` on.
    #[serde(default)]
    pub segment_consumers: Vec<(usize, usize, usize)>,
}

const PASS_THROUGH: &[&str] = &[
    "Erf",
    "Gelu",
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Identity",
    "Dropout",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
];

fn int_attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name)).and_then(|a| a.i)
}

/// Channel axis of a space: NCHW axis 1, or the last axis (MatMul/Gemm features).
const NCHW: u8 = 0;
const LAST: u8 = 1;
const POOLING: &[&str] = &["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"];

struct Spaces {
    parent: Vec<usize>,
    blocked: Vec<bool>,
    kind: Vec<u8>,
}

impl Spaces {
    fn new_space(&mut self, blocked: bool) -> usize {
        self.new_kind(blocked, NCHW)
    }
    fn new_kind(&mut self, blocked: bool, kind: u8) -> usize {
        self.parent.push(self.parent.len());
        self.blocked.push(blocked);
        self.kind.push(kind);
        self.parent.len() - 1
    }
    fn kind_of(&mut self, s: usize) -> u8 {
        let r = self.root(s);
        self.kind[r]
    }
    fn root(&mut self, mut s: usize) -> usize {
        while self.parent[s] != s {
            self.parent[s] = self.parent[self.parent[s]];
            s = self.parent[s];
        }
        s
    }
    fn union(&mut self, a: usize, b: usize) -> usize {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.parent[rb] = ra;
            self.blocked[ra] |= self.blocked[rb] || self.kind[ra] != self.kind[rb];
        }
        ra
    }
    fn block(&mut self, s: usize) {
        let r = self.root(s);
        self.blocked[r] = true;
    }
}

/// The prunable channel groups of `model`.
pub fn analyze(model: &Model) -> Vec<ChannelGroup> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut sp = Spaces { parent: Vec::new(), blocked: Vec::new(), kind: Vec::new() };
    let mut space: HashMap<String, usize> = HashMap::new();
    let mut pooled: BTreeSet<String> = BTreeSet::new();
    let mut flattened: BTreeSet<String> = BTreeSet::new();
    let mut members: Vec<(usize, &'static str, usize, usize)> = Vec::new(); // (space, role, node, axis or input)
    let mut channels: HashMap<usize, usize> = HashMap::new();
    // Values made by a channel Concat: (space, channels) per input, in order.
    let mut composite: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for i in &g.input {
        if let Some(n) = &i.name
            && view.constant(n).is_none()
        {
            let s = sp.new_space(true);
            space.insert(n.clone(), s);
        }
    }
    let weight_uses = |w: &str| view.consumers(w).len();
    for (idx, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or_default();
        let mut tracked: Vec<usize> = n.input.iter().filter_map(|v| space.get(v).copied()).collect();
        tracked.extend(n.input.iter().filter_map(|v| composite.get(v)).flatten().map(|&(s, _)| s));
        let out = n.output.first().cloned().unwrap_or_default();
        // A segmented value: Concat again (segments flatten), pass through, or a Conv reads it.
        if let Some(segs) = n.input.first().and_then(|v| composite.get(v)).cloned() {
            match op {
                o if PASS_THROUGH.contains(&o) && !o.starts_with("Global") => {
                    composite.insert(out, segs);
                    continue;
                }
                "Conv"
                    if int_attr(n, "group").unwrap_or(1) == 1
                        && n.input.get(1).is_some_and(|w| {
                            weight_uses(w) == 1 && view.constant(w).is_some() && g.initializer.iter().any(|t| t.name.as_deref() == Some(w.as_str()))
                        })
                        && n.input.get(2).is_none_or(|b| weight_uses(b) == 1 && view.constant(b).is_some()) =>
                {
                    let mut offset = 0;
                    for &(s, len) in &segs {
                        members.push((s, "segment", idx, offset));
                        offset += len;
                    }
                    let dims = &view.constant(&n.input[1]).map(|t| t.dims.clone()).unwrap_or_default();
                    let s = sp.new_space(false);
                    channels.insert(s, dims.first().copied().unwrap_or(0) as usize);
                    members.push((s, "producer", idx, 0));
                    space.insert(out, s);
                    continue;
                }
                "Concat" => {}
                _ => {
                    tracked.iter().for_each(|&s| sp.block(s));
                    continue;
                }
            }
        }
        if op == "Concat" && n.input.iter().any(|v| space.contains_key(v) || composite.contains_key(v)) {
            let rank_axis = int_attr(n, "axis").unwrap_or(0);
            let mut segs: Vec<(usize, usize)> = Vec::new();
            let mut ok = rank_axis == 1;
            for v in &n.input {
                if let Some(more) = composite.get(v) {
                    segs.extend(more);
                } else if let Some(&s) = space.get(v) {
                    let r = sp.root(s);
                    let len = channels.iter().find(|(k, _)| sp.root(**k) == r).map(|(_, c)| *c);
                    match len {
                        Some(c) if sp.kind_of(s) == NCHW => segs.push((s, c)),
                        _ => ok = false,
                    }
                } else {
                    ok = false;
                }
            }
            if ok {
                composite.insert(out, segs);
            } else {
                tracked.iter().for_each(|&s| sp.block(s));
            }
            continue;
        }
        match op {
            "Conv" => {
                let w = n.input.get(1).and_then(|w| view.constant(w).map(|t| (w, t)));
                let x = n.input.first().and_then(|v| space.get(v).copied());
                let Some((_, wt)) = w.filter(|(w, _)| weight_uses(w) == 1 && g.initializer.iter().any(|t| t.name.as_deref() == Some(w.as_str()))) else {
                    tracked.iter().for_each(|&s| sp.block(s));
                    let s = sp.new_space(true);
                    space.insert(out, s);
                    continue;
                };
                let dims: Vec<usize> = wt.dims.iter().map(|&d| d as usize).collect();
                let group = int_attr(n, "group").unwrap_or(1) as usize;
                let bias_ok = n.input.get(2).is_none_or(|b| weight_uses(b) == 1 && view.constant(b).is_some());
                if group == 1 && bias_ok {
                    if let Some(s) = x {
                        members.push((s, "consumer", idx, 1));
                    }
                    if x.is_some_and(|s| sp.kind_of(s) != NCHW) {
                        tracked.iter().for_each(|&s| sp.block(s));
                    }
                    let s = sp.new_space(false);
                    channels.insert(s, dims[0]);
                    members.push((s, "producer", idx, 0));
                    space.insert(out, s);
                } else if group > 1
                    && group == dims[0]
                    && dims.get(1) == Some(&1)
                    && bias_ok
                    && let Some(s) = x
                {
                    members.push((s, "channelwise", idx, 0));
                    space.insert(out, s);
                } else {
                    tracked.iter().for_each(|&s| sp.block(s));
                    let s = sp.new_space(true);
                    space.insert(out, s);
                }
            }
            "BatchNormalization" if n.input.len() == 5 && n.input[1..].iter().all(|p| view.constant(p).is_some() && weight_uses(p) == 1) => {
                match n.input.first().and_then(|v| space.get(v).copied()) {
                    Some(s) => {
                        members.push((s, "channelwise", idx, 0));
                        space.insert(out, s);
                    }
                    None => tracked.iter().for_each(|&s| sp.block(s)),
                }
            }
            o if PASS_THROUGH.contains(&o) => {
                if let Some(s) = n.input.first().and_then(|v| space.get(v).copied()) {
                    if POOLING.contains(&o) && sp.kind_of(s) != NCHW {
                        sp.block(s);
                        continue;
                    }
                    // Clip's min/max are scalars; nothing else reads channels.
                    space.insert(out, s);
                    if o.starts_with("Global") {
                        pooled.insert(n.output[0].clone());
                    }
                }
            }
            "Add" | "Sub" | "Mul" | "Max" | "Min" | "Div" => {
                let ins: Vec<Option<usize>> = n.input.iter().map(|v| space.get(v).copied()).collect();
                let scalar = |v: &String| view.constant(v).is_some_and(|t| t.dims.iter().product::<i64>() <= 1);
                match ins.as_slice() {
                    [Some(a), Some(b)] => {
                        let r = sp.union(*a, *b);
                        space.insert(out, r);
                    }
                    [Some(a), None] if scalar(&n.input[1]) => {
                        space.insert(out, *a);
                    }
                    [None, Some(b)] if scalar(&n.input[0]) => {
                        space.insert(out, *b);
                    }
                    // A bias (or scale) per feature of a MatMul's output: `[N]`, used once.
                    [Some(a), None] | [None, Some(a)]
                        if op != "Div" && sp.kind_of(*a) == LAST && {
                            let c = &n.input[usize::from(ins[0].is_some())];
                            view.constant(c).is_some_and(|t| t.dims.len() == 1)
                                && weight_uses(c) == 1
                                && g.initializer.iter().any(|t| t.name.as_deref() == Some(c.as_str()))
                        } =>
                    {
                        members.push((*a, "constant", idx, usize::from(ins[0].is_some())));
                        space.insert(out, *a);
                    }
                    _ => tracked.iter().for_each(|&s| sp.block(s)),
                }
            }
            "Flatten" if int_attr(n, "axis").unwrap_or(1) == 1 && n.input.first().is_some_and(|v| pooled.contains(v)) => {
                if let Some(s) = space.get(&n.input[0]).copied() {
                    space.insert(out.clone(), s);
                    flattened.insert(out);
                }
            }
            "Gemm" | "MatMul" if n.input.first().is_some_and(|v| flattened.contains(v)) => {
                let s = space[&n.input[0]];
                let w = n
                    .input
                    .get(1)
                    .filter(|w| view.constant(w).is_some() && weight_uses(w) == 1 && g.initializer.iter().any(|t| t.name.as_deref() == Some(w.as_str())));
                match w {
                    Some(_) => {
                        let trans_b = op == "Gemm" && int_attr(n, "transB") == Some(1);
                        members.push((s, "consumer", idx, if trans_b { 1 } else { 0 }));
                    }
                    None => sp.block(s),
                }
            }
            "Gemm" | "MatMul" => {
                let w = n
                    .input
                    .get(1)
                    .filter(|w| weight_uses(w) == 1 && g.initializer.iter().any(|t| t.name.as_deref() == Some(w.as_str())))
                    .and_then(|w| view.constant(w));
                let trans_b = op == "Gemm" && int_attr(n, "transB") == Some(1);
                let plain = op == "MatMul"
                    || (int_attr(n, "transA").unwrap_or(0) == 0
                        && n.input.get(2).is_none_or(|c| view.constant(c).is_some_and(|t| t.dims.len() == 1) && weight_uses(c) == 1));
                let x = n.input.first().and_then(|v| space.get(v).copied());
                match w.filter(|t| t.dims.len() == 2 && plain) {
                    Some(t) => {
                        if let Some(s) = x {
                            if sp.kind_of(s) == LAST {
                                members.push((s, "consumer", idx, usize::from(trans_b)));
                            } else {
                                sp.block(s);
                            }
                        }
                        let s = sp.new_kind(false, LAST);
                        channels.insert(s, t.dims[usize::from(!trans_b)] as usize);
                        members.push((s, "producer", idx, usize::from(!trans_b)));
                        space.insert(out, s);
                    }
                    None => tracked.iter().for_each(|&s| sp.block(s)),
                }
            }
            _ => tracked.iter().for_each(|&s| sp.block(s)),
        }
    }
    for o in &g.output {
        if let Some(s) = o.name.as_ref().and_then(|n| space.get(n).copied()) {
            sp.block(s);
        }
        for &(s, _) in o.name.as_ref().and_then(|n| composite.get(n)).into_iter().flatten() {
            sp.block(s);
        }
    }
    let mut groups: BTreeMap<usize, ChannelGroup> = BTreeMap::new();
    for &(s, role, node, axis) in &members {
        let r = sp.root(s);
        let e = groups.entry(r).or_insert_with(|| ChannelGroup {
            id: 0,
            name: String::new(),
            channels: 0,
            producers: vec![],
            channelwise: vec![],
            constants: vec![],
            consumers: vec![],
            segment_consumers: vec![],
        });
        match role {
            "producer" => {
                e.producers.push((node, axis));
                e.channels = channels.get(&s).copied().unwrap_or(0);
                if e.name.is_empty() {
                    e.name = g.node[node].input[1].clone();
                }
            }
            "channelwise" => e.channelwise.push(node),
            "constant" => e.constants.push((node, axis)),
            "segment" => e.segment_consumers.push((node, 1, axis)),
            _ => e.consumers.push((node, axis)),
        }
    }
    let mut out: Vec<ChannelGroup> = groups
        .into_iter()
        .filter(|(r, gr)| {
            let read = !gr.consumers.is_empty() || !gr.segment_consumers.is_empty();
            !sp.blocked[*r] && !gr.producers.is_empty() && read && gr.channels > 1
        })
        .map(|(_, gr)| gr)
        .collect();
    for (i, gr) in out.iter_mut().enumerate() {
        gr.id = i;
    }
    out
}

/// Per-channel importance by the recipe's default criterion ([`ImportanceCriterion::Combined`]).
pub fn importance(model: &Model, group: &ChannelGroup) -> Vec<f64> {
    importance_by(model, group, ImportanceCriterion::Combined)
}

/// Per-channel importance (higher: keep):
/// - `combined`: each producer's filter L1 norm (and, for FFN neurons, the rows of the weights
///   reading them) and each BatchNorm's |γ|/√(σ²+ε), each normalised by its mean, summed;
/// - `l1` / `l2`: the producers' filter L1 / L2 norms, normalised and summed;
/// - `bn_scale`: the BatchNorms' |γ|/√(σ²+ε) (network slimming); a group with no BatchNorm
///   falls back to `l1`.
pub fn importance_by(model: &Model, group: &ChannelGroup, criterion: ImportanceCriterion) -> Vec<f64> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut score = vec![0.0; group.channels];
    let mut add = |v: Vec<f64>| {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        for (s, x) in score.iter_mut().zip(v) {
            *s += x / mean.max(1e-12);
        }
    };
    let norms = |node: usize, axis: usize, power: i32| -> Option<Vec<f64>> {
        let w = view.constant(&g.node[node].input[1]).and_then(|t| to_array::<f32>(t).ok())?;
        Some(
            w.axis_iter(Axis(axis))
                .map(|f| match power {
                    1 => f.iter().map(|x| f64::from(x.abs())).sum(),
                    _ => f.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt(),
                })
                .collect(),
        )
    };
    let bn_scales: Vec<Vec<f64>> = group
        .channelwise
        .iter()
        .filter_map(|&c| {
            let n = &g.node[c];
            if n.op_type.as_deref() != Some("BatchNormalization") {
                return None;
            }
            let eps = n.attribute.iter().find(|a| a.name.as_deref() == Some("epsilon")).and_then(|a| a.f).unwrap_or(1e-5);
            let gamma = view.constant(&n.input[1]).and_then(|t| to_array::<f32>(t).ok())?;
            let var = view.constant(&n.input[4]).and_then(|t| to_array::<f32>(t).ok())?;
            Some(gamma.iter().zip(var.iter()).map(|(g, v)| f64::from(g.abs() / (v + eps).sqrt())).collect())
        })
        .collect();
    let criterion = if criterion == ImportanceCriterion::BnScale && bn_scales.is_empty() { ImportanceCriterion::L1 } else { criterion };
    match criterion {
        ImportanceCriterion::Combined => {
            group.producers.iter().filter_map(|&(p, axis)| norms(p, axis, 1)).for_each(&mut add);
            // A neuron's effect also goes through the weights reading it (FFN: the second
            // MatMul's rows); convolution groups keep the filter-norm criterion.
            if group.producers.iter().any(|&(p, _)| g.node[p].op_type.as_deref() != Some("Conv")) {
                group.consumers.iter().filter_map(|&(c, axis)| norms(c, axis, 1)).for_each(&mut add);
            }
            bn_scales.into_iter().for_each(&mut add);
        }
        ImportanceCriterion::L1 => group.producers.iter().filter_map(|&(p, axis)| norms(p, axis, 1)).for_each(&mut add),
        ImportanceCriterion::L2 => group.producers.iter().filter_map(|&(p, axis)| norms(p, axis, 2)).for_each(&mut add),
        ImportanceCriterion::BnScale => bn_scales.into_iter().for_each(&mut add),
    }
    score
}

/// The `keep` channels (sorted) of the `remove` least important ones removed.
pub fn keep_set(importance: &[f64], remove: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..importance.len()).collect();
    order.sort_by(|&a, &b| importance[a].total_cmp(&importance[b]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order[remove.min(importance.len().saturating_sub(1))..].to_vec();
    keep.sort_unstable();
    keep
}

/// A pruned group read through a Concat: (offset, channels, kept channels).
type Segment = (usize, usize, Vec<usize>);

/// Removes channels: `keep[group id]` lists the channels each group keeps.
pub fn prune(model: &Model, groups: &[ChannelGroup], keep: &BTreeMap<usize, Vec<usize>>) -> Result<Model, OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    // Initializer → selections (axis, kept indices), applied together.
    let mut cuts: BTreeMap<String, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
    let mut new_group: BTreeMap<usize, usize> = BTreeMap::new();
    // Weights read through a Concat: (axis, [(offset, channels, kept)]), applied in one select.
    let mut segmented: BTreeMap<String, (usize, Vec<Segment>)> = BTreeMap::new();
    for gr in groups {
        if let Some(k) = keep.get(&gr.id).filter(|k| k.len() < gr.channels) {
            for &(c, axis, offset) in &gr.segment_consumers {
                segmented.entry(g.node[c].input[1].clone()).or_insert((axis, Vec::new())).1.push((offset, gr.channels, k.clone()));
            }
        }
    }
    for gr in groups {
        let Some(k) = keep.get(&gr.id).filter(|k| k.len() < gr.channels) else { continue };
        let mut cut = |name: &String, axis: usize| cuts.entry(name.clone()).or_default().push((axis, k.clone()));
        for &(p, axis) in &gr.producers {
            let n = &g.node[p];
            cut(&n.input[1], axis);
            if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                cut(b, 0);
            }
        }
        for &(c, input) in &gr.constants {
            cut(&g.node[c].input[input], 0);
        }
        for &c in &gr.channelwise {
            let n = &g.node[c];
            if n.op_type.as_deref() == Some("BatchNormalization") {
                n.input[1..].iter().for_each(|p| cut(p, 0));
            } else {
                cut(&n.input[1], 0);
                if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
                    cut(b, 0);
                }
                new_group.insert(c, k.len());
            }
        }
        for &(c, axis) in &gr.consumers {
            cut(&g.node[c].input[1], axis);
        }
    }
    for (name, (axis, segs)) in segmented {
        let len = view.constant(&name).and_then(|t| t.dims.get(axis).copied()).unwrap_or(0).max(0) as usize;
        let mut kept = vec![true; len];
        for (offset, channels, k) in segs {
            (offset..offset + channels).for_each(|i| kept[i] = false);
            k.iter().for_each(|&i| kept[offset + i] = true);
        }
        cuts.entry(name).or_default().push((axis, (0..len).filter(|&i| kept[i]).collect()));
    }
    let mut patch = Patch::default();
    for (name, sel) in cuts {
        let t = view.constant(&name).ok_or_else(|| OnnxError::Graph(format!("{name} is not a constant")))?;
        let mut a: ArrayD<f32> = to_array::<f32>(t)?;
        for (axis, k) in sel {
            a = a.select(Axis(axis), &k);
        }
        patch.add_initializers.push(from_array(&name, &a));
    }
    for (c, groups_n) in new_group {
        let mut n = g.node[c].clone();
        n.attribute.retain(|a| a.name.as_deref() != Some("group"));
        n.attribute.push(attribute("group", Attr::Int(groups_n as i64)));
        patch.remove_nodes.insert(c);
        patch.add_nodes.push(n);
    }
    if patch.is_empty() {
        return Ok(model.clone());
    }
    patch.apply(model, "prune-channels").map_err(OnnxError::from)
}

/// Parameters in the model's initializers.
pub fn parameter_count(model: &Model) -> u64 {
    model.graph().initializer.iter().map(|t| t.dims.iter().product::<i64>().max(0) as u64).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ndarray::IxDyn;
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::GraphBuilder;

    use crate::runtime::{Session, SessionConfig};

    fn w(shape: &[usize], seed: usize) -> ArrayD<f32> {
        let mut k = seed;
        ArrayD::from_shape_fn(IxDyn(shape), |_| {
            k = (k * 2_654_435_761 + 12_345) % 1_000_003;
            (k % 97) as f32 / 97.0 - 0.5
        })
    }

    /// x → A(conv 8) → BN → Relu → B(conv 8) ─┬─ Add ← S(conv 8 of x) → Relu → depthwise(8) → C(conv 6) → Concat(C, D(conv 4 of x)) → E(conv 3) → GAP → Flatten → Gemm → y
    fn net() -> Model {
        let mut b = GraphBuilder::new("residual-concat", 17);
        let x = b.input_f32("x", &[None, Some(3), Some(8), Some(8)]);
        let conv = |b: &mut GraphBuilder, name: &str, input: &str, cout: usize, cin: usize, group: i64, seed: usize| {
            let wt = b.init_f32(&format!("{name}.w"), w(&[cout, cin, 3, 3], seed));
            let bias = b.init_f32(&format!("{name}.b"), w(&[cout], seed + 1));
            b.op("Conv", &[input, &wt, &bias], &[("pads", Attr::Ints(vec![1, 1, 1, 1])), ("group", Attr::Int(group))])
        };
        let a = conv(&mut b, "A", &x, 8, 3, 1, 1);
        let (s, bb, m, v) = (
            b.init_f32("bn.s", w(&[8], 3) + 1.0),
            b.init_f32("bn.b", w(&[8], 4)),
            b.init_f32("bn.m", w(&[8], 5)),
            b.init_f32("bn.v", w(&[8], 6).mapv(f32::abs) + 0.5),
        );
        let bn = b.op("BatchNormalization", &[&a, &s, &bb, &m, &v], &[]);
        let r = b.op("Relu", &[&bn], &[]);
        let bconv = conv(&mut b, "B", &r, 8, 8, 1, 7);
        let sconv = conv(&mut b, "S", &x, 8, 3, 1, 9);
        let add = b.op("Add", &[&bconv, &sconv], &[]);
        let r2 = b.op("Relu", &[&add], &[]);
        let dw = conv(&mut b, "DW", &r2, 8, 1, 8, 11);
        let c = conv(&mut b, "C", &dw, 6, 8, 1, 13);
        let d = conv(&mut b, "D", &x, 4, 3, 1, 15);
        let cat = b.op("Concat", &[&c, &d], &[("axis", Attr::Int(1))]);
        let e = conv(&mut b, "E", &cat, 3, 10, 1, 17);
        let gap = b.op("GlobalAveragePool", &[&e], &[]);
        let flat = b.op("Flatten", &[&gap], &[]);
        let head = b.init_f32("head.w", w(&[5, 3], 19));
        let y = b.op("Gemm", &[&flat, &head], &[("transB", Attr::Int(1))]);
        b.output_f32(&y, &[None, Some(5)]);
        b.build()
    }

    fn run(m: &Model) -> ArrayD<f32> {
        let mut s = Session::from_model(m, &SessionConfig::default()).unwrap();
        let x = TensorValue::F32(w(&[2, 3, 8, 8], 21));
        match s.run(&[("x", &x)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!("not f32"),
        }
    }

    /// x → A(conv, 2 channels) → BN → Relu → B(conv 1) → y, where the criteria disagree:
    /// channel 0 has the larger L1 norm (4 vs 3), channel 1 the larger L2 norm (3 vs 2) and
    /// the larger BatchNorm scale (1.0 vs 0.1).
    fn disagreeing() -> Model {
        let mut b = GraphBuilder::new("criteria", 17);
        let x = b.input_f32("x", &[None, Some(1), Some(2), Some(2)]);
        let aw = b.init_f32("A.w", ArrayD::from_shape_vec(IxDyn(&[2, 1, 2, 2]), vec![1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0]).unwrap());
        let a = b.op("Conv", &[&x, &aw], &[]);
        let f = |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[2]), v.to_vec()).unwrap();
        let (s, bb, m, v) =
            (b.init_f32("bn.s", f(&[0.1, 1.0])), b.init_f32("bn.b", f(&[0.0, 0.0])), b.init_f32("bn.m", f(&[0.0, 0.0])), b.init_f32("bn.v", f(&[1.0, 1.0])));
        let bn = b.op("BatchNormalization", &[&a, &s, &bb, &m, &v], &[]);
        let r = b.op("Relu", &[&bn], &[]);
        let bw = b.init_f32("B.w", w(&[1, 2, 1, 1], 3));
        let y = b.op("Conv", &[&r, &bw], &[]);
        b.output_f32(&y, &[None, Some(1), Some(1), Some(1)]);
        b.build()
    }

    #[test]
    fn criteria_rank_channels_by_what_they_measure() {
        let m = disagreeing();
        let groups = analyze(&m);
        let a = groups.iter().find(|g| g.name == "A.w").expect("A's channels form a group");
        let better = |c: ImportanceCriterion| {
            let v = importance_by(&m, a, c);
            usize::from(v[1] > v[0])
        };
        assert_eq!(better(ImportanceCriterion::L1), 0, "L1: 4 > 3");
        assert_eq!(better(ImportanceCriterion::L2), 1, "L2: 3 > 2");
        assert_eq!(better(ImportanceCriterion::BnScale), 1, "BN: 1.0 > 0.1");
        assert_eq!(better(ImportanceCriterion::Combined), 1, "normalised L1 + BN scale");
        assert_eq!(importance(&m, a), importance_by(&m, a, ImportanceCriterion::Combined), "the default");
        // Without a BatchNorm, bn_scale falls back to L1.
        let no_bn = ChannelGroup { channelwise: Vec::new(), ..a.clone() };
        assert_eq!(importance_by(&m, &no_bn, ImportanceCriterion::BnScale), importance_by(&m, &no_bn, ImportanceCriterion::L1));
    }

    #[test]
    fn groups_follow_residuals_and_concat() {
        let m = net();
        let groups = analyze(&m);
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        // A's channels (through BN/Relu into B) and the residual group {B, S} (through the Add,
        // Relu and the depthwise conv into C) are prunable; C and D feed a Concat read by E
        // (at offsets 0 and 6); E feeds the head through the pool (head columns follow).
        assert_eq!(names, ["A.w", "B.w", "C.w", "D.w", "E.w"], "{groups:?}");
        let residual = &groups[1];
        assert_eq!(residual.producers.len(), 2, "B and S are one group");
        assert_eq!(residual.channelwise.len(), 1, "the depthwise conv follows it");
        let e = m.graph().node.iter().position(|n| n.input.get(1).is_some_and(|w| w == "E.w")).unwrap();
        assert_eq!(groups[2].segment_consumers, [(e, 1, 0)]);
        assert_eq!(groups[3].segment_consumers, [(e, 1, 6)]);
    }

    #[test]
    fn concat_segments_are_cut_at_their_offsets() {
        let m = net();
        let groups = analyze(&m);
        // Drop C's channels 1 and 4 and D's channel 2: E reads inputs 0,2,3,5 | 6,7,9.
        let keep: BTreeMap<usize, Vec<usize>> = [(2, vec![0, 2, 3, 5]), (3, vec![0, 1, 3])].into();
        let p = prune(&m, &groups, &keep).unwrap();
        let view = GraphView::new(p.graph());
        let e = to_array::<f32>(view.constant("E.w").unwrap()).unwrap();
        let e0 = to_array::<f32>(GraphView::new(m.graph()).constant("E.w").unwrap()).unwrap();
        assert_eq!(e.shape(), &[3, 7, 3, 3]);
        assert_eq!(e, e0.select(Axis(1), &[0, 2, 3, 5, 6, 7, 9]));
        assert_eq!(run(&p).shape(), run(&m).shape());
    }

    /// x[b, s, 8] → MatMul W1[8, 16] → Add b1 → GELU (Div, Erf, Add, Mul, Mul) → MatMul W2[16, 8]
    /// → Add b2 → Add x (residual) → y; plus a Gemm MLP head on the side: the FFN neurons
    /// are one group (W1 columns, b1, W2 rows), the output side is blocked by the residual.
    fn ffn() -> Model {
        let mut b = GraphBuilder::new("ffn", 17);
        let x = b.input_f32("x", &[None, Some(5), Some(8)]);
        let w1 = b.init_f32("w1", w(&[8, 16], 1));
        let b1 = b.init_f32("b1", w(&[16], 2));
        let w2 = b.init_f32("w2", w(&[16, 8], 3));
        let b2 = b.init_f32("b2", w(&[8], 4));
        let h = b.op("MatMul", &[&x, &w1], &[]);
        let h = b.op("Add", &[&h, &b1], &[]);
        let half = b.init_f32("half", ArrayD::from_elem(IxDyn(&[]), 0.5));
        let sqrt2 = b.init_f32("sqrt2", ArrayD::from_elem(IxDyn(&[]), std::f32::consts::SQRT_2));
        let one = b.init_f32("one", ArrayD::from_elem(IxDyn(&[]), 1.0));
        let d = b.op("Div", &[&h, &sqrt2], &[]);
        let e = b.op("Erf", &[&d], &[]);
        let a = b.op("Add", &[&one, &e], &[]);
        let m = b.op("Mul", &[&h, &half], &[]);
        let gelu = b.op("Mul", &[&m, &a], &[]);
        let o = b.op("MatMul", &[&gelu, &w2], &[]);
        let o = b.op("Add", &[&o, &b2], &[]);
        let y = b.op("Add", &[&o, &x], &[]);
        b.output_f32(&y, &[None, Some(5), Some(8)]);
        b.build()
    }

    #[test]
    fn ffn_neurons_are_one_group_and_prune_cleanly() {
        let m = ffn();
        let groups = analyze(&m);
        assert_eq!(groups.len(), 1, "{groups:?}");
        let gr = &groups[0];
        assert_eq!((gr.name.as_str(), gr.channels, gr.producers.len(), gr.constants.len(), gr.consumers.len()), ("w1", 16, 1, 1, 1), "{gr:?}");
        let input = TensorValue::F32(w(&[2, 5, 8], 9));
        let run = |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        let before = run(&m);
        let keep: BTreeMap<usize, Vec<usize>> = [(0, keep_set(&importance(&m, gr), 8))].into();
        let p = prune(&m, &groups, &keep).unwrap();
        let shapes: BTreeMap<String, Vec<i64>> = p.graph().initializer.iter().map(|t| (t.name.clone().unwrap_or_default(), t.dims.clone())).collect();
        assert_eq!((shapes["w1"].as_slice(), shapes["b1"].as_slice(), shapes["w2"].as_slice()), (&[8, 8][..], &[8][..], &[8, 8][..]));
        assert_eq!(run(&p).shape(), before.shape());
        let all: BTreeMap<usize, Vec<usize>> = [(0, (0..16).collect())].into();
        let same = run(&prune(&m, &groups, &all).unwrap());
        assert!(same.iter().zip(before.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn pruning_removes_channels_and_keeps_the_output_shape() {
        let m = net();
        let before = run(&m);
        let groups = analyze(&m);
        let keep: BTreeMap<usize, Vec<usize>> = groups.iter().map(|g| (g.id, keep_set(&importance(&m, g), g.channels / 2))).collect();
        let p = prune(&m, &groups, &keep).unwrap();
        assert!(parameter_count(&p) < parameter_count(&m));
        let dw = p.graph().node.iter().find(|n| n.input.get(1).is_some_and(|w| w == "DW.w")).unwrap();
        assert_eq!(int_attr(dw, "group"), Some(4), "depthwise group follows the kept channels");
        let after = run(&p);
        assert_eq!(after.shape(), before.shape());
        // Keeping every channel changes nothing.
        let all: BTreeMap<usize, Vec<usize>> = groups.iter().map(|g| (g.id, (0..g.channels).collect())).collect();
        let same = run(&prune(&m, &groups, &all).unwrap());
        assert!(same.iter().zip(before.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
