//! Early exits: classifier heads after chosen blocks, and the cascade that answers from the
//! first head confident enough.
//!
//! - [`residual_points`]: the outputs of residual blocks (`Relu(Add(a, b))`, neither input a
//!   constant), in order, without the last (the full model answers there anyway).
//! - [`attach_heads`]: an optional 3×3 stride-2 `Conv → Relu`, then `AveragePool` to a small
//!   grid (or `GlobalAveragePool`) `→ Flatten → Gemm` after each point, each a new graph
//!   output `exit_<k>` (class scores, like the model's own output).
//! - [`cascade`]: one ONNX model. The graph computes up to the first exit; an `If` on "the
//!   largest softmax probability of every row ≥ τ" returns that exit's scores, or its else
//!   branch computes on to the next exit (another `If`) and finally the full output. One file
//!   and one session for the deployer, rather than a plan and a model per exit; with a batch,
//!   the early answer needs every row confident (batch 1 is the per-row rule).

use std::collections::{BTreeSet, HashSet};

use ndarray::{ArrayD, IxDyn};
use tamp_onnx::builder::{Attr, attribute, value_info};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{GraphProto, NodeProto, ValueInfoProto};
use tamp_onnx::tensor::from_array;
use tamp_onnx::{GraphView, Model, OnnxError, Patch};

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn node(op_type: &str, name: String, inputs: Vec<String>, output: String, attrs: Vec<tamp_onnx::proto::AttributeProto>) -> NodeProto {
    NodeProto { op_type: Some(op_type.into()), name: Some(name), input: inputs, output: vec![output], attribute: attrs, ..Default::default() }
}

/// Residual block outputs in topological order, the last one left out.
pub fn residual_points(model: &Model) -> Vec<String> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut points: Vec<String> = g
        .node
        .iter()
        .filter(|n| op(n) == "Relu")
        .filter(|n| {
            n.input.first().and_then(|x| view.producer(x)).is_some_and(|p| {
                let add = &g.node[p];
                op(add) == "Add" && add.input.len() == 2 && add.input.iter().all(|i| view.constant(i).is_none())
            })
        })
        .filter_map(|n| n.output.first().cloned())
        .collect();
    points.pop();
    points
}

/// The nodes (indices) needed to compute `values`, subgraph bodies' outer reads included.
pub fn ancestors(g: &GraphProto, values: &[String]) -> BTreeSet<usize> {
    let view = GraphView::new(g);
    let mut live = BTreeSet::new();
    let mut needed: Vec<String> = values.to_vec();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(v) = needed.pop() {
        if !seen.insert(v.clone()) {
            continue;
        }
        if let Some(p) = view.producer(&v)
            && live.insert(p)
        {
            let n = &g.node[p];
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
            for a in &n.attribute {
                for body in a.g.iter().chain(&a.graphs) {
                    needed.extend(body.node.iter().flat_map(|n| n.input.iter().cloned()));
                }
            }
        }
    }
    live
}

/// `model` with only `outputs` as graph outputs, and only what they need.
pub fn keep_outputs(model: &Model, outputs: &[String]) -> Result<Model, OnnxError> {
    let g = model.graph();
    let live = ancestors(g, outputs);
    let mut used: HashSet<&str> = HashSet::new();
    for &i in &live {
        used.extend(g.node[i].input.iter().map(String::as_str));
        for a in &g.node[i].attribute {
            for body in a.g.iter().chain(&a.graphs) {
                used.extend(body.node.iter().flat_map(|n| n.input.iter().map(String::as_str)));
            }
        }
    }
    used.extend(outputs.iter().map(String::as_str));
    let used: HashSet<String> = used.into_iter().map(str::to_owned).collect();
    let mut proto = model.proto.clone();
    let gm = proto.graph.get_or_insert_with(Default::default);
    let existing: Vec<ValueInfoProto> = gm.output.clone();
    gm.node = live.iter().map(|&i| g.node[i].clone()).collect();
    gm.initializer.retain(|t| t.name.as_ref().is_some_and(|n| used.contains(n)));
    gm.output =
        outputs.iter().map(|o| existing.iter().find(|v| v.name.as_deref() == Some(o.as_str())).cloned().unwrap_or_else(|| float_of_any_shape(o))).collect();
    let m = Model::new(proto);
    GraphView::new(m.graph()).check(&HashSet::new())?;
    Ok(m)
}

/// A model with heads, the exit output names, and each head's parameter names.
pub type Heads = (Model, Vec<String>, Vec<Vec<String>>);

/// A float value of unstated rank (ONNX Runtime infers it).
fn float_of_any_shape(name: &str) -> ValueInfoProto {
    let mut v = value_info(name, DataType::Float, &[]);
    if let Some(tamp_onnx::proto::type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = None;
    }
    v
}

/// Where a head reads: a value and its feature map's `[channels, height, width]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPoint {
    pub value: String,
    pub shape: [usize; 3],
}

/// The form of every head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadForm {
    /// Channels of a 3×3 stride-2 Conv + Relu first (0: none).
    pub conv_channels: usize,
    /// The map is average-pooled to at most `grid` × `grid` cells, then flattened (1: a
    /// global average pool).
    pub grid: usize,
}

/// Window, padding and cells of a pool that covers `size` positions in at most `grid` cells.
fn pool_to(size: usize, grid: usize) -> (usize, usize, usize) {
    let k = size.div_ceil(grid.max(1)).max(1);
    let cells = size.div_ceil(k);
    (k, cells * k - size, cells)
}

/// A classifier head after each point: graph outputs `exit_1 …`. With `conv_channels > 0`
/// the head first runs a 3×3 stride-2 Conv to that many channels and a Relu (more capacity
/// than a linear probe of early features). Then an `AveragePool` down to at most `grid` ×
/// `grid` cells (windows that cover the whole map; the last ones padded, padding not
/// counted), `Flatten` and `Gemm`; `grid` 1 is `GlobalAveragePool`. Returns the model, the
/// exit output names and each head's parameter names. Weights start seeded (uniform,
/// ±1/√fan-in); biases at zero.
pub fn attach_heads(model: &Model, points: &[ExitPoint], classes: usize, form: HeadForm, seed: u64) -> Result<Heads, OnnxError> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut patch = Patch::default();
    let (mut exits, mut params) = (Vec::new(), Vec::new());
    for (k, point) in points.iter().enumerate() {
        let exit = format!("exit_{}", k + 1);
        let mut names = Vec::new();
        let [mut width, mut h, mut w] = point.shape;
        let mut feature = point.value.clone();
        if form.conv_channels > 0 {
            let (cw, cb, co, cr) = (format!("{exit}.conv.weight"), format!("{exit}.conv.bias"), format!("{exit}.conv"), format!("{exit}.relu"));
            let bound = 1.0 / ((width * 9) as f32).sqrt();
            let weight = ArrayD::from_shape_fn(IxDyn(&[form.conv_channels, width, 3, 3]), |_| rng.random_range(-bound..bound));
            patch.add_initializers.push(from_array(&cw, &weight));
            patch.add_initializers.push(from_array(&cb, &ArrayD::<f32>::zeros(IxDyn(&[form.conv_channels]))));
            let attrs = vec![
                attribute("kernel_shape", Attr::Ints(vec![3, 3])),
                attribute("pads", Attr::Ints(vec![1, 1, 1, 1])),
                attribute("strides", Attr::Ints(vec![2, 2])),
            ];
            patch.add_nodes.push(node("Conv", format!("{exit}.Conv"), vec![feature, cw.clone(), cb.clone()], co.clone(), attrs));
            patch.add_nodes.push(node("Relu", format!("{exit}.Relu"), vec![co], cr.clone(), vec![]));
            names.extend([cw, cb]);
            (feature, width) = (cr, form.conv_channels);
            (h, w) = ((h.max(1) - 1) / 2 + 1, (w.max(1) - 1) / 2 + 1);
        }
        let pooled = format!("{exit}.pool");
        let pooled = if form.grid <= 1 {
            patch.add_nodes.push(node("GlobalAveragePool", format!("{exit}.GlobalAveragePool"), vec![feature], pooled.clone(), vec![]));
            (h, w) = (1, 1);
            pooled
        } else if h > form.grid || w > form.grid {
            let ((kh, ph, ch), (kw, pw, cw)) = (pool_to(h, form.grid), pool_to(w, form.grid));
            let attrs = vec![
                attribute("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                attribute("strides", Attr::Ints(vec![kh as i64, kw as i64])),
                attribute("pads", Attr::Ints(vec![0, 0, ph as i64, pw as i64])),
            ];
            patch.add_nodes.push(node("AveragePool", format!("{exit}.AveragePool"), vec![feature], pooled.clone(), attrs));
            (h, w) = (ch, cw);
            pooled
        } else {
            feature
        };
        let features = width * h * w;
        let (wn, bn) = (format!("{exit}.weight"), format!("{exit}.bias"));
        let bound = 1.0 / (features as f32).sqrt();
        let weight = ArrayD::from_shape_fn(IxDyn(&[classes, features]), |_| rng.random_range(-bound..bound));
        patch.add_initializers.push(from_array(&wn, &weight));
        patch.add_initializers.push(from_array(&bn, &ArrayD::<f32>::zeros(IxDyn(&[classes]))));
        let flat = format!("{exit}.flat");
        patch.add_nodes.push(node("Flatten", format!("{exit}.Flatten"), vec![pooled], flat.clone(), vec![attribute("axis", Attr::Int(1))]));
        patch.add_nodes.push(node("Gemm", format!("{exit}.Gemm"), vec![flat, wn.clone(), bn.clone()], exit.clone(), vec![attribute("transB", Attr::Int(1))]));
        patch.add_outputs.push(value_info(&exit, DataType::Float, &[None, Some(classes as i64)]));
        exits.push(exit);
        names.extend([wn, bn]);
        params.push(names);
    }
    Ok((patch.apply(model, "early-exit-heads").map_err(|e| OnnxError::Graph(e.to_string()))?, exits, params))
}

/// The cascade of `with_heads` (a model with `exits` outputs and `final_output`) at
/// threshold `tau`: see the module docs.
pub fn cascade(with_heads: &Model, exits: &[String], final_output: &str, tau: f32) -> Result<Model, OnnxError> {
    if exits.is_empty() {
        return Err(OnnxError::Graph("a cascade needs at least one exit".into()));
    }
    let g = with_heads.graph();
    let opset = with_heads.opset("").unwrap_or(13);
    let final_info = g.output.iter().find(|o| o.name.as_deref() == Some(final_output)).cloned();
    let out_info = |name: &str| {
        let mut v = final_info.clone().unwrap_or_else(|| value_info(name, DataType::Float, &[None, None]));
        v.name = Some(name.to_owned());
        v
    };
    // The nodes each level computes: what its target needs beyond what earlier levels did.
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut levels: Vec<Vec<usize>> = Vec::new();
    for target in exits.iter().chain(std::iter::once(&final_output.to_owned())) {
        let need = ancestors(g, std::slice::from_ref(target));
        levels.push(need.difference(&done).copied().collect());
        done.extend(need);
    }
    let tau_name = "cascade.tau".to_owned();
    // "Every row's top probability ≥ τ" for exit k, as nodes.
    let confident = |k: usize| -> (Vec<NodeProto>, String) {
        let e = &exits[k];
        let (p, top, least, cond) = (format!("{e}.prob"), format!("{e}.top"), format!("{e}.least"), format!("{e}.confident"));
        let reduce = |name: String, input: String, out: String, axes: Vec<i64>| -> Vec<NodeProto> {
            if opset >= 18 {
                let a = format!("{out}.axes");
                let c = NodeProto {
                    op_type: Some("Constant".into()),
                    name: Some(format!("{out}.AxesConst")),
                    output: vec![a.clone()],
                    attribute: vec![attribute("value", Attr::Tensor(from_array("", &ArrayD::from_shape_vec(IxDyn(&[axes.len()]), axes).unwrap_or_default())))],
                    ..Default::default()
                };
                vec![c, node(&name, format!("{out}.{name}"), vec![input, a], out, vec![attribute("keepdims", Attr::Int(0))])]
            } else {
                vec![node(&name, format!("{out}.{name}"), vec![input], out, vec![attribute("axes", Attr::Ints(axes)), attribute("keepdims", Attr::Int(0))])]
            }
        };
        let mut nodes = vec![node("Softmax", format!("{e}.Softmax"), vec![e.clone()], p.clone(), vec![attribute("axis", Attr::Int(-1))])];
        nodes.extend(reduce("ReduceMax".into(), p, top.clone(), vec![-1]));
        nodes.extend(reduce("ReduceMin".into(), top, least.clone(), vec![0]));
        nodes.push(node("GreaterOrEqual", format!("{e}.GreaterOrEqual"), vec![least, tau_name.clone()], cond.clone(), vec![]));
        (nodes, cond)
    };
    // Built from the innermost level out: level k's graph is its nodes, then (for an exit)
    // the confidence test and an If whose else branch is level k+1.
    let take = |idx: &[usize]| -> Vec<NodeProto> { idx.iter().map(|&i| g.node[i].clone()).collect() };
    let last = exits.len();
    let mut inner = GraphProto {
        name: Some("cascade.full".into()),
        node: {
            let mut n = take(&levels[last]);
            n.push(node("Identity", "cascade.full.Identity".into(), vec![final_output.to_owned()], "cascade.full.out".into(), vec![]));
            n
        },
        output: vec![out_info("cascade.full.out")],
        ..Default::default()
    };
    let mut top_nodes = Vec::new();
    for k in (0..last).rev() {
        let (test, cond) = confident(k);
        let then = GraphProto {
            name: Some(format!("cascade.exit{}", k + 1)),
            node: vec![node("Identity", format!("cascade.exit{}.Identity", k + 1), vec![exits[k].clone()], format!("cascade.exit{}.out", k + 1), vec![])],
            output: vec![out_info(&format!("cascade.exit{}.out", k + 1))],
            ..Default::default()
        };
        let result = if k == 0 { final_output.to_owned() } else { format!("cascade.level{k}.out") };
        let if_node = NodeProto {
            op_type: Some("If".into()),
            name: Some(format!("cascade.If{}", k + 1)),
            input: vec![cond],
            output: vec![result.clone()],
            attribute: vec![attribute("then_branch", Attr::Graph(then)), attribute("else_branch", Attr::Graph(inner))],
            ..Default::default()
        };
        let mut nodes = take(&levels[k]);
        nodes.extend(test);
        nodes.push(if_node);
        if k == 0 {
            top_nodes = nodes;
            break;
        }
        inner = GraphProto { name: Some(format!("cascade.level{k}")), node: nodes, output: vec![out_info(&result)], ..Default::default() };
    }
    let mut proto = with_heads.proto.clone();
    let gm = proto.graph.get_or_insert_with(Default::default);
    gm.node = top_nodes;
    gm.output = vec![out_info(final_output)];
    gm.value_info.clear();
    let used: HashSet<String> = ancestors_inputs(gm);
    gm.initializer.retain(|t| t.name.as_ref().is_some_and(|n| used.contains(n)));
    gm.initializer.push(from_array(&tau_name, &ArrayD::from_elem(IxDyn(&[]), tau)));
    Ok(Model::new(proto))
}

/// Every value name read by a node of `g` or of its subgraphs.
fn ancestors_inputs(g: &GraphProto) -> HashSet<String> {
    let mut out = HashSet::new();
    for n in &g.node {
        out.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for body in a.g.iter().chain(&a.graphs) {
                out.extend(ancestors_inputs(body));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Session, SessionConfig};
    use tamp_onnx::TensorValue;
    use tamp_onnx::builder::GraphBuilder;

    /// Two residual blocks: one point (the last is left out); the cascade answers from the
    /// head at τ = 0 and from the full model above 1, in ONNX Runtime.
    /// Windows cover the whole map in at most `grid` cells; the last window's padding is what
    /// the cells overhang.
    #[test]
    fn pools_cover_the_map_in_at_most_grid_cells() {
        assert_eq!(pool_to(14, 7), (2, 0, 7));
        assert_eq!(pool_to(7, 4), (2, 1, 4));
        assert_eq!(pool_to(56, 7), (8, 0, 7));
        assert_eq!(pool_to(9, 4), (3, 0, 3));
        assert_eq!(pool_to(3, 7), (1, 0, 3));
        for size in 1..80 {
            for grid in 1..10 {
                let (k, pad, cells) = pool_to(size, grid);
                assert!(cells <= grid && cells * k == size + pad && pad < k, "{size} {grid}");
            }
        }
    }

    #[test]
    fn one_head_and_its_cascade() {
        let mut b = GraphBuilder::new("res", 17);
        let x = b.input_f32("x", &[Some(1), Some(4), Some(6), Some(6)]);
        let w = |b: &mut GraphBuilder, name: &str, seed: f32| {
            b.init_f32(name, ArrayD::from_shape_fn(IxDyn(&[4, 4, 3, 3]), |d| ((d[0] * 7 + d[1] * 5 + d[2] * 3 + d[3]) as f32 * seed).sin() * 0.2))
        };
        let pads = [("pads", Attr::Ints(vec![1, 1, 1, 1]))];
        let w1 = w(&mut b, "w1", 0.3);
        let c1 = b.op("Conv", &[&x, &w1], &pads);
        let a1 = b.op("Add", &[&c1, &x], &[]);
        let r1 = b.op("Relu", &[&a1], &[]);
        let w2 = w(&mut b, "w2", 0.7);
        let c2 = b.op("Conv", &[&r1, &w2], &pads);
        let a2 = b.op("Add", &[&c2, &r1], &[]);
        let r2 = b.op("Relu", &[&a2], &[]);
        let p = b.op("GlobalAveragePool", &[&r2], &[]);
        let f = b.op("Flatten", &[&p], &[]);
        let wf = b.init_f32("wf", ArrayD::from_shape_fn(IxDyn(&[3, 4]), |d| (d[0] as f32 - d[1] as f32) * 0.3));
        let y = b.op("Gemm", &[&f, &wf], &[("transB", Attr::Int(1))]);
        b.output_f32(&y, &[Some(1), Some(3)]);
        let m = b.build();
        assert_eq!(residual_points(&m), vec![r1.clone()]);
        // A 4×6×6 map into a 4×4 grid: 2×2 windows, 3×3 cells.
        let point = ExitPoint { value: r1, shape: [4, 6, 6] };
        let (heads, exits, params) = attach_heads(&m, &[point], 3, HeadForm { conv_channels: 0, grid: 4 }, 1).unwrap();
        assert_eq!((exits.len(), params[0].len()), (1, 2));
        assert!(heads.graph().node.iter().any(|n| op(n) == "AveragePool"));
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[1, 4, 6, 6]), |d| ((d[1] * 11 + d[2] * 3 + d[3]) as f32 * 0.2).cos()));
        let run = |m: &Model| -> Vec<ArrayD<f32>> {
            Session::from_model(m, &SessionConfig::default())
                .unwrap()
                .run(&[("x", &input)])
                .unwrap()
                .into_iter()
                .map(|(_, v)| match v {
                    TensorValue::F32(a) => a,
                    _ => panic!(),
                })
                .collect()
        };
        let all = run(&heads);
        for (tau, want) in [(0.0, &all[1]), (1.5, &all[0])] {
            let got = run(&cascade(&heads, &exits, &y, tau).unwrap());
            // Equal up to float rounding (the last bit differed once through the If body).
            let err = (&got[0] - want).mapv(f32::abs).fold(0f32, |a, &v| a.max(v));
            assert!(err < 1e-5, "τ = {tau}: {err}");
        }
    }
}
