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
use tamp_onnx::graph::{attr, attr_float, attr_int, attr_ints};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{NodeProto, TensorProto};
use tamp_onnx::proto::{tensor_shape_proto::dimension, type_proto};
use tamp_onnx::tensor::TensorValue;
use tamp_onnx::{GraphView, Model};

use super::ir::{Act, DType, Graph, Op, Operator, Padding, Quant, Tensor};
use crate::Problem;

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

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// `SAME` when `pads` are what TFLite's SAME padding gives for this input, `VALID` when
/// there are none, else `None` (an explicit `PAD` is needed).
fn padding_for(input: [usize; 2], kernel: [usize; 2], stride: [usize; 2], dilation: [usize; 2], pads: [usize; 4]) -> Option<Padding> {
    if pads.iter().all(|&p| p == 0) {
        return Some(Padding::Valid);
    }
    let mut same = [0usize; 4];
    for d in 0..2 {
        let k = (kernel[d] - 1) * dilation[d] + 1;
        let out = input[d].div_ceil(stride[d]);
        let total = ((out - 1) * stride[d] + k).saturating_sub(input[d]);
        same[d] = total / 2;
        same[d + 2] = total - total / 2;
    }
    (same == pads).then_some(Padding::Same)
}

fn conv_out(input: usize, k: usize, s: usize, d: usize, pb: usize, pe: usize) -> Option<usize> {
    let eff = (k - 1) * d + 1;
    (input + pb + pe).checked_sub(eff).map(|v| v / s + 1)
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
                    "export transformers with token-id inputs to ONNX Runtime or OpenVINO",
                ));
                self.poisoned.insert(name);
                continue;
            }
            let dims: Vec<Option<usize>> = tt
                .shape
                .as_ref()
                .map(|s| s.dim.iter().map(|d| if let Some(dimension::Value::DimValue(v)) = d.value { usize::try_from(v).ok().filter(|&v| v > 0) } else { None }).collect())
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
        for &i in order {
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
                        self.graph_outputs.contains(o) || self.view.consumers(o).iter().any(|&c| op_of(&graph.node[c]) != "DequantizeLinear" || !self.skip.contains(&c))
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
                let lo = n.input.get(1).filter(|s| !s.is_empty()).and_then(|v| self.consts.get(v)).and_then(scalar_f).or_else(|| attr(n, "min").and_then(|a| a.f));
                let hi = n.input.get(2).filter(|s| !s.is_empty()).and_then(|v| self.consts.get(v)).and_then(scalar_f).or_else(|| attr(n, "max").and_then(|a| a.f));
                match (lo, hi) {
                    (Some(l), Some(h)) if l == 0.0 && h == 6.0 => Some(Act::Relu6),
                    (Some(l), Some(h)) if l == -1.0 && h == 1.0 => Some(Act::ReluN1To1),
                    (Some(l), None) if l == 0.0 => Some(Act::Relu),
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
                && let Some(c) = self.sole_consumer(&last)
                && op_of(&graph.node[c]) == "BatchNormalization"
                && graph.node[c].input[1..].iter().all(|v| self.consts.contains_key(v))
            {
                f.bn = Some(c);
                self.skip.insert(c);
                last.clone_from(&graph.node[c].output[0]);
            }
            // An output the int8 graph quantizes right here keeps its own activation node.
            if let Some(c) = self.sole_consumer(&last)
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
        let t = self.g.add(Tensor {
            name: format!("{name}.int8"),
            shape: shape_i32(&if nhwc { permute(&shape, &NCHW_TO_NHWC) } else { shape.clone() }),
            dtype: DType::I8,
            data: None,
            quant: Some(Quant::per_tensor(p.scale, p.zp)),
        });
        match (src.q, src.f) {
            (Some((qt, qp)), _) if qp == p => {
                self.g.tensors.pop();
                self.vals.insert(name.to_owned(), Value { shape, nhwc, f: None, q: Some((qt, p)) });
                return Ok((qt, p));
            }
            (_, Some(ft)) => self.push(Op::Quantize, 2, vec![ft], vec![t]),
            (Some((qt, _)), None) => self.push(Op::Quantize, 2, vec![qt], vec![t]),
            (None, None) => return Err(Problem::at(&x, "value", "no tensor", "check the graph is valid")),
        }
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
        let t = self.const_tensor(&format!("{name}.{}", if nhwc { "nhwc" } else { "c" }), &shape, f32_bytes(&a.iter().copied().collect::<Vec<_>>()), DType::F32, None);
        Ok((t, onnx_shape))
    }

    // ---- nodes ---------------------------------------------------------------------------

    fn node(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        match op {
            "Conv" => self.conv(n, fusion),
            "Gemm" | "MatMul" => self.fully_connected(n, fusion),
            "BatchNormalization" => self.batch_norm(n, fusion),
            "Add" | "Sub" | "Mul" | "Div" => self.binary(n, fusion),
            "Relu" | "Clip" => self.activation(n),
            "Sigmoid" | "Tanh" | "HardSwish" => self.unary_float(n),
            "GlobalAveragePool" => self.global_average_pool(n),
            "MaxPool" | "AveragePool" => self.pool(n),
            "Flatten" | "Reshape" => self.reshape(n),
            "Softmax" => self.softmax(n),
            "Concat" => self.concat(n),
            "Identity" | "Dropout" => {
                let x = &n.input[0];
                let v = if self.dq_of.contains_key(x) && self.opts.precision == Precision::Int8 {
                    let (t, p) = self.quant_in(x)?;
                    let (shape, nhwc) = self.meta(x).unwrap_or_default();
                    Value { shape, nhwc, f: None, q: Some((t, p)) }
                } else {
                    let t = self.float_in(x)?;
                    let (shape, nhwc) = self.meta(x).unwrap_or_default();
                    Value { shape, nhwc, f: Some(t), q: None }
                };
                self.vals.insert(n.output[0].clone(), v);
                Ok(())
            }
            "QuantizeLinear" | "DequantizeLinear" => Err(Self::fail(
                n,
                "a QuantizeLinear/DequantizeLinear that is not an 8-bit per-tensor activation pair (or not in int8 export)",
                "export the int8 model with --precision int8, or the float model for fp32",
            )),
            "MatMulNBits" | "MatMulInteger" | "DynamicQuantizeLinear" | "QLinearConv" | "QLinearMatMul" | "ConvInteger" => Err(Self::fail(
                n,
                "an ONNX Runtime integer form (4-bit MatMulNBits, dynamic or QOperator int8) with no TFLite equivalent here",
                "export the float model (dynamic-int8 precision) or Tamp's static QDQ int8 instead",
            )),
            _ => Err(Self::fail(
                n,
                format!("{op} has no TFLite builtin in Tamp's exporter"),
                "export this model to ONNX Runtime or OpenVINO, or replace the op before export",
            )),
        }
    }

    /// Int8 output parameters when the op may run in int8: the export is int8, every
    /// activation input comes through a QDQ pair, and the (fused) output is quantized.
    fn int8_out(&self, inputs: &[&str], out: &str) -> Option<Qp> {
        if self.opts.precision != Precision::Int8 || !inputs.iter().all(|i| self.has_quant(i)) {
            return None;
        }
        self.out_q.get(out).copied()
    }

    fn conv(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let x = n.input[0].as_str();
        let w_name = n.input.get(1).map(String::as_str).unwrap_or("");
        let b_name = n.input.get(2).map(String::as_str).filter(|s| !s.is_empty());
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(n, format!("{}-D convolution: only 2-D (NCHW) convolutions are exported", xs.len().saturating_sub(2)), "export to ONNX Runtime"));
        }
        let wk = self.consts.get(w_name).cloned().ok_or_else(|| Self::fail(n, "the weight is not a constant", "fold the weight into an initializer"))?;
        if wk.f.ndim() != 4 {
            return Err(Self::fail(n, "weight is not 4-D", "export to ONNX Runtime"));
        }
        let ws = wk.f.shape().to_vec();
        let (m, cg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let group = usize::try_from(attr_int(n, "group", 1)).unwrap_or(1);
        let c = xs[1];
        let depthwise = group > 1 && group == c && cg == 1;
        if group != 1 && !depthwise {
            return Err(Self::fail(n, format!("grouped convolution (group {group} of {c} channels): TFLite has only regular and depthwise convolutions"), "export to ONNX Runtime, or split the groups"));
        }
        let strides = attr_ints(n, "strides");
        let dil = attr_ints(n, "dilations");
        let stride = [strides.first().copied().unwrap_or(1) as usize, strides.get(1).copied().unwrap_or(1) as usize];
        let dilation = [dil.first().copied().unwrap_or(1) as usize, dil.get(1).copied().unwrap_or(1) as usize];
        let mut pads = [0usize; 4];
        let auto_pad = attr(n, "auto_pad").and_then(|a| a.s.clone()).map(|s| String::from_utf8_lossy(&s).into_owned()).unwrap_or_default();
        for (i, p) in attr_ints(n, "pads").iter().enumerate().take(4) {
            pads[i] = usize::try_from(*p).unwrap_or(0);
        }
        if auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER" {
            for d in 0..2 {
                let (inp, k) = ([xs[2], xs[3]][d], [kh, kw][d]);
                let out = inp.div_ceil(stride[d]);
                let total = ((out - 1) * stride[d] + (k - 1) * dilation[d] + 1).saturating_sub(inp);
                let (lo, hi) = if auto_pad == "SAME_UPPER" { (total / 2, total - total / 2) } else { (total - total / 2, total / 2) };
                pads[d] = lo;
                pads[d + 2] = hi;
            }
        }
        let oh = conv_out(xs[2], kh, stride[0], dilation[0], pads[0], pads[2]).ok_or_else(|| Self::fail(n, "kernel larger than the padded input", "check the input shape"))?;
        let ow = conv_out(xs[3], kw, stride[1], dilation[1], pads[1], pads[3]).ok_or_else(|| Self::fail(n, "kernel larger than the padded input", "check the input shape"))?;

        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        // Float weights and bias, with a following BatchNormalization folded in.
        let mut wf = wk.f.clone();
        let mut bf: Vec<f32> = b_name.and_then(|b| self.consts.get(b)).map_or_else(|| vec![0.0; m], |k| k.f.iter().copied().collect());
        if bf.len() != m {
            return Err(Self::fail(n, format!("bias has {} values for {m} output channels", bf.len()), "check the model"));
        }
        if let Some(bn) = fusion.bn {
            let bn = &self.view.graph.node[bn];
            let get = |i: usize| self.consts.get(&bn.input[i]).map(|k| k.f.iter().copied().collect::<Vec<f32>>());
            let (Some(gamma), Some(beta), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
                return Err(Self::fail(n, "BatchNormalization parameters are not constants", "fold them into initializers"));
            };
            let eps = attr_float(bn, "epsilon", 1e-5);
            for o in 0..m {
                let s = gamma[o] / (var[o] + eps).sqrt();
                wf.index_axis_mut(Axis(0), o).mapv_inplace(|v| v * s);
                bf[o] = (bf[o] - mean[o]) * s + beta[o];
            }
        }
        let int8 = if fusion.bn.is_none() { self.int8_out(&[x], &fusion.out) } else { None };

        // Explicit pads TFLite's SAME does not express: a PAD in front.
        let padding = padding_for([xs[2], xs[3]], [kh, kw], stride, dilation, pads);
        let mut xin = self.nhwc_in(x, int8.is_some())?;
        let padding = match padding {
            Some(p) => p,
            None => {
                let pad_t = self.const_tensor(
                    &format!("{}.pads", node_name(n)),
                    &[4, 2],
                    i32_bytes(&[0, 0, pads[0] as i32, pads[2] as i32, pads[1] as i32, pads[3] as i32, 0, 0]),
                    DType::I32,
                    None,
                );
                let src = self.g.tensor(xin).clone();
                let padded = self.g.add(Tensor {
                    name: format!("{}.padded", node_name(n)),
                    shape: shape_i32(&[xs[0], xs[2] + pads[0] + pads[2], xs[3] + pads[1] + pads[3], c]),
                    data: None,
                    ..src
                });
                self.push(Op::Pad, if int8.is_some() { 3 } else { 1 }, vec![xin, pad_t], vec![padded]);
                xin = padded;
                Padding::Valid
            }
        };
        // OIHW → OHWI (regular) or [1, kh, kw, M] (depthwise).
        let w_perm: Vec<usize> = if depthwise { vec![1, 2, 3, 0] } else { vec![0, 2, 3, 1] };
        let w_shape = permute(&ws, &w_perm);
        let q_axis = if depthwise { 3 } else { 0 };
        let name = node_name(n);
        let out_shape = [xs[0], m, oh, ow];
        let stride_i = [stride[0] as i32, stride[1] as i32];
        let dilation_i = [dilation[0] as i32, dilation[1] as i32];
        let conv_op = |act| {
            if depthwise {
                Op::DepthwiseConv2d { padding, stride: stride_i, dilation: dilation_i, multiplier: (m / c) as i32, act }
            } else {
                Op::Conv2d { padding, stride: stride_i, dilation: dilation_i, act }
            }
        };
        match int8 {
            Some(out_p) => {
                let in_p = self.quant_in(x)?.1;
                let (wq, wscale) = int8_weights(&wk, &wf, 0);
                let wq = wq.permuted_axes(IxDyn(&w_perm)).as_standard_layout().to_owned();
                let w_t = self.const_tensor(
                    &format!("{w_name}.int8"),
                    &w_shape,
                    i8_bytes(&wq.iter().copied().collect::<Vec<_>>()),
                    DType::I8,
                    Some(Quant { scale: wscale.clone(), zero_point: vec![0; wscale.len()], axis: q_axis }),
                );
                let bscale: Vec<f32> = wscale.iter().map(|&s| (f64::from(in_p.scale) * f64::from(s)) as f32).collect();
                let bq: Vec<i32> = bf.iter().zip(&bscale).map(|(&b, &s)| (f64::from(b) / f64::from(s)).round().clamp(-2_147_483_648.0, 2_147_483_647.0) as i32).collect();
                let b_t = self.const_tensor(&format!("{name}.bias.int32"), &[m], i32_bytes(&bq), DType::I32, Some(Quant { scale: bscale, zero_point: vec![0; m], axis: 0 }));
                let out = self.out_tensor(&fusion.out, &out_shape, true, Some(out_p));
                self.push(conv_op(fusion.act), 3, vec![xin, w_t, b_t], vec![out]);
            }
            None => {
                let wf_l = wf.permuted_axes(IxDyn(&w_perm)).as_standard_layout().to_owned();
                let w_t = if self.opts.precision == Precision::DynamicInt8 && !depthwise {
                    let (wq, wscale) = symmetric_per_channel(&wf_l, q_axis as usize);
                    self.const_tensor(
                        &format!("{w_name}.int8"),
                        &w_shape,
                        i8_bytes(&wq.iter().copied().collect::<Vec<_>>()),
                        DType::I8,
                        Some(Quant { scale: wscale.clone(), zero_point: vec![0; wscale.len()], axis: q_axis }),
                    )
                } else {
                    self.const_tensor(&format!("{w_name}.ohwi"), &w_shape, f32_bytes(&wf_l.iter().copied().collect::<Vec<_>>()), DType::F32, None)
                };
                let hybrid = self.g.tensor(w_t).dtype == DType::I8;
                let b_t = self.const_tensor(&format!("{name}.bias"), &[m], f32_bytes(&bf), DType::F32, None);
                let out = self.out_tensor(&fusion.out, &out_shape, true, None);
                self.push(conv_op(fusion.act), if hybrid { 5 } else { 1 }, vec![xin, w_t, b_t], vec![out]);
            }
        }
        Ok(())
    }

    fn fully_connected(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        let a = n.input[0].as_str();
        let b_name = n.input.get(1).map(String::as_str).unwrap_or("");
        let c_name = if op == "Gemm" { n.input.get(2).map(String::as_str).filter(|s| !s.is_empty()) } else { None };
        let Some(bk) = self.consts.get(b_name).cloned() else {
            return Err(Self::fail(n, "the second operand is an activation, not a constant weight", "TFLite's FULLY_CONNECTED needs constant weights; export to ONNX Runtime"));
        };
        if bk.f.ndim() != 2 {
            return Err(Self::fail(n, format!("{}-D weight", bk.f.ndim()), "only 2-D weights become FULLY_CONNECTED"));
        }
        let (xs, _) = self.meta(a).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 2 {
            return Err(Self::fail(n, format!("{}-D input to a matrix product: the exporter writes 2-D FULLY_CONNECTED", xs.len()), "flatten to 2-D first, or export to ONNX Runtime"));
        }
        if op == "Gemm" && attr_int(n, "transA", 0) != 0 {
            return Err(Self::fail(n, "Gemm with transA", "re-export without transA"));
        }
        let trans_b = op == "Gemm" && attr_int(n, "transB", 0) != 0;
        let alpha = if op == "Gemm" { attr_float(n, "alpha", 1.0) } else { 1.0 };
        let beta = if op == "Gemm" { attr_float(n, "beta", 1.0) } else { 1.0 };
        // TFLite wants [out, in].
        let mut w = if trans_b { bk.f.clone() } else { bk.f.clone().reversed_axes().as_standard_layout().to_owned() };
        let (m, k) = (w.shape()[0], w.shape()[1]);
        if xs.last().copied() != Some(k) {
            return Err(Self::fail(n, format!("input width {:?} does not match the weight's {k}", xs.last()), "check the model"));
        }
        if alpha != 1.0 {
            w.mapv_inplace(|v| v * alpha);
        }
        let mut bias: Vec<f32> = c_name.and_then(|c| self.consts.get(c)).map_or_else(|| vec![0.0; m], |k| k.f.iter().map(|v| v * beta).collect());
        if c_name.is_some() && bias.len() == 1 {
            bias = vec![bias[0]; m];
        }
        if bias.len() != m {
            if let Some(c) = c_name
                && !self.consts.contains_key(c)
            {
                return Err(Self::fail(n, "the bias is an activation", "export to ONNX Runtime"));
            }
            return Err(Self::fail(n, format!("bias of {} values for {m} outputs", bias.len()), "check the model"));
        }
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let mut out_shape = xs.clone();
        if let Some(l) = out_shape.last_mut() {
            *l = m;
        }
        let name = node_name(n);
        let int8 = self.int8_out(&[a], &fusion.out).filter(|_| alpha == 1.0);
        match int8 {
            Some(out_p) => {
                let (xin, in_p) = self.quant_in(a)?;
                let kq = if trans_b { bk.clone() } else { Konst { f: w.clone(), i: None, q: None } };
                let (wq, wscale) = int8_weights(&kq, &w, 0);
                let w_t = self.const_tensor(
                    &format!("{b_name}.int8"),
                    &[m, k],
                    i8_bytes(&wq.iter().copied().collect::<Vec<_>>()),
                    DType::I8,
                    Some(Quant { scale: wscale.clone(), zero_point: vec![0; wscale.len()], axis: 0 }),
                );
                let bscale: Vec<f32> = wscale.iter().map(|&s| (f64::from(in_p.scale) * f64::from(s)) as f32).collect();
                let bq: Vec<i32> = bias.iter().zip(&bscale).map(|(&b, &s)| (f64::from(b) / f64::from(s)).round() as i32).collect();
                let b_t = self.const_tensor(&format!("{name}.bias.int32"), &[m], i32_bytes(&bq), DType::I32, Some(Quant { scale: bscale, zero_point: vec![0; m], axis: 0 }));
                let out = self.out_tensor(&fusion.out, &out_shape, false, Some(out_p));
                self.push(Op::FullyConnected { act: fusion.act }, 4, vec![xin, w_t, b_t], vec![out]);
            }
            None => {
                let xin = self.float_in(a)?;
                let w_t = if self.opts.precision == Precision::DynamicInt8 {
                    let (wq, wscale) = symmetric_per_channel(&w, 0);
                    self.const_tensor(
                        &format!("{b_name}.int8"),
                        &[m, k],
                        i8_bytes(&wq.iter().copied().collect::<Vec<_>>()),
                        DType::I8,
                        Some(Quant { scale: wscale.clone(), zero_point: vec![0; wscale.len()], axis: 0 }),
                    )
                } else {
                    self.const_tensor(&format!("{b_name}.oi"), &[m, k], f32_bytes(&w.iter().copied().collect::<Vec<_>>()), DType::F32, None)
                };
                let hybrid = self.g.tensor(w_t).dtype == DType::I8;
                let b_t = self.const_tensor(&format!("{name}.bias"), &[m], f32_bytes(&bias), DType::F32, None);
                let out = self.out_tensor(&fusion.out, &out_shape, false, None);
                self.push(Op::FullyConnected { act: fusion.act }, if hybrid { 3 } else { 1 }, vec![xin, w_t, b_t], vec![out]);
            }
        }
        Ok(())
    }

    fn batch_norm(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let x = n.input[0].as_str();
        let get = |i: usize| n.input.get(i).and_then(|v| self.consts.get(v)).map(|k| k.f.iter().copied().collect::<Vec<f32>>());
        let (Some(gamma), Some(beta), Some(mean), Some(var)) = (get(1), get(2), get(3), get(4)) else {
            return Err(Self::fail(n, "parameters are not constants", "fold them into initializers"));
        };
        let eps = attr_float(n, "epsilon", 1e-5);
        let scale: Vec<f32> = gamma.iter().zip(&var).map(|(g, v)| g / (v + eps).sqrt()).collect();
        let shift: Vec<f32> = beta.iter().zip(&mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let c = scale.len();
        let cshape: Vec<usize> = if nhwc { vec![c] } else { std::iter::once(c).chain(std::iter::repeat_n(1, xs.len().saturating_sub(2))).collect() };
        let xin = self.float_in(x)?;
        let name = node_name(n);
        let s_t = self.const_tensor(&format!("{name}.scale"), &cshape, f32_bytes(&scale), DType::F32, None);
        let b_t = self.const_tensor(&format!("{name}.shift"), &cshape, f32_bytes(&shift), DType::F32, None);
        let mid = self.out_tensor(&format!("{name}.scaled"), &xs, nhwc, None);
        self.push(Op::Mul { act: Act::None }, 1, vec![xin, s_t], vec![mid]);
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let out = self.out_tensor(&fusion.out, &xs, nhwc, None);
        self.push(Op::Add { act: fusion.act }, 1, vec![mid, b_t], vec![out]);
        Ok(())
    }

    fn binary(&mut self, n: &NodeProto, fusion: Option<&Fusion>) -> Res<()> {
        let op = op_of(n);
        let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
        let fusion = fusion.cloned().unwrap_or(Fusion { bn: None, act: Act::None, out: n.output[0].clone() });
        let make = |act| match op {
            "Add" => Op::Add { act },
            "Sub" => Op::Sub { act },
            "Mul" => Op::Mul { act },
            _ => Op::Div { act },
        };
        let (a_const, b_const) = (self.consts.contains_key(a), self.consts.contains_key(b));
        if a_const && b_const {
            return Err(Self::fail(n, "both operands constant but not folded", "internal"));
        }
        if !a_const && !b_const {
            let (sa, na) = self.meta(a).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
            let (sb, nb) = self.meta(b).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
            let out_shape = broadcast(&sa, &sb).ok_or_else(|| Self::fail(n, format!("shapes {sa:?} and {sb:?} do not broadcast"), "check the model"))?;
            let nhwc = out_shape.len() == 4 && (na || nb);
            if nhwc && (sa.len() != 4 || sb.len() != 4) {
                return Err(Self::fail(n, "a 4-D activation combined with a lower-rank one", "export to ONNX Runtime"));
            }
            let int8 = if matches!(op, "Add" | "Sub" | "Mul") { self.int8_out(&[a, b], &fusion.out) } else { None };
            let (ta, tb) = if nhwc { (self.nhwc_in(a, int8.is_some())?, self.nhwc_in(b, int8.is_some())?) } else if int8.is_some() { (self.quant_in(a)?.0, self.quant_in(b)?.0) } else { (self.float_in(a)?, self.float_in(b)?) };
            let out = self.out_tensor(&fusion.out, &out_shape, nhwc, int8);
            self.push(make(fusion.act), if int8.is_some() { 2 } else { 1 }, vec![ta, tb], vec![out]);
            return Ok(());
        }
        let (act_in, const_in) = if a_const { (b, a) } else { (a, b) };
        let (sx, nx) = self.meta(act_in).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let nhwc = nx && sx.len() == 4;
        let xin = self.float_in(act_in)?;
        let (ct, cshape) = self.elementwise_const(const_in, nhwc)?;
        let out_shape = broadcast(&sx, &cshape).ok_or_else(|| Self::fail(n, format!("shapes {sx:?} and {cshape:?} do not broadcast"), "check the model"))?;
        if nhwc && out_shape.len() != 4 {
            return Err(Self::fail(n, "broadcast changes the rank of a 4-D activation", "export to ONNX Runtime"));
        }
        let out = self.out_tensor(&fusion.out, &out_shape, nhwc, None);
        let ins = if a_const { vec![ct, xin] } else { vec![xin, ct] };
        self.push(make(fusion.act), 1, ins, vec![out]);
        Ok(())
    }

    fn activation(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let act = self.activation_of(n).ok_or_else(|| Self::fail(n, "Clip with bounds other than [0, 6], [-1, 1] or [0, ∞)", "export to ONNX Runtime"))?;
        let op = match act {
            Act::Relu => Op::Relu,
            Act::Relu6 => Op::Relu6,
            Act::ReluN1To1 => Op::ReluN1To1,
            Act::None => return Err(Self::fail(n, "no activation", "internal")),
        };
        let (shape, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let out_name = n.output[0].clone();
        let int8 = self.int8_out(&[x], &out_name);
        let xin = if int8.is_some() { self.quant_in(x)?.0 } else { self.float_in(x)? };
        let out = self.out_tensor(&out_name, &shape, nhwc, int8);
        self.push(op, if int8.is_some() { 2 } else { 1 }, vec![xin], vec![out]);
        Ok(())
    }

    fn unary_float(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (shape, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let xin = self.float_in(x)?;
        let out = self.out_tensor(&n.output[0], &shape, nhwc, None);
        let op = match op_of(n) {
            "Sigmoid" => Op::Logistic,
            "Tanh" => Op::Tanh,
            _ => Op::HardSwish,
        };
        self.push(op, 1, vec![xin], vec![out]);
        Ok(())
    }

    fn global_average_pool(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(n, "only 2-D pooling is exported", "export to ONNX Runtime"));
        }
        let out_name = n.output[0].clone();
        let int8 = self.int8_out(&[x], &out_name);
        let xin = self.nhwc_in(x, int8.is_some())?;
        let axes = self.i32_const(&format!("{}.axes", node_name(n)), &[1, 2]);
        let out = self.out_tensor(&out_name, &[xs[0], xs[1], 1, 1], true, int8);
        self.push(Op::Mean { keep_dims: true }, if int8.is_some() { 2 } else { 1 }, vec![xin, axes], vec![out]);
        Ok(())
    }

    fn pool(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, _) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        if xs.len() != 4 {
            return Err(Self::fail(n, "only 2-D pooling is exported", "export to ONNX Runtime"));
        }
        if n.output.len() > 1 && !n.output[1].is_empty() {
            return Err(Self::fail(n, "MaxPool with indices", "export to ONNX Runtime"));
        }
        let k = attr_ints(n, "kernel_shape");
        let s = attr_ints(n, "strides");
        let kernel = [k.first().copied().unwrap_or(1) as usize, k.get(1).copied().unwrap_or(1) as usize];
        let stride = [s.first().copied().unwrap_or(1) as usize, s.get(1).copied().unwrap_or(1) as usize];
        let mut pads = [0usize; 4];
        for (i, p) in attr_ints(n, "pads").iter().enumerate().take(4) {
            pads[i] = usize::try_from(*p).unwrap_or(0);
        }
        if attr_int(n, "ceil_mode", 0) != 0 || attr_ints(n, "dilations").iter().any(|&d| d != 1) {
            return Err(Self::fail(n, "ceil_mode or dilated pooling", "export to ONNX Runtime"));
        }
        let max = op_of(n) == "MaxPool";
        let padding = padding_for([xs[2], xs[3]], kernel, stride, [1, 1], pads)
            .ok_or_else(|| Self::fail(n, format!("pads {pads:?} are neither SAME nor VALID for this input"), "export to ONNX Runtime"))?;
        if !max && padding == Padding::Same && attr_int(n, "count_include_pad", 0) != 0 {
            return Err(Self::fail(n, "AveragePool counting padded zeros (count_include_pad)", "export to ONNX Runtime"));
        }
        let oh = conv_out(xs[2], kernel[0], stride[0], 1, pads[0], pads[2]).unwrap_or(1);
        let ow = conv_out(xs[3], kernel[1], stride[1], 1, pads[1], pads[3]).unwrap_or(1);
        let out_name = n.output[0].clone();
        // MaxPool is exact on int8 with unchanged parameters; AveragePool needs its own.
        let int8 = if max && self.opts.precision == Precision::Int8 && self.has_quant(x) { Some(None) } else { self.int8_out(&[x], &out_name).map(Some) };
        let xin = self.nhwc_in(x, int8.is_some())?;
        let q = match int8 {
            Some(Some(p)) => Some(p),
            Some(None) => Some(self.quant_in(x)?.1),
            None => None,
        };
        let out = self.out_tensor(&out_name, &[xs[0], xs[1], oh, ow], true, q);
        let (filter, stride) = ([kernel[0] as i32, kernel[1] as i32], [stride[0] as i32, stride[1] as i32]);
        let op = if max { Op::MaxPool2d { padding, stride, filter, act: Act::None } } else { Op::AveragePool2d { padding, stride, filter, act: Act::None } };
        self.push(op, if q.is_some() { 2 } else { 1 }, vec![xin], vec![out]);
        Ok(())
    }

    fn reshape(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let out_shape = if op_of(n) == "Flatten" {
            let axis = attr_int(n, "axis", 1);
            let axis = usize::try_from(if axis < 0 { axis + xs.len() as i64 } else { axis }).unwrap_or(1).min(xs.len());
            vec![xs[..axis].iter().product(), xs[axis..].iter().product()]
        } else {
            let s = n.input.get(1).and_then(|s| self.consts.get(s)).and_then(|k| k.i.clone()).ok_or_else(|| Self::fail(n, "the target shape is computed at run time", "fold shapes for a fixed input size before export"))?;
            if attr_int(n, "allowzero", 0) != 0 {
                return Err(Self::fail(n, "allowzero", "export to ONNX Runtime"));
            }
            reshape_dims(&xs, s.iter().copied()).ok_or_else(|| Self::fail(n, format!("cannot reshape {xs:?} to {:?}", s.iter().collect::<Vec<_>>()), "check the model"))?
        };
        let int8 = self.opts.precision == Precision::Int8 && self.has_quant(x);
        // Flattening NHWC [N, 1, 1, C] (or [N, H, W, 1]) is already NCHW order.
        let spatial_trivial = xs.len() == 4 && (xs[2] * xs[3] == 1 || xs[1] == 1);
        let xin = if nhwc && xs.len() == 4 && !spatial_trivial {
            self.nchw_in(x, int8)?
        } else if int8 {
            self.quant_in(x)?.0
        } else {
            self.float_in(x)?
        };
        let q = if int8 { Some(self.quant_in(x)?.1) } else { None };
        // A 4-D result is kept NCHW (consumers that need NHWC transpose it).
        let shape_t = self.i32_const(&format!("{}.shape", node_name(n)), &shape_i32(&out_shape));
        let out = self.out_tensor(&n.output[0], &out_shape, false, q);
        self.push(Op::Reshape, 1, vec![xin, shape_t], vec![out]);
        Ok(())
    }

    fn softmax(&mut self, n: &NodeProto) -> Res<()> {
        let x = n.input[0].as_str();
        let (xs, nhwc) = self.meta(x).ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let r = xs.len() as i64;
        let axis = attr_int(n, "axis", -1);
        let axis = if axis < 0 { axis + r } else { axis };
        let last_in_storage = if nhwc && xs.len() == 4 { axis == 1 } else { axis == r - 1 };
        if !last_in_storage {
            return Err(Self::fail(n, format!("softmax over axis {axis} of a rank-{r} tensor: TFLite's SOFTMAX works on the last axis"), "export to ONNX Runtime"));
        }
        let xin = self.float_in(x)?;
        let out = self.out_tensor(&n.output[0], &xs, nhwc, None);
        self.push(Op::Softmax { beta: 1.0 }, 1, vec![xin], vec![out]);
        Ok(())
    }

    fn concat(&mut self, n: &NodeProto) -> Res<()> {
        let ins: Vec<&str> = n.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        if ins.iter().any(|i| self.consts.contains_key(*i)) {
            return Err(Self::fail(n, "a constant operand", "export to ONNX Runtime"));
        }
        let metas: Vec<(Vec<usize>, bool)> = ins.iter().map(|i| self.meta(i)).collect::<Option<_>>().ok_or_else(|| Self::fail(n, "input shape unknown", "check the graph is valid"))?;
        let r = metas[0].0.len();
        let axis = attr_int(n, "axis", 1);
        let axis = usize::try_from(if axis < 0 { axis + r as i64 } else { axis }).unwrap_or(0);
        let nhwc = r == 4 && metas.iter().any(|m| m.1);
        let mut out_shape = metas[0].0.clone();
        out_shape[axis] = metas.iter().map(|m| m.0[axis]).sum();
        let mut ts = Vec::new();
        for i in &ins {
            ts.push(if nhwc { self.nhwc_in(i, false)? } else { self.float_in(i)? });
        }
        let t_axis = if nhwc { NCHW_TO_NHWC.iter().position(|&p| p == axis).unwrap_or(axis) } else { axis };
        let out = self.out_tensor(&n.output[0], &out_shape, nhwc, None);
        self.push(Op::Concatenation { axis: t_axis as i32, act: Act::None }, 1, ts, vec![out]);
        Ok(())
    }
}

/// What the converter writes into one op: a folded BN, a fused activation, the final value.
#[derive(Debug, Clone)]
struct Fusion {
    bn: Option<usize>,
    act: Act,
    out: String,
}

fn dequantize(n: &NodeProto, k: &[&Konst], ins: &[&str], graph: &tamp_onnx::proto::GraphProto) -> Option<Konst> {
    let x = k[0];
    let xi = x.i.as_ref()?;
    let scale: Vec<f32> = k.get(1)?.f.iter().copied().collect();
    let zp: Vec<i64> = k.get(2).and_then(|z| z.i.as_ref()).map_or_else(|| vec![0; scale.len()], |z| z.iter().copied().collect());
    let rank = xi.ndim() as i64;
    let axis = if scale.len() > 1 {
        let a = attr_int(n, "axis", 1);
        usize::try_from(if a < 0 { a + rank } else { a }).ok()?
    } else {
        0
    };
    let mut f = xi.mapv(|v| v as f32);
    if scale.len() == 1 {
        let (s, z) = (scale[0], zp[0] as f32);
        f.mapv_inplace(|v| (v - z) * s);
    } else {
        for (c, mut lane) in f.axis_iter_mut(Axis(axis)).enumerate() {
            let (s, z) = (scale[c], zp.get(c).copied().unwrap_or(0) as f32);
            lane.mapv_inplace(|v| (v - z) * s);
        }
    }
    let elem = graph.initializer.iter().find(|t| t.name.as_deref() == Some(ins[0])).map_or(DataType::Undefined, elem_of);
    Some(Konst { f, i: None, q: Some(QConst { q: xi.clone(), scale, zp, axis, elem }) })
}

fn reshape_dims(from: &[usize], to: impl Iterator<Item = i64>) -> Option<Vec<usize>> {
    let total: usize = from.iter().product();
    let to: Vec<i64> = to.collect();
    let mut out = Vec::with_capacity(to.len());
    let mut infer = None;
    for (i, &d) in to.iter().enumerate() {
        match d {
            0 => out.push(*from.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            d if d > 0 => out.push(usize::try_from(d).ok()?),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || total % known != 0 {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

/// Symmetric int8 per-channel quantization along `axis` (scale = max|w| / 127).
fn symmetric_per_channel(w: &ArrayD<f32>, axis: usize) -> (ArrayD<i8>, Vec<f32>) {
    let scales: Vec<f32> = w.axis_iter(Axis(axis)).map(|lane| (lane.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).max(f32::MIN_POSITIVE)).collect();
    let mut q = ArrayD::<i8>::zeros(w.raw_dim());
    for (c, (mut ql, wl)) in q.axis_iter_mut(Axis(axis)).zip(w.axis_iter(Axis(axis))).enumerate() {
        let s = scales[c];
        ql.zip_mut_with(&wl, |q, &v| *q = (v / s).round().clamp(-127.0, 127.0) as i8);
    }
    (q, scales)
}

/// The int8 weights of an int8 op in the weight's ONNX layout (output channels on `axis`):
/// Tamp's own symmetric int8 codes when the QDQ weight has them, else a fresh symmetric
/// per-channel quantization of the float view (uint8 or asymmetric weights).
fn int8_weights(k: &Konst, wf: &ArrayD<f32>, axis: usize) -> (ArrayD<i8>, Vec<f32>) {
    if let Some(q) = &k.q
        && q.elem == DataType::Int8
        && q.axis == axis
        && q.zp.iter().all(|&z| z == 0)
        && q.q.shape() == wf.shape()
    {
        let scale = if q.scale.len() == 1 { vec![q.scale[0]; wf.shape()[axis]] } else { q.scale.clone() };
        return (q.q.mapv(|v| v.clamp(-128, 127) as i8), scale);
    }
    symmetric_per_channel(wf, axis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_is_recognised_for_odd_and_even_inputs() {
        // EfficientNet's stem: 3×3 stride 2 on 224 pads (0, 1): TF's SAME.
        assert_eq!(padding_for([224, 224], [3, 3], [2, 2], [1, 1], [0, 0, 1, 1]), Some(Padding::Same));
        assert_eq!(padding_for([28, 28], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1]), Some(Padding::Same));
        assert_eq!(padding_for([28, 28], [3, 3], [1, 1], [1, 1], [0, 0, 0, 0]), Some(Padding::Valid));
        // PyTorch's symmetric (1, 1) with stride 2 on an even input is not SAME.
        assert_eq!(padding_for([28, 28], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1]), None);
    }

    #[test]
    fn reshape_dims_follows_onnx_zero_and_minus_one() {
        assert_eq!(reshape_dims(&[2, 3, 4], [0, -1].into_iter()), Some(vec![2, 12]));
        assert_eq!(reshape_dims(&[2, 3, 4], [4, 6].into_iter()), Some(vec![4, 6]));
        assert_eq!(reshape_dims(&[2, 3, 4], [5, -1].into_iter()), None);
    }

    #[test]
    fn per_channel_codes_round_trip_within_half_a_step() {
        let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5, -1.0, 0.25, 2.0, 0.0, -0.3]).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[2, 3])));
        let (q, s) = symmetric_per_channel(&w, 0);
        assert_eq!(q[[0, 1]], -127);
        assert_eq!(q[[1, 0]], 127);
        for ((c, _), (&qv, &wv)) in w.indexed_iter().map(|(i, _)| (i[0], i[1])).zip(q.iter().zip(w.iter())) {
            assert!((f32::from(qv) * s[c] - wv).abs() <= s[c] / 2.0 + 1e-7);
        }
    }
}
