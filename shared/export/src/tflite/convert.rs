//! ONNX graph → [`ir::Graph`].
//!
//! - **Layout.** 4-D activations are laid out NHWC, as TFLite's kernels expect: the graph's
//!   4-D inputs become NHWC inputs, convolution weights are rearranged (OIHW → OHWI, or
//!   `[1, kh, kw, M]` for depthwise), per-channel constants are broadcast on the last axis,
//!   and axes move with them. A `TRANSPOSE` is written only where an op needs the NCHW order
//!   (a Flatten or Reshape over a spatial extent > 1, a Reshape to 4-D).
//! - **Quantization.** Tamp's int8 models are QDQ graphs. A `DequantizeLinear(QuantizeLinear(x))`
//!   pair is read as "x in int8 with these parameters": an op whose activation inputs all come
//!   through such pairs, and whose output (after its fused activation) is quantized by one,
//!   becomes an int8 kernel (per-channel symmetric weights, int32 bias at
//!   `input_scale · weight_scale`). Everything else runs in float, with `QUANTIZE` /
//!   `DEQUANTIZE` exactly where the ONNX graph crosses between the two. uint8 activations
//!   (ONNX Runtime's x86 default) become int8 with the zero point moved by −128: the same
//!   real values, so nothing is rounded twice.
//! - **Fusion.** BatchNormalization after a Conv is folded into it; Relu / Clip(0, 6) /
//!   Clip(−1, 1) after Conv, Gemm, Add and friends becomes the op's fused activation.
//! - **Errors.** A node the exporter cannot write is recorded (node, op, why, what to do) and
//!   everything downstream of it is skipped, so one run lists every problem.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayD, Axis, IxDyn};
use tamp_onnx::graph::attr;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{NodeProto, TensorProto};
use tamp_onnx::proto::{tensor_shape_proto::dimension, type_proto};
use tamp_onnx::tensor::TensorValue;
use tamp_onnx::{GraphView, Model};

use super::ir::{Act, DType, Graph, Op, Operator, Padding, Quant, Tensor};
use crate::Problem;
use shape::{broadcast, conv_out, padding_for, reshape_dims};
use weights::{dequantize, int8_weights, symmetric_per_channel};

mod nodes;
mod shape;
mod unpad;
mod weights;

/// What precision the `.tflite` is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Float32 throughout. QDQ pairs in the input are dropped, weights dequantized.
    Float32,
    /// Float activations, int8 per-channel weights for Conv / FullyConnected (TFLite's
    /// "dynamic range" hybrid kernels). QDQ pairs in the input are dropped.
    DynamicInt8,
    /// Int8 wherever the model's QDQ pairs say (Tamp's own calibration), float elsewhere.
    Int8,
}

impl Precision {
    /// The precision `model` is in: int8 when it has QDQ pairs (Tamp's int8 output), else fp32.
    pub fn of(model: &Model) -> Self {
        if model.graph().node.iter().any(|n| n.op_type.as_deref() == Some("QuantizeLinear")) { Precision::Int8 } else { Precision::Float32 }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Float32 => "fp32",
            Precision::DynamicInt8 => "dynamic-int8",
            Precision::Int8 => "int8",
        }
    }
}

/// Conversion settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub precision: Precision,
    /// Fixed shapes for inputs with dynamic dimensions (`name → dims`, ONNX order). A
    /// dynamic first dimension defaults to 1.
    pub input_shapes: HashMap<String, Vec<usize>>,
}

impl Default for Options {
    fn default() -> Self {
        Self { precision: Precision::Float32, input_shapes: HashMap::new() }
    }
}

/// Per-tensor int8 parameters of an activation (int8 domain: zero point in −128..=127).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Qp {
    scale: f32,
    zp: i64,
}

/// A constant: its float view and, where it came from a `DequantizeLinear`, the integers.
#[derive(Debug, Clone)]
struct Konst {
    f: ArrayD<f32>,
    /// Integer-valued constants (shapes, axes) exactly.
    i: Option<ArrayD<i64>>,
    q: Option<QConst>,
}

#[derive(Debug, Clone)]
struct QConst {
    q: ArrayD<i64>,
    scale: Vec<f32>,
    zp: Vec<i64>,
    axis: usize,
    elem: DataType,
}

/// An activation's TFLite tensors: float, int8, or both.
#[derive(Debug, Clone)]
struct Value {
    /// ONNX-order shape.
    shape: Vec<usize>,
    /// Stored NHWC (4-D only).
    nhwc: bool,
    f: Option<i32>,
    q: Option<(i32, Qp)>,
}

const NCHW_TO_NHWC: [usize; 4] = [0, 2, 3, 1];

fn permute<T: Copy>(v: &[T], perm: &[usize]) -> Vec<T> {
    perm.iter().map(|&p| v[p]).collect()
}

fn shape_i32(s: &[usize]) -> Vec<i32> {
    s.iter().map(|&d| i32::try_from(d).unwrap_or(i32::MAX)).collect()
}

fn f32_bytes(a: &[f32]) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i32_bytes(a: &[i32]) -> Vec<u8> {
    a.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i8_bytes(a: &[i8]) -> Vec<u8> {
    a.iter().map(|&v| v as u8).collect()
}

type Res<T> = Result<T, Problem>;

struct Cx<'m> {
    view: GraphView<'m>,
    opts: &'m Options,
    g: Graph,
    consts: HashMap<String, Konst>,
    vals: HashMap<String, Value>,
    /// `y → (x, params)` for `y = DequantizeLinear(QuantizeLinear(x))`.
    dq_of: HashMap<String, (String, Qp)>,
    /// `x → params` of the first QuantizeLinear reading activation `x`.
    out_q: HashMap<String, Qp>,
    /// Nodes written as part of another (QDQ pairs, folded BN, fused activations).
    skip: HashSet<usize>,
    /// Values downstream of a node that could not be converted.
    poisoned: HashSet<String>,
    problems: Vec<Problem>,
    graph_outputs: HashSet<String>,
}

fn op_of(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn node_name(n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => n.output.first().cloned().unwrap_or_default(),
    }
}

fn scalar_f(t: &Konst) -> Option<f32> {
    (t.f.len() == 1).then(|| t.f.iter().next().copied()).flatten()
}

/// Converts `model` to a TFLite graph, or lists every node that stops it.
pub fn convert(model: &Model, opts: &Options) -> Result<Graph, Vec<Problem>> {
    let unpadded = unpad::undo(model);
    let model = unpadded.as_ref().unwrap_or(model);
    let graph = model.graph();
    let view = GraphView::new(graph);
    let order = view.topological_order().map_err(|e| vec![Problem::model(format!("the graph has no topological order: {e}"))])?;
    let mut cx = Cx {
        view,
        opts,
        g: Graph::default(),
        consts: HashMap::new(),
        vals: HashMap::new(),
        dq_of: HashMap::new(),
        out_q: HashMap::new(),
        skip: HashSet::new(),
        poisoned: HashSet::new(),
        problems: Vec::new(),
        graph_outputs: graph.output.iter().filter_map(|o| o.name.clone()).collect(),
    };
    cx.g.description = format!("Tamp {} ({}) from {}", env!("CARGO_PKG_VERSION"), opts.precision.as_str(), graph.name.as_deref().unwrap_or("model"));
    for t in &graph.initializer {
        if let Some(name) = t.name.as_deref() {
            match konst(t) {
                Ok(k) => {
                    cx.consts.insert(name.to_owned(), k);
                }
                Err(why) => cx.problems.push(Problem::at(name, "initializer", &why, "re-export the model with float, int8 or int64 initializers")),
            }
        }
    }
    cx.inputs(model);
    cx.check_arity(&order);
    cx.fold_constants(&order);
    cx.find_qdq(&order);
    let fused = cx.find_fusions(&order);
    for &i in &order {
        if cx.skip.contains(&i) {
            continue;
        }
        let node = &graph.node[i];
        if node.input.iter().any(|v| cx.poisoned.contains(v)) {
            cx.poison(node);
            continue;
        }
        if let Err(p) = cx.node(node, fused.get(&i)) {
            cx.problems.push(p);
            cx.poison(node);
        }
    }
    let outputs: Vec<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    for name in outputs {
        if cx.poisoned.contains(&name) {
            continue;
        }
        match cx.float_in(&name) {
            Ok(t) => {
                cx.g.tensors[t as usize].name.clone_from(&name);
                cx.g.outputs.push(t);
            }
            Err(p) => cx.problems.push(p),
        }
    }
    if cx.problems.is_empty() { Ok(cx.g) } else { Err(cx.problems) }
}

fn konst(t: &TensorProto) -> Result<Konst, String> {
    let v = TensorValue::from_proto(t).map_err(|e| e.to_string())?;
    Ok(match v {
        TensorValue::F32(a) => Konst { f: a, i: None, q: None },
        TensorValue::F64(a) => Konst { f: a.mapv(|x| x as f32), i: None, q: None },
        TensorValue::I64(a) => Konst { f: a.mapv(|x| x as f32), i: Some(a), q: None },
        TensorValue::I32(a) => Konst { f: a.mapv(|x| x as f32), i: Some(a.mapv(i64::from)), q: None },
        TensorValue::I8(a) => Konst { f: a.mapv(f32::from), i: Some(a.mapv(i64::from)), q: None },
        TensorValue::U8(a) => Konst { f: a.mapv(f32::from), i: Some(a.mapv(i64::from)), q: None },
        TensorValue::Bool(a) => Konst { f: a.mapv(|b| if b { 1.0 } else { 0.0 }), i: Some(a.mapv(i64::from)), q: None },
    })
}

fn elem_of(t: &TensorProto) -> DataType {
    t.data_type.and_then(|d| DataType::try_from(d).ok()).unwrap_or(DataType::Undefined)
}

impl<'m> Cx<'m> {
    fn poison(&mut self, node: &NodeProto) {
        for o in &node.output {
            self.poisoned.insert(o.clone());
        }
    }

    fn fail(node: &NodeProto, why: impl Into<String>, fix: impl Into<String>) -> Problem {
        Problem::at(&node_name(node), op_of(node), &why.into(), &fix.into())
    }

    /// Nodes with fewer inputs than their op needs (or no output) are malformed: each is a
    /// problem, and nothing downstream is converted (no emitter indexes past what exists).
    fn check_arity(&mut self, order: &[usize]) {
        let graph = self.view.graph;
        for &i in order {
            let n = &graph.node[i];
            let op = op_of(n);
            let need = match op {
                "Constant" => 0,
                "BatchNormalization" => 5,
                "Conv" | "Gemm" | "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "Reshape" | "QuantizeLinear" | "DequantizeLinear" => 2,
                _ => 1,
            };
            let present = n.input.iter().take(need).filter(|v| !v.is_empty()).count();
            if present < need || n.output.first().is_none_or(String::is_empty) {
                self.problems.push(Self::fail(
                    n,
                    format!("{op} needs {need} input(s) and an output; this node has {} and {}", n.input.len(), n.output.len()),
                    "repair the model (onnx.checker names the node)",
                ));
                self.skip.insert(i);
                self.poison(n);
            }
        }
    }

    fn inputs(&mut self, model: &Model) {
        let inits: HashSet<&str> = model.graph().initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        for vi in &model.graph().input {
            let Some(name) = vi.name.clone() else { continue };
            if inits.contains(name.as_str()) {
                continue;
            }
            let Some(type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                self.problems.push(Problem::at(&name, "input", "not a tensor input", "TFLite inputs are tensors"));
                continue;
            };
            let elem = tt.elem_type.and_then(|e| DataType::try_from(e).ok()).unwrap_or(DataType::Undefined);
            if elem != DataType::Float {
                self.problems.push(Problem::at(
                    &name,
                    "input",
                    &format!("{elem:?} input: Tamp's TFLite exporter takes float inputs (image and feature models)"),
                    "keep token-id models on ONNX Runtime (`targets: [onnxruntime]`)",
                ));
                self.poisoned.insert(name);
                continue;
            }
            let dims: Vec<Option<usize>> = tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| if let Some(dimension::Value::DimValue(v)) = d.value { usize::try_from(v).ok().filter(|&v| v > 0) } else { None })
                        .collect()
                })
                .unwrap_or_default();
            let shape = if let Some(s) = self.opts.input_shapes.get(&name) {
                s.clone()
            } else {
                let mut s = Vec::with_capacity(dims.len());
                for (i, d) in dims.iter().enumerate() {
                    match (d, i) {
                        (Some(v), _) => s.push(*v),
                        (None, 0) => s.push(1),
                        (None, _) => {
                            self.problems.push(Problem::at(
                                &name,
                                "input",
                                &format!("dimension {i} is dynamic; TFLite tensors here have fixed shapes"),
                                &format!("give it a size: --input-shape {name}=1,…"),
                            ));
                            self.poisoned.insert(name.clone());
                            break;
                        }
                    }
                }
                if self.poisoned.contains(&name) {
                    continue;
                }
                s
            };
            let nhwc = shape.len() == 4;
            let tshape = if nhwc { permute(&shape, &NCHW_TO_NHWC) } else { shape.clone() };
            let t = self.g.add(Tensor { name: name.clone(), shape: shape_i32(&tshape), dtype: DType::F32, data: None, quant: None });
            self.g.inputs.push(t);
            self.vals.insert(name, Value { shape, nhwc, f: Some(t), q: None });
        }
    }

    /// Evaluates nodes whose inputs are all constant (Constant, DequantizeLinear of weights,
    /// the bias-scale products, shape arithmetic) and drops them from the graph.
    fn fold_constants(&mut self, order: &[usize]) {
        let graph = self.view.graph;
        for &i in order {
            let n = &graph.node[i];
            let op = op_of(n);
            if op == "Constant" {
                if let (Some(t), Some(out)) = (attr(n, "value").and_then(|a| a.t.as_ref()), n.output.first())
                    && let Ok(k) = konst(t)
                {
                    self.consts.insert(out.clone(), k);
                    self.skip.insert(i);
                }
                continue;
            }
            let ins: Vec<&str> = n.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
            if ins.is_empty() || !ins.iter().all(|v| self.consts.contains_key(*v)) {
                continue;
            }
            let k: Vec<&Konst> = ins.iter().map(|v| &self.consts[*v]).collect();
            let folded = match op {
                "Identity" => Some(k[0].clone()),
                "DequantizeLinear" => dequantize(n, &k, &ins, graph),
                "Mul" | "Add" | "Sub" | "Div" if k.len() == 2 => {
                    let (a, b) = (&k[0].f, &k[1].f);
                    let out = broadcast(a.shape(), b.shape()).and_then(|s| {
                        let a = a.broadcast(IxDyn(&s))?;
                        let b = b.broadcast(IxDyn(&s))?;
                        Some(match op {
                            "Mul" => &a * &b,
                            "Add" => &a + &b,
                            "Sub" => &a - &b,
                            _ => &a / &b,
                        })
                    });
                    out.map(|f| Konst { f, i: None, q: None })
                }
                "Reshape" if k.len() == 2 => k[1].i.as_ref().and_then(|s| {
                    let dims = reshape_dims(k[0].f.shape(), s.iter().copied())?;
                    let f = k[0].f.to_shape(IxDyn(&dims)).ok()?.to_owned();
                    Some(Konst { f, i: k[0].i.as_ref().and_then(|i| i.to_shape(IxDyn(&dims)).ok().map(|v| v.to_owned())), q: None })
                }),
                _ => None,
            };
            if let (Some(f), Some(out)) = (folded, n.output.first()) {
                self.consts.insert(out.clone(), f);
                self.skip.insert(i);
            }
        }
    }

    /// Finds `DequantizeLinear(QuantizeLinear(x))` pairs on activations.
    fn find_qdq(&mut self, order: &[usize]) {
        let graph = self.view.graph;
        let mut q_src: HashMap<&str, (&str, Qp)> = HashMap::new();
        let settled = self.skip.clone();
        for &i in order.iter().filter(|i| !settled.contains(i)) {
            let n = &graph.node[i];
            let scalar_params = |n: &NodeProto| -> Option<Qp> {
                let s = scalar_f(self.consts.get(n.input.get(1)?)?)?;
                let (zp, unsigned) = match n.input.get(2).filter(|z| !z.is_empty()) {
                    Some(z) => {
                        let zp_t = self.view.constant(z);
                        let unsigned = zp_t.is_some_and(|t| elem_of(t) == DataType::Uint8);
                        (self.consts.get(z)?.i.as_ref()?.iter().next().copied()?, unsigned)
                    }
                    None => (0, true),
                };
                // Only 8-bit activations: int16 / int4 QDQ stays float.
                if let Some(z) = n.input.get(2).filter(|z| !z.is_empty()).and_then(|z| self.view.constant(z))
                    && !matches!(elem_of(z), DataType::Uint8 | DataType::Int8)
                {
                    return None;
                }
                Some(Qp { scale: s, zp: if unsigned { zp - 128 } else { zp } })
            };
            match op_of(n) {
                "QuantizeLinear" if !self.consts.contains_key(&n.input[0]) => {
                    if let (Some(p), Some(out)) = (scalar_params(n), n.output.first()) {
                        q_src.insert(out.as_str(), (n.input[0].as_str(), p));
                        self.out_q.entry(n.input[0].clone()).or_insert(p);
                        self.skip.insert(i);
                    }
                }
                "DequantizeLinear" => {
                    if let Some(&(x, p)) = q_src.get(n.input[0].as_str())
                        && scalar_params(n) == Some(p)
                        && let Some(out) = n.output.first()
                    {
                        self.dq_of.insert(out.clone(), (x.to_owned(), p));
                        self.skip.insert(i);
                    }
                }
                _ => {}
            }
        }
        // A QuantizeLinear whose output is read by anything but its DequantizeLinear (or is a
        // graph output) is not a pair: put it back.
        let unpaired: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| {
                let n = &graph.node[i];
                op_of(n) == "QuantizeLinear"
                    && self.skip.contains(&i)
                    && n.output.first().is_some_and(|o| {
                        self.graph_outputs.contains(o)
                            || self.view.consumers(o).iter().any(|&c| op_of(&graph.node[c]) != "DequantizeLinear" || !self.skip.contains(&c))
                    })
            })
            .collect();
        for i in unpaired {
            self.skip.remove(&i);
        }
        if self.opts.precision != Precision::Int8 {
            // Float and dynamic-range exports read every pair as the identity.
            self.out_q.clear();
        }
    }

    /// The sole consumer of `v`, if exactly one node reads it and it is not a graph output.
    fn sole_consumer(&self, v: &str) -> Option<usize> {
        match self.view.consumers(v) {
            [c] if !self.graph_outputs.contains(v) => Some(*c),
            _ => None,
        }
    }

    fn activation_of(&self, n: &NodeProto) -> Option<Act> {
        match op_of(n) {
            "Relu" => Some(Act::Relu),
            "Clip" => {
                let lo =
                    n.input.get(1).filter(|s| !s.is_empty()).and_then(|v| self.consts.get(v)).and_then(scalar_f).or_else(|| attr(n, "min").and_then(|a| a.f));
                let hi =
                    n.input.get(2).filter(|s| !s.is_empty()).and_then(|v| self.consts.get(v)).and_then(scalar_f).or_else(|| attr(n, "max").and_then(|a| a.f));
                match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Some(Act::Relu6),
                    (Some(l), Some(h)) if l == -1.0 && h == 1.0 => Some(Act::ReluN1To1),
                    (Some(0.0), None) => Some(Act::Relu),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `node → (folded BN node, fused activation, final output name)`.
    fn find_fusions(&mut self, order: &[usize]) -> HashMap<usize, Fusion> {
        let graph = self.view.graph;
        let mut out = HashMap::new();
        for &i in order {
            let n = &graph.node[i];
            let op = op_of(n);
            if !matches!(op, "Conv" | "Gemm" | "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "BatchNormalization") || self.skip.contains(&i) {
                continue;
            }
            let Some(mut last) = n.output.first().cloned() else { continue };
            let mut f = Fusion { bn: None, act: Act::None, out: last.clone() };
            if op == "Conv"
                && let Some(c) = self.sole_consumer(&last).filter(|c| !self.skip.contains(c))
                && op_of(&graph.node[c]) == "BatchNormalization"
                && graph.node[c].input[1..].iter().all(|v| self.consts.contains_key(v))
            {
                f.bn = Some(c);
                self.skip.insert(c);
                last.clone_from(&graph.node[c].output[0]);
            }
            if let Some(c) = self.sole_consumer(&last).filter(|c| !self.skip.contains(c))
                && let Some(a) = self.activation_of(&graph.node[c])
            {
                f.act = a;
                self.skip.insert(c);
                last.clone_from(&graph.node[c].output[0]);
            }
            f.out = last;
            out.insert(i, f);
        }
        out
    }

    // ---- tensors -------------------------------------------------------------------------

    fn const_tensor(&mut self, name: &str, shape: &[usize], data: Vec<u8>, dtype: DType, quant: Option<Quant>) -> i32 {
        self.g.add(Tensor { name: name.to_owned(), shape: shape_i32(shape), dtype, data: Some(data), quant })
    }

    /// An int8 constant with symmetric per-channel scales along `axis` (zero points 0).
    fn int8_const(&mut self, name: &str, codes: &ArrayD<i8>, scale: Vec<f32>, axis: i32) -> i32 {
        let shape = codes.shape().to_vec();
        let zero_point = vec![0; scale.len()];
        self.const_tensor(name, &shape, i8_bytes(&codes.iter().copied().collect::<Vec<_>>()), DType::I8, Some(Quant { scale, zero_point, axis }))
    }

    /// The int32 bias of an int8 kernel: scale `input_scale · weight_scale[c]` (what TFLite
    /// checks), values rounded from the float bias.
    fn int32_bias(&mut self, name: &str, bias: &[f32], input_scale: f32, weight_scale: &[f32]) -> i32 {
        let scale: Vec<f32> = weight_scale.iter().map(|&s| (f64::from(input_scale) * f64::from(s)) as f32).collect();
        let q: Vec<i32> =
            bias.iter().zip(&scale).map(|(&b, &s)| (f64::from(b) / f64::from(s)).round().clamp(-2_147_483_648.0, 2_147_483_647.0) as i32).collect();
        let n = q.len();
        self.const_tensor(name, &[n], i32_bytes(&q), DType::I32, Some(Quant { scale, zero_point: vec![0; n], axis: 0 }))
    }

    fn i32_const(&mut self, name: &str, v: &[i32]) -> i32 {
        self.const_tensor(name, &[v.len()], i32_bytes(v), DType::I32, None)
    }

    fn push(&mut self, op: Op, version: i32, inputs: Vec<i32>, outputs: Vec<i32>) {
        self.g.operators.push(Operator { op, version, inputs, outputs });
    }

    /// A new activation tensor for `name` (ONNX-order `shape`), int8 when `q` is given.
    fn out_tensor(&mut self, name: &str, shape: &[usize], nhwc: bool, q: Option<Qp>) -> i32 {
        let tshape = if nhwc && shape.len() == 4 { permute(shape, &NCHW_TO_NHWC) } else { shape.to_vec() };
        let (dtype, quant, tname) = match q {
            Some(p) => (DType::I8, Some(Quant::per_tensor(p.scale, p.zp)), format!("{name}.int8")),
            None => (DType::F32, None, name.to_owned()),
        };
        let t = self.g.add(Tensor { name: tname, shape: shape_i32(&tshape), dtype, data: None, quant });
        let v = self.vals.entry(name.to_owned()).or_insert(Value { shape: shape.to_vec(), nhwc, f: None, q: None });
        match q {
            Some(p) => v.q = Some((t, p)),
            None => v.f = Some(t),
        }
        t
    }

    /// Shape and layout of an activation (through QDQ aliases).
    fn meta(&self, name: &str) -> Option<(Vec<usize>, bool)> {
        let src = self.dq_of.get(name).map_or(name, |(x, _)| x.as_str());
        self.vals.get(src).or_else(|| self.vals.get(name)).map(|v| (v.shape.clone(), v.nhwc))
    }

    /// Can `name` be read in int8 without changing what the ONNX graph computes?
    fn has_quant(&self, name: &str) -> bool {
        self.dq_of.contains_key(name) && self.opts.precision == Precision::Int8 || self.vals.get(name).is_some_and(|v| v.q.is_some() && v.f.is_none())
    }

    /// The int8 tensor of `name`, writing a QUANTIZE where the producer wrote float.
    fn quant_in(&mut self, name: &str) -> Res<(i32, Qp)> {
        if let Some(v) = self.vals.get(name)
            && let Some(q) = v.q
        {
            return Ok(q);
        }
        let Some((x, p)) = self.dq_of.get(name).cloned() else {
            return Err(Problem::at(name, "value", "not quantized", "internal: int8 path chosen for a float value"));
        };
        let (shape, nhwc) = self.meta(&x).ok_or_else(|| Problem::at(name, "value", "unknown value", "check the graph is valid"))?;
        let src = self.vals.get(&x).cloned().ok_or_else(|| Problem::at(&x, "value", "no tensor", "check the graph is valid"))?;
        // Already int8 with these parameters: the same tensor; otherwise a QUANTIZE from the
        // float tensor (or a requantization of the int8 one).
        let from = match (src.q, src.f) {
            (Some((qt, qp)), _) if qp == p => {
                self.vals.insert(name.to_owned(), Value { shape, nhwc, f: None, q: Some((qt, p)) });
                return Ok((qt, p));
            }
            (_, Some(ft)) => ft,
            (Some((qt, _)), None) => qt,
            (None, None) => return Err(Problem::at(&x, "value", "no tensor", "check the graph is valid")),
        };
        let t = self.g.add(Tensor {
            name: format!("{name}.int8"),
            shape: shape_i32(&if nhwc { permute(&shape, &NCHW_TO_NHWC) } else { shape.clone() }),
            dtype: DType::I8,
            data: None,
            quant: Some(Quant::per_tensor(p.scale, p.zp)),
        });
        self.push(Op::Quantize, 2, vec![from], vec![t]);
        self.vals.insert(name.to_owned(), Value { shape, nhwc, f: None, q: Some((t, p)) });
        Ok((t, p))
    }

    /// The float tensor of `name` (a DEQUANTIZE where only int8 exists; constants as
    /// tensors in their ONNX layout).
    fn float_in(&mut self, name: &str) -> Res<i32> {
        if let Some(v) = self.vals.get(name)
            && let Some(f) = v.f
        {
            return Ok(f);
        }
        if self.opts.precision != Precision::Int8
            && let Some((x, _)) = self.dq_of.get(name).cloned()
        {
            return self.float_in(&x);
        }
        if let Some(k) = self.consts.get(name) {
            let (shape, data) = (k.f.shape().to_vec(), f32_bytes(&k.f.iter().copied().collect::<Vec<_>>()));
            let t = self.const_tensor(name, &shape, data, DType::F32, None);
            self.vals.insert(name.to_owned(), Value { shape, nhwc: false, f: Some(t), q: None });
            return Ok(t);
        }
        let (qt, _) = self.quant_in(name)?;
        let (shape, nhwc) = self.meta(name).ok_or_else(|| Problem::at(name, "value", "unknown value", "check the graph is valid"))?;
        let t = self.out_tensor(name, &shape, nhwc, None);
        self.push(Op::Dequantize, 2, vec![qt], vec![t]);
        Ok(t)
    }

    /// The tensor of `name` in NHWC order (transposing a 4-D NCHW value).
    fn nhwc_in(&mut self, name: &str, int8: bool) -> Res<i32> {
        let t = if int8 { self.quant_in(name)?.0 } else { self.float_in(name)? };
        let (shape, nhwc) = self.meta(name).ok_or_else(|| Problem::at(name, "value", "unknown value", "check the graph is valid"))?;
        if nhwc || shape.len() != 4 {
            return Ok(t);
        }
        let perm = self.i32_const(&format!("{name}.perm_nhwc"), &[0, 2, 3, 1]);
        let src = self.g.tensor(t).clone();
        let out = self.g.add(Tensor { name: format!("{name}.nhwc"), shape: shape_i32(&permute(&shape, &NCHW_TO_NHWC)), data: None, ..src });
        self.push(Op::Transpose, if int8 { 2 } else { 1 }, vec![t, perm], vec![out]);
        Ok(out)
    }

    /// The tensor of `name` in ONNX (NCHW) order.
    fn nchw_in(&mut self, name: &str, int8: bool) -> Res<i32> {
        let t = if int8 { self.quant_in(name)?.0 } else { self.float_in(name)? };
        let (shape, nhwc) = self.meta(name).ok_or_else(|| Problem::at(name, "value", "unknown value", "check the graph is valid"))?;
        if !nhwc || shape.len() != 4 {
            return Ok(t);
        }
        let perm = self.i32_const(&format!("{name}.perm_nchw"), &[0, 3, 1, 2]);
        let src = self.g.tensor(t).clone();
        let out = self.g.add(Tensor { name: format!("{name}.nchw"), shape: shape_i32(&shape), data: None, ..src });
        self.push(Op::Transpose, if int8 { 2 } else { 1 }, vec![t, perm], vec![out]);
        Ok(out)
    }

    /// A constant operand of an elementwise op, laid out to broadcast against an NHWC
    /// 4-D activation when `nhwc`.
    fn elementwise_const(&mut self, name: &str, nhwc: bool) -> Res<(i32, Vec<usize>)> {
        let k = self.consts.get(name).ok_or_else(|| Problem::at(name, "value", "not a constant", "internal"))?;
        let mut a = k.f.clone();
        let onnx_shape = a.shape().to_vec();
        if nhwc && a.ndim() > 1 {
            while a.ndim() < 4 {
                a.insert_axis_inplace(Axis(0));
            }
            a = a.permuted_axes(IxDyn(&NCHW_TO_NHWC)).as_standard_layout().to_owned();
        }
        let shape = a.shape().to_vec();
        let t = self.const_tensor(
            &format!("{name}.{}", if nhwc { "nhwc" } else { "c" }),
            &shape,
            f32_bytes(&a.iter().copied().collect::<Vec<_>>()),
            DType::F32,
            None,
        );
        Ok((t, onnx_shape))
    }

    /// A float op's weight that the int8 model stores as symmetric int8 codes (an op Tamp's
    /// QDQ leaves in float because its output is not quantized, e.g. the classifier): the
    /// codes stay int8 in the file, and a DEQUANTIZE of the constant gives the kernel exactly
    /// the float weights ONNX Runtime computes with.
    fn dequantized_weight(&mut self, name: &str, k: &Konst, out_axis: usize, perm: &[usize], t_axis: i32) -> Option<i32> {
        let q = k.q.as_ref()?;
        if self.opts.precision != Precision::Int8 || q.axis != out_axis || q.scale.len() != k.f.shape()[out_axis] {
            return None;
        }
        let codes = q.symmetric_codes()?.permuted_axes(IxDyn(perm)).as_standard_layout().to_owned();
        let shape = codes.shape().to_vec();
        let stored = self.int8_const(&format!("{name}.int8"), &codes, q.scale.clone(), t_axis);
        let f = self.g.add(Tensor { name: format!("{name}.dequantized"), shape: shape_i32(&shape), dtype: DType::F32, data: None, quant: None });
        self.push(Op::Dequantize, 2, vec![stored], vec![f]);
        Some(f)
    }
}

/// What the converter writes into one op: a folded BN, a fused activation, the final value.
#[derive(Debug, Clone)]
struct Fusion {
    bn: Option<usize>,
    act: Act,
    out: String,
}

#[cfg(test)]
mod tests;
