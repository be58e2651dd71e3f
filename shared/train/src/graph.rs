//! An ONNX graph as a candle module: every float weight (initializer or `Constant`) becomes a
//! trainable [`Var`], every node maps to candle ops, and after training the updated weights
//! are written back into the same graph (names, architecture and opsets untouched).
//!
//! Convolution and pooling are written as shifted slices (+ one matmul for Conv), because
//! candle's CPU conv backward goes through a naive `conv_transpose2d` (~10× slower).
//!
//! Quantized forms Tamp writes are trainable too (quantization-aware training):
//! - `DequantizeLinear` of an int8/uint8 weight: the weight trains in float and is
//!   fake-quantized in the forward pass with the same scale and zero point; the write-back
//!   rounds it into the integer initializer again.
//! - `QuantizeLinear → DequantizeLinear` on activations: fake quantization with a clipped
//!   straight-through estimator (gradient 1 inside the range, 0 outside). Scales stay as
//!   calibrated, or train (LSQ style) with [`GraphOptions::learn_scales`].

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{D, DType, Device, Shape, Tensor, Var};

use crate::conv::{Im2Col, Window};
use ndarray::{ArrayD, IxDyn};
use tamp_onnx::graph::{attr, attr_float, attr_int, attr_ints, node_label};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::proto::{AttributeProto, NodeProto, TensorProto};
use tamp_onnx::tensor::{data_type, to_array};
use tamp_onnx::{GraphView, Model, TensorValue};

/// Errors building or running a graph in candle.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node {node}: {op} is not supported for training (supported: {supported}); remove the stage's `fine_tune`/`qat`, or export the model without it")]
    Unsupported { node: String, op: String, supported: String },
    #[error("node {node} ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("{0}")]
    Other(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Onnx(#[from] tamp_onnx::OnnxError),
}

pub type Result<T, E = GraphError> = std::result::Result<T, E>;

/// Every op the interpreter runs.
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "Log",
    "MatMul",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Pow",
    "QuantizeLinear",
    "Range",
    "Reciprocal",
    "ReduceL2",
    "ReduceMax",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Whether BatchNormalization uses batch statistics (and updates its running ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// How a graph is built.
#[derive(Debug, Clone, Default)]
pub struct GraphOptions {
    /// Weights are candle `Var`s (false: plain tensors, e.g. for a teacher).
    pub trainable: bool,
    /// Activation quantization scales train too (LSQ style).
    pub learn_scales: bool,
}

/// A quantized weight trained in float: `DequantizeLinear(q, scale, zp)` with `q` an
/// integer initializer.
#[derive(Debug, Clone)]
struct QuantWeight {
    scale: Tensor,
    zero: Tensor,
    /// Scale/zero point shaped to broadcast against the weight (per-channel axis).
    lo: f64,
    hi: f64,
    signed: bool,
}

/// The graph, ready to run forward (and backward through candle's autograd).
pub struct TrainGraph {
    nodes: Vec<NodeProto>,
    /// Trainable float weights by name (initializers and float `Constant` outputs).
    params: BTreeMap<String, Var>,
    /// Everything else known before the first input: integer initializers, scalars, shapes.
    consts: HashMap<String, Tensor>,
    /// BatchNormalization running statistics (updated in [`Mode::Train`]).
    running: HashMap<String, Tensor>,
    /// Integer weights behind a DequantizeLinear, trained as float.
    quant: HashMap<String, QuantWeight>,
    /// Where each param came from: a `Constant` node's output, or an initializer.
    from_constant: HashSet<String>,
    /// Constants stored as int8 (zero points say whether a QuantizeLinear is signed).
    int8: HashSet<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    device: Device,
}

fn node_err(n: &NodeProto, m: impl std::fmt::Display) -> GraphError {
    GraphError::Node { node: node_label(n), op: n.op_type.clone().unwrap_or_default(), message: m.to_string() }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// A host tensor as a candle tensor (integers as i64, booleans as u8, doubles as f32).
pub fn to_candle(v: &TensorValue, dev: &Device) -> Result<Tensor> {
    let shape: Vec<usize> = v.shape().to_vec();
    Ok(match v {
        TensorValue::F32(a) => Tensor::from_vec(a.iter().copied().collect::<Vec<f32>>(), shape, dev)?,
        TensorValue::F64(a) => Tensor::from_vec(a.iter().map(|&x| x as f32).collect::<Vec<f32>>(), shape, dev)?,
        TensorValue::I64(a) => Tensor::from_vec(a.iter().copied().collect::<Vec<i64>>(), shape, dev)?,
        TensorValue::I32(a) => Tensor::from_vec(a.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>(), shape, dev)?,
        TensorValue::I8(a) => Tensor::from_vec(a.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>(), shape, dev)?,
        TensorValue::U8(a) => Tensor::from_vec(a.iter().map(|&x| i64::from(x)).collect::<Vec<i64>>(), shape, dev)?,
        TensorValue::Bool(a) => Tensor::from_vec(a.iter().map(|&x| u8::from(x)).collect::<Vec<u8>>(), shape, dev)?,
    })
}

fn proto_to_candle(t: &TensorProto, dev: &Device) -> Result<Tensor> {
    let v = match data_type(t) {
        DataType::Float => TensorValue::F32(to_array::<f32>(t)?),
        DataType::Double => TensorValue::F64(to_array::<f64>(t)?),
        DataType::Int64 => TensorValue::I64(to_array::<i64>(t)?),
        DataType::Int32 => TensorValue::I32(to_array::<i32>(t)?),
        DataType::Int8 => TensorValue::I8(to_array::<i8>(t)?),
        DataType::Uint8 => TensorValue::U8(to_array::<u8>(t)?),
        DataType::Bool => TensorValue::Bool(to_array::<bool>(t)?),
        other => {
            return Err(GraphError::Other(format!("tensor '{}' has element type {other:?}, which training does not read", t.name.as_deref().unwrap_or("?"))));
        }
    };
    to_candle(&v, dev)
}

/// A candle f32 tensor as an ndarray.
pub fn to_nd(t: &Tensor) -> Result<ArrayD<f32>> {
    let shape = t.dims().to_vec();
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| GraphError::Other(e.to_string()))
}

fn ints(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
}

fn scalar_f(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.first().copied().unwrap_or(0.0)))
}

/// Inputs of these op slots are shapes, axes or indices: never trainable.
fn is_shape_slot(op: &str, slot: usize) -> bool {
    matches!(
        (op, slot),
        ("Reshape" | "Expand" | "Tile" | "ConstantOfShape" | "Range", _)
            | ("Slice" | "Unsqueeze" | "Squeeze" | "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceL2", 1..)
            | ("Gather", 1)
    )
}

impl TrainGraph {
    /// Builds the candle form of `model`, refusing (before any compute) a node whose op has no
    /// candle mapping.
    pub fn new(model: &Model, opts: &GraphOptions) -> Result<Self> {
        let g = model.graph();
        let dev = Device::Cpu;
        if let Some(n) = g.node.iter().find(|n| !SUPPORTED.contains(&op(n)) || n.domain.as_deref().is_some_and(|d| !d.is_empty() && d != "ai.onnx")) {
            return Err(GraphError::Unsupported { node: node_label(n), op: op(n).to_owned(), supported: SUPPORTED.join(", ") });
        }
        let view = GraphView::new(g);
        let order = view.topological_order()?;
        let nodes: Vec<NodeProto> = order.iter().map(|&i| g.node[i].clone()).collect();
        // Which values are read as shapes/axes/indices, BN statistics or quantized weights.
        let mut shape_like = HashSet::new();
        // Activation scales that train (LSQ): read by QuantizeLinear and DequantizeLinear alike.
        let mut learned_scales = HashSet::new();
        let mut bn_stats = HashSet::new();
        let mut dq_weights: HashMap<String, (String, String, i64)> = HashMap::new();
        for n in &nodes {
            for (slot, i) in n.input.iter().enumerate() {
                if is_shape_slot(op(n), slot) {
                    shape_like.insert(i.clone());
                }
            }
            if op(n) == "BatchNormalization" {
                bn_stats.extend(n.input.iter().skip(3).take(2).cloned());
            }
            if op(n) == "DequantizeLinear" {
                shape_like.extend(n.input.iter().skip(1).cloned());
                // int8/uint8 weights train; int32 biases (scale = x_scale · w_scale, computed by
                // a node) stay as PTQ wrote them.
                let weight = |q: &&String| view.initializer(q).is_some_and(|t| matches!(data_type(t), DataType::Int8 | DataType::Uint8));
                if let Some(q) = n.input.first().filter(weight) {
                    let zp = n.input.get(2).cloned().unwrap_or_default();
                    dq_weights.insert(q.clone(), (n.input.get(1).cloned().unwrap_or_default(), zp, attr_int(n, "axis", 1)));
                }
            }
            if op(n) == "QuantizeLinear" {
                shape_like.extend(n.input.iter().skip(2).cloned());
                match n.input.get(1) {
                    Some(s) if opts.learn_scales => {
                        learned_scales.insert(s.clone());
                    }
                    Some(s) => {
                        shape_like.insert(s.clone());
                    }
                    None => {}
                }
            }
        }
        let mut params = BTreeMap::new();
        let mut consts = HashMap::new();
        let mut running = HashMap::new();
        let mut from_constant = HashSet::new();
        let mut tensors: Vec<(String, &TensorProto, bool)> = g.initializer.iter().map(|t| (t.name.clone().unwrap_or_default(), t, false)).collect();
        for n in &nodes {
            if op(n) == "Constant"
                && let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref())
                && let Some(o) = n.output.first()
            {
                tensors.push((o.clone(), t, true));
            }
        }
        let mut int8 = HashSet::new();
        for (name, t, constant) in tensors {
            if data_type(t) == DataType::Int8 {
                int8.insert(name.clone());
            }
            let value = proto_to_candle(t, &dev)?;
            if bn_stats.contains(&name) {
                running.insert(name, value);
                continue;
            }
            let trainable = value.dtype() == DType::F32 && value.elem_count() > 1 && !shape_like.contains(&name);
            if trainable || learned_scales.contains(&name) {
                if constant {
                    from_constant.insert(name.clone());
                }
                params.insert(name, Var::from_tensor(&value)?);
            } else {
                consts.insert(name, value);
            }
        }
        // Integer weights behind DequantizeLinear train as float (dequantized once here).
        let mut quant = HashMap::new();
        for (q, (s, zp, axis)) in dq_weights {
            let Some(qv) = consts.get(&q).cloned() else { continue };
            let scale = consts.get(&s).cloned().ok_or_else(|| GraphError::Other(format!("DequantizeLinear of '{q}': its scale '{s}' is not a constant")))?;
            let zero = match consts.get(&zp) {
                Some(z) => z.to_dtype(DType::F32)?,
                None => scale.zeros_like()?,
            };
            let signed = g.initializer.iter().find(|t| t.name.as_deref() == Some(q.as_str())).is_some_and(|t| data_type(t) == DataType::Int8);
            let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
            let rank = qv.rank();
            let shape_for = |t: &Tensor| -> Result<Tensor> {
                if t.rank() == 0 || rank == 0 {
                    return Ok(t.clone());
                }
                let axis = if axis < 0 { (axis + rank as i64) as usize } else { axis as usize };
                let mut dims = vec![1usize; rank];
                dims[axis] = t.elem_count();
                Ok(t.reshape(dims)?)
            };
            let (scale, zero) = (shape_for(&scale)?, shape_for(&zero.to_dtype(DType::F32)?)?);
            let w = qv.to_dtype(DType::F32)?.broadcast_sub(&zero)?.broadcast_mul(&scale)?;
            consts.remove(&q);
            params.insert(q.clone(), Var::from_tensor(&w)?);
            quant.insert(q, QuantWeight { scale, zero, lo, hi, signed });
        }
        if !opts.trainable {
            // A frozen graph: the same values, not tracked by autograd.
            let frozen: Vec<(String, Tensor)> = params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
            params.clear();
            for (k, v) in frozen {
                params.insert(k, Var::from_tensor(&v)?);
            }
        }
        let inits: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let inputs = g.input.iter().filter_map(|i| i.name.clone()).filter(|n| !inits.contains(n.as_str())).collect();
        let outputs = g.output.iter().filter_map(|o| o.name.clone()).collect();
        Ok(Self { nodes, params, consts, running, quant, from_constant, int8, inputs, outputs, device: dev })
    }

    /// The trainable weights, by name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Names of weights trained through fake quantization.
    pub fn quantized_weights(&self) -> impl Iterator<Item = &str> {
        self.quant.keys().map(String::as_str)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the graph on `feeds` and returns the values named in `wanted` (graph outputs or
    /// any intermediate value).
    pub fn forward(&mut self, feeds: &HashMap<String, Tensor>, mode: Mode, wanted: &[&str]) -> Result<HashMap<String, Tensor>> {
        let mut env: HashMap<String, Tensor> = HashMap::new();
        for (k, v) in feeds {
            env.insert(k.clone(), v.clone());
        }
        // Reference counts, so intermediate values are dropped when their last reader ran.
        let nodes = std::mem::take(&mut self.nodes);
        let mut left: HashMap<&str, usize> = HashMap::new();
        for n in &nodes {
            for i in &n.input {
                *left.entry(i.as_str()).or_default() += 1;
            }
        }
        let keep: HashSet<&str> = wanted.iter().copied().collect();
        let result = (|| {
            for n in &nodes {
                if op(n) == "Constant" {
                    continue;
                }
                let ins: Vec<Option<Tensor>> =
                    n.input.iter().map(|i| if i.is_empty() { Ok(None) } else { self.value(i, &env).map(Some) }).collect::<Result<_>>()?;
                let outs = self.run_node(n, &ins, mode).map_err(|e| match e {
                    GraphError::Candle(c) => node_err(n, c),
                    other => other,
                })?;
                for (name, v) in n.output.iter().zip(outs) {
                    if !name.is_empty() {
                        env.insert(name.clone(), v);
                    }
                }
                for i in &n.input {
                    if let Some(c) = left.get_mut(i.as_str()) {
                        *c -= 1;
                        if *c == 0 && !keep.contains(i.as_str()) {
                            env.remove(i);
                        }
                    }
                }
            }
            wanted.iter().map(|w| Ok(((*w).to_owned(), self.value(w, &env)?))).collect::<Result<HashMap<_, _>>>()
        })();
        self.nodes = nodes;
        result
    }

    fn value(&self, name: &str, env: &HashMap<String, Tensor>) -> Result<Tensor> {
        if let Some(v) = env.get(name) {
            return Ok(v.clone());
        }
        if let Some(p) = self.params.get(name) {
            return match self.quant.get(name) {
                Some(q) => fake_quant(p.as_tensor(), &q.scale, &q.zero, q.lo, q.hi),
                None => Ok(p.as_tensor().clone()),
            };
        }
        if let Some(c) = self.consts.get(name).or_else(|| self.running.get(name)) {
            return Ok(c.clone());
        }
        Err(GraphError::Other(format!("value '{name}' is not computed before it is read (feed it as an input)")))
    }

    fn run_node(&mut self, n: &NodeProto, ins: &[Option<Tensor>], mode: Mode) -> Result<Vec<Tensor>> {
        let inp = |i: usize| -> Result<&Tensor> { ins.get(i).and_then(Option::as_ref).ok_or_else(|| node_err(n, format!("input {i} is missing"))) };
        let f = |name: &str, d: f32| attr_float(n, name, d);
        let i = |name: &str, d: i64| attr_int(n, name, d);
        let one = |t: Tensor| Ok(vec![t]);
        match op(n) {
            "Identity" | "Dropout" => one(inp(0)?.clone()),
            "Add" => one(inp(0)?.broadcast_add(inp(1)?)?),
            "Sub" => one(inp(0)?.broadcast_sub(inp(1)?)?),
            "Mul" => one(inp(0)?.broadcast_mul(inp(1)?)?),
            "Div" => {
                let (a, b) = (inp(0)?, inp(1)?);
                if a.dtype() == DType::I64 {
                    // Integer division (shape arithmetic) truncates.
                    let (x, y) = (ints(a)?, ints(b)?);
                    let out: Vec<i64> = if y.len() == 1 { x.iter().map(|v| v / y[0]).collect() } else { x.iter().zip(&y).map(|(v, w)| v / w).collect() };
                    return one(Tensor::from_vec(out, a.shape(), &self.device)?);
                }
                one(a.broadcast_div(b)?)
            }
            "Pow" => {
                let e = scalar_f(inp(1)?)?;
                let x = inp(0)?;
                one(if e == 2.0 {
                    x.sqr()?
                } else if e == 1.0 {
                    x.clone()
                } else {
                    x.powf(e)?
                })
            }
            "Max" => one(ins.iter().flatten().skip(1).try_fold(inp(0)?.clone(), |a, b| a.broadcast_maximum(b))?),
            "Min" => one(ins.iter().flatten().skip(1).try_fold(inp(0)?.clone(), |a, b| a.broadcast_minimum(b))?),
            "Sqrt" => one(inp(0)?.sqrt()?),
            "Exp" => one(inp(0)?.exp()?),
            "Log" => one(inp(0)?.log()?),
            "Neg" => one(inp(0)?.neg()?),
            "Abs" => one(inp(0)?.abs()?),
            "Reciprocal" => one(inp(0)?.recip()?),
            "Tanh" => one(inp(0)?.tanh()?),
            "Erf" => one(inp(0)?.erf()?),
            "Relu" => one(inp(0)?.relu()?),
            "Sigmoid" => one(candle_nn::ops::sigmoid(inp(0)?)?),
            "LeakyRelu" => {
                let x = inp(0)?;
                let a = f64::from(f("alpha", 0.01));
                one((x.relu()? - x.neg()?.relu()?.affine(a, 0.0)?)?)
            }
            "HardSigmoid" => one(inp(0)?.affine(f64::from(f("alpha", 0.2)), f64::from(f("beta", 0.5)))?.clamp(0f32, 1f32)?),
            "HardSwish" => {
                let x = inp(0)?;
                one(x.mul(&x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?)
            }
            "Gelu" => {
                let x = inp(0)?;
                one(if n.attribute.iter().any(|a| a.name.as_deref() == Some("approximate") && a.s.as_deref() == Some(b"tanh".as_slice())) {
                    x.gelu()?
                } else {
                    x.gelu_erf()?
                })
            }
            "Clip" => {
                let x = inp(0)?;
                let (lo, hi) = if ins.len() > 1 || n.attribute.iter().all(|a| a.name.as_deref() != Some("min")) {
                    let lo = ins.get(1).and_then(Option::as_ref).map(scalar_f).transpose()?.unwrap_or(f64::from(f32::MIN));
                    let hi = ins.get(2).and_then(Option::as_ref).map(scalar_f).transpose()?.unwrap_or(f64::from(f32::MAX));
                    (lo, hi)
                } else {
                    (f64::from(f("min", f32::MIN)), f64::from(f("max", f32::MAX)))
                };
                one(x.clamp(lo as f32, hi as f32)?)
            }
            "Softmax" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", -1), x.rank());
                let m = x.max_keepdim(axis)?.detach();
                let e = x.broadcast_sub(&m)?.exp()?;
                one(e.broadcast_div(&e.sum_keepdim(axis)?)?)
            }
            "MatMul" => one(matmul(inp(0)?, inp(1)?)?),
            "Gemm" => {
                let mut a = inp(0)?.clone();
                let mut b = inp(1)?.clone();
                if i("transA", 0) != 0 {
                    a = a.t()?;
                }
                if i("transB", 0) != 0 {
                    b = b.t()?;
                }
                let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
                let alpha = f64::from(f("alpha", 1.0));
                if alpha != 1.0 {
                    y = y.affine(alpha, 0.0)?;
                }
                if let Some(c) = ins.get(2).and_then(Option::as_ref) {
                    let beta = f64::from(f("beta", 1.0));
                    let c = if beta == 1.0 { c.clone() } else { c.affine(beta, 0.0)? };
                    y = y.broadcast_add(&c)?;
                }
                one(y)
            }
            "Conv" => one(self.conv(n, inp(0)?, inp(1)?, ins.get(2).and_then(Option::as_ref))?),
            "BatchNormalization" => one(self.batch_norm(n, ins, mode)?),
            "LayerNormalization" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", -1), x.rank());
                let dims: Vec<usize> = (axis..x.rank()).collect();
                let eps = f64::from(f("epsilon", 1e-5));
                let mean = x.mean_keepdim(dims.as_slice())?;
                let c = x.broadcast_sub(&mean)?;
                let var = c.sqr()?.mean_keepdim(dims.as_slice())?;
                let mut y = c.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(inp(1)?)?;
                if let Some(b) = ins.get(2).and_then(Option::as_ref) {
                    y = y.broadcast_add(b)?;
                }
                one(y)
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceL2" => {
                let x = inp(0)?;
                let axes: Vec<i64> = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let mut dims: Vec<usize> = if axes.is_empty() { (0..x.rank()).collect() } else { axes.iter().map(|&a| norm_axis(a, x.rank())).collect() };
                dims.sort_unstable();
                let y = match op(n) {
                    "ReduceMean" => x.mean_keepdim(dims.as_slice())?,
                    "ReduceSum" => x.sum_keepdim(dims.as_slice())?,
                    "ReduceL2" => x.sqr()?.sum_keepdim(dims.as_slice())?.sqrt()?,
                    _ => dims.iter().try_fold(x.clone(), |a, &d| a.max_keepdim(d))?,
                };
                one(if i("keepdims", 1) == 0 { dims.iter().rev().try_fold(y, |a, &d| a.squeeze(d))? } else { y })
            }
            "GlobalAveragePool" => one(inp(0)?.mean_keepdim((2, 3))?),
            "GlobalMaxPool" => one(inp(0)?.max_keepdim(2)?.max_keepdim(3)?),
            "AveragePool" | "MaxPool" => one(self.pool(n, inp(0)?)?),
            "Flatten" => {
                let x = inp(0)?;
                let axis = norm_axis(i("axis", 1), x.rank() + 1);
                let a: usize = x.dims()[..axis].iter().product();
                one(x.reshape((a, x.elem_count() / a.max(1)))?)
            }
            "Reshape" => {
                let x = inp(0)?;
                let spec = ints(inp(1)?)?;
                let allow_zero = i("allowzero", 0) != 0;
                let mut dims: Vec<usize> = Vec::with_capacity(spec.len());
                let mut infer = None;
                for (k, &s) in spec.iter().enumerate() {
                    match s {
                        -1 => {
                            infer = Some(k);
                            dims.push(1);
                        }
                        0 if !allow_zero => dims.push(*x.dims().get(k).ok_or_else(|| node_err(n, "0 in the shape copies a dimension the input lacks"))?),
                        s => dims.push(s as usize),
                    }
                }
                if let Some(k) = infer {
                    let known: usize = dims.iter().product();
                    dims[k] = x.elem_count() / known.max(1);
                }
                one(x.reshape(dims)?)
            }
            "Transpose" => {
                let x = inp(0)?;
                let perm: Vec<usize> = match attr_ints(n, "perm") {
                    [] => (0..x.rank()).rev().collect(),
                    p => p.iter().map(|&a| a as usize).collect(),
                };
                one(x.permute(perm)?)
            }
            "Concat" => {
                let parts: Vec<&Tensor> = ins.iter().flatten().collect();
                let axis = norm_axis(i("axis", 0), parts[0].rank());
                one(Tensor::cat(&parts, axis)?)
            }
            "Unsqueeze" => {
                let x = inp(0)?;
                let axes = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let out_rank = x.rank() + axes.len();
                let mut axes: Vec<usize> = axes.iter().map(|&a| norm_axis(a, out_rank)).collect();
                axes.sort_unstable();
                one(axes.iter().try_fold(x.clone(), |a, &d| a.unsqueeze(d))?)
            }
            "Squeeze" => {
                let x = inp(0)?;
                let axes = match ins.get(1).and_then(Option::as_ref) {
                    Some(a) => ints(a)?,
                    None => attr_ints(n, "axes").to_vec(),
                };
                let mut axes: Vec<usize> = if axes.is_empty() {
                    x.dims().iter().enumerate().filter(|(_, d)| **d == 1).map(|(k, _)| k).collect()
                } else {
                    axes.iter().map(|&a| norm_axis(a, x.rank())).collect()
                };
                axes.sort_unstable();
                one(axes.iter().rev().try_fold(x.clone(), |a, &d| a.squeeze(d))?)
            }
            "Shape" => {
                let x = inp(0)?;
                let r = x.rank() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(i("start", 0)), clampi(i("end", r)));
                let dims: Vec<i64> = x.dims()[s..e.max(s)].iter().map(|&d| d as i64).collect();
                let len = dims.len();
                one(Tensor::from_vec(dims, len, &self.device)?)
            }
            "Range" => {
                let (s, l, d) = (ints(inp(0)?)?[0], ints(inp(1)?)?[0], ints(inp(2)?)?[0]);
                let mut v = Vec::new();
                let mut x = s;
                while (d > 0 && x < l) || (d < 0 && x > l) {
                    v.push(x);
                    x += d;
                }
                let len = v.len();
                let t = Tensor::from_vec(v, len, &self.device)?;
                one(if inp(0)?.dtype() == DType::F32 { t.to_dtype(DType::F32)? } else { t })
            }
            "Cast" => {
                let to = match DataType::try_from(i("to", 1) as i32).unwrap_or(DataType::Undefined) {
                    DataType::Float | DataType::Double | DataType::Float16 => DType::F32,
                    DataType::Bool => {
                        let x = inp(0)?;
                        return one(x.ne(&x.zeros_like()?)?);
                    }
                    DataType::Int64 | DataType::Int32 | DataType::Int8 | DataType::Uint8 | DataType::Int16 => DType::I64,
                    other => return Err(node_err(n, format!("Cast to {other:?} is not supported for training"))),
                };
                one(inp(0)?.to_dtype(to)?)
            }
            "Equal" => one(inp(0)?.broadcast_eq(inp(1)?)?),
            "Less" => one(inp(0)?.broadcast_lt(inp(1)?)?),
            "Greater" => one(inp(0)?.broadcast_gt(inp(1)?)?),
            "Not" => {
                let x = inp(0)?;
                one(x.eq(&x.zeros_like()?)?)
            }
            "Where" => {
                let (c, a, b) = (inp(0)?, inp(1)?, inp(2)?);
                let s = broadcast_shape(&[c.shape(), a.shape(), b.shape()])?;
                one(c.broadcast_as(s.clone())?.contiguous()?.where_cond(&a.broadcast_as(s.clone())?.contiguous()?, &b.broadcast_as(s)?.contiguous()?)?)
            }
            "Expand" => {
                let x = inp(0)?;
                let want: Vec<usize> = ints(inp(1)?)?.iter().map(|&d| d as usize).collect();
                let s = broadcast_shape(&[x.shape(), &Shape::from(want)])?;
                one(x.broadcast_as(s)?.contiguous()?)
            }
            "ConstantOfShape" => {
                let dims: Vec<usize> = ints(inp(0)?)?.iter().map(|&d| d as usize).collect();
                let v = match attr(n, "value").and_then(|a| a.t.as_ref()) {
                    Some(t) => proto_to_candle(t, &self.device)?,
                    None => Tensor::zeros(1, DType::F32, &self.device)?,
                };
                one(v.flatten_all()?.reshape(())?.broadcast_as(dims)?.contiguous()?)
            }
            "Gather" => {
                let (x, idx) = (inp(0)?, inp(1)?);
                let axis = norm_axis(i("axis", 0), x.rank());
                let dim = x.dims()[axis] as i64;
                let raw = ints(idx)?;
                let fixed: Vec<i64> = raw.iter().map(|&v| if v < 0 { v + dim } else { v }).collect();
                if let Some(bad) = fixed.iter().find(|&&v| v < 0 || v >= dim) {
                    return Err(node_err(n, format!("index {bad} is outside an axis of {dim}")));
                }
                let ids = Tensor::from_vec(fixed.iter().map(|&v| v as u32).collect::<Vec<u32>>(), fixed.len(), &self.device)?;
                let picked = x.contiguous()?.index_select(&ids, axis)?;
                let mut dims = x.dims()[..axis].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&x.dims()[axis + 1..]);
                one(picked.reshape(dims)?)
            }
            "Slice" => {
                let x = inp(0)?;
                let (starts, ends) = (ints(inp(1)?)?, ints(inp(2)?)?);
                let axes: Vec<usize> = match ins.get(3).and_then(Option::as_ref) {
                    Some(a) => ints(a)?.iter().map(|&a| norm_axis(a, x.rank())).collect(),
                    None => (0..starts.len()).collect(),
                };
                let steps = match ins.get(4).and_then(Option::as_ref) {
                    Some(s) => ints(s)?,
                    None => vec![1; starts.len()],
                };
                let mut y = x.clone();
                for (k, &ax) in axes.iter().enumerate() {
                    let d = y.dims()[ax] as i64;
                    let step = steps[k];
                    let fix = |v: i64, lo: i64, hi: i64| (if v < 0 { v + d } else { v }).clamp(lo, hi);
                    if step == 1 {
                        let (s, e) = (fix(starts[k], 0, d), fix(ends[k], 0, d));
                        y = y.narrow(ax, s as usize, (e - s).max(0) as usize)?;
                    } else {
                        let (s, e) = if step > 0 { (fix(starts[k], 0, d), fix(ends[k], 0, d)) } else { (fix(starts[k], 0, d - 1), fix(ends[k], -1, d - 1)) };
                        let mut idx = Vec::new();
                        let mut v = s;
                        while (step > 0 && v < e) || (step < 0 && v > e) {
                            idx.push(v as u32);
                            v += step;
                        }
                        let len = idx.len();
                        y = y.contiguous()?.index_select(&Tensor::from_vec(idx, len, &self.device)?, ax)?;
                    }
                }
                one(y)
            }
            "QuantizeLinear" => {
                // Kept in float: the value of round(x/s)+zp, clipped, with a straight-through
                // gradient; the DequantizeLinear reading it undoes the affine map.
                let (x, s) = (inp(0)?, inp(1)?);
                let zp = ins.get(2).and_then(Option::as_ref);
                // The zero point's element type is the quantized type (none: uint8).
                let signed = n.input.get(2).is_some_and(|name| self.int8.contains(name));
                let (lo, hi) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
                let axis = norm_axis(i("axis", 1), x.rank().max(1));
                let (s, z) = per_axis(s, zp, x.rank(), axis)?;
                let t = x.broadcast_div(&s)?.broadcast_add(&z)?;
                one(ste_round(&t)?.clamp(lo as f32, hi as f32)?)
            }
            "DequantizeLinear" => {
                let x = inp(0)?;
                if n.input.first().is_some_and(|q| self.quant.contains_key(q)) {
                    // A trained weight, already fake-quantized when read.
                    return one(x.clone());
                }
                let axis = norm_axis(i("axis", 1), x.rank().max(1));
                let (s, z) = per_axis(inp(1)?, ins.get(2).and_then(Option::as_ref), x.rank(), axis)?;
                one(x.to_dtype(DType::F32)?.broadcast_sub(&z)?.broadcast_mul(&s)?)
            }
            other => Err(GraphError::Unsupported { node: node_label(n), op: other.to_owned(), supported: SUPPORTED.join(", ") }),
        }
    }

    fn conv(&self, n: &NodeProto, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if x.rank() != 4 || w.rank() != 4 {
            return Err(node_err(n, format!("only 2-D convolution trains here (input rank {})", x.rank())));
        }
        let (cout, cin_g, kh, kw) = w.dims4()?;
        let group = attr_int(n, "group", 1).max(1) as usize;
        let geo = Geometry::of(n, x, (kh, kw))?;
        let (nb, c, h, wd) = x.dims4()?;
        let (ho, wo) = geo.out;
        let k = kh * kw;
        let win = Window { c, h, w: wd, kh, kw, stride: geo.stride, dilation: geo.dilation, pad: (geo.pads[0], geo.pads[1]), out: geo.out };
        // [N·Ho·Wo, C·kh·kw], columns in the weight's own order.
        let col = x.contiguous()?.apply_op1(Im2Col(win))?;
        let y = if group == 1 {
            col.matmul(&w.reshape((cout, c * k))?.t()?)?
        } else if group == c && cin_g == 1 {
            // Depthwise (channel multiplier m = M / C): Σ_k patch_k · w[:, k].
            let m = cout / c;
            let col = col.reshape((nb * ho * wo, c, 1, k))?;
            col.broadcast_mul(&w.reshape((1, c, m, k))?)?.sum(3)?.reshape((nb * ho * wo, cout))?
        } else {
            let (gin, gout) = (c / group, cout / group);
            let mut outs = Vec::with_capacity(group);
            for gi in 0..group {
                let wg = w.narrow(0, gi * gout, gout)?.reshape((gout, gin * k))?;
                outs.push(col.narrow(1, gi * gin * k, gin * k)?.matmul(&wg.t()?)?);
            }
            Tensor::cat(&outs, 1)?
        };
        let y = y.reshape((nb, ho, wo, cout))?.permute((0, 3, 1, 2))?.contiguous()?;
        Ok(match b {
            Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?,
            None => y,
        })
    }

    fn pool(&self, n: &NodeProto, x: &Tensor) -> Result<Tensor> {
        let k = attr_ints(n, "kernel_shape");
        if x.rank() != 4 || k.len() != 2 {
            return Err(node_err(n, "only 2-D pooling trains here"));
        }
        let geo = Geometry::of(n, x, (k[0] as usize, k[1] as usize))?;
        if op(n) == "MaxPool" {
            let cols = patches(x, &geo, f64::from(f32::MIN))?;
            return Ok(cols.iter().skip(1).try_fold(cols[0].clone(), |a, b| a.maximum(b))?);
        }
        let cols = patches(x, &geo, 0.0)?;
        let sum = cols.iter().skip(1).try_fold(cols[0].clone(), |a, b| a.add(b))?;
        let padded = geo.pads.iter().any(|&p| p > 0);
        if !padded || attr_int(n, "count_include_pad", 0) != 0 {
            return Ok(sum.affine(1.0 / cols.len() as f64, 0.0)?);
        }
        // Divide by the number of real (unpadded) positions under each window.
        let ones = Tensor::ones((1, 1, x.dim(2)?, x.dim(3)?), DType::F32, x.device())?;
        let counts = patches(&ones, &geo, 0.0)?;
        let count = counts.iter().skip(1).try_fold(counts[0].clone(), |a, b| a.add(b))?;
        Ok(sum.broadcast_div(&count)?)
    }

    fn batch_norm(&mut self, n: &NodeProto, ins: &[Option<Tensor>], mode: Mode) -> Result<Tensor> {
        let get = |k: usize| ins.get(k).and_then(Option::as_ref).ok_or_else(|| node_err(n, format!("input {k} is missing")));
        let (x, gamma, beta) = (get(0)?, get(1)?, get(2)?);
        let eps = f64::from(attr_float(n, "epsilon", 1e-5));
        let x = x.contiguous()?;
        let running = match mode {
            Mode::Train => {
                // Running statistics move toward the batch's (unbiased variance, as PyTorch).
                let (mean, var) = crate::bn::batch_stats(&x.flatten_all()?.to_vec1::<f32>()?, x.dims());
                let momentum = f64::from(attr_float(n, "momentum", 0.9));
                let count = (x.elem_count() / x.dim(1)?.max(1)) as f64;
                let unbiased = count / (count - 1.0).max(1.0);
                for (slot, batch, k) in [(3usize, &mean, 1.0), (4, &var, unbiased)] {
                    let name = &n.input[slot];
                    if let Some(r) = self.running.get(name) {
                        let old = r.flatten_all()?.to_vec1::<f32>()?;
                        let new: Vec<f32> = old.iter().zip(batch).map(|(&o, &b)| (f64::from(o) * momentum + b * k * (1.0 - momentum)) as f32).collect();
                        self.running.insert(name.clone(), Tensor::from_vec(new, r.shape(), &self.device)?);
                    }
                }
                None
            }
            Mode::Eval => Some((get(3)?.flatten_all()?.to_vec1::<f32>()?, get(4)?.flatten_all()?.to_vec1::<f32>()?)),
        };
        Ok(x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, crate::bn::BatchNorm { eps, running })?)
    }

    /// `model` with every trained weight, running statistic and quantized weight written
    /// back; nothing else changes.
    pub fn write_back(&self, model: &Model) -> Result<Model> {
        let mut updated: HashMap<String, TensorProto> = HashMap::new();
        for (name, var) in &self.params {
            let t = var.as_tensor();
            let proto = match self.quant.get(name) {
                Some(q) => {
                    let qv = t.broadcast_div(&q.scale)?.round()?.broadcast_add(&q.zero)?.clamp(q.lo as f32, q.hi as f32)?;
                    let vals = qv.flatten_all()?.to_vec1::<f32>()?;
                    let shape = IxDyn(t.dims());
                    if q.signed {
                        tamp_onnx::tensor::from_array(
                            name,
                            &ArrayD::from_shape_vec(shape, vals.iter().map(|&v| v as i8).collect()).map_err(|e| GraphError::Other(e.to_string()))?,
                        )
                    } else {
                        tamp_onnx::tensor::from_array(
                            name,
                            &ArrayD::from_shape_vec(shape, vals.iter().map(|&v| v as u8).collect()).map_err(|e| GraphError::Other(e.to_string()))?,
                        )
                    }
                }
                None => tamp_onnx::tensor::from_array(name, &to_nd(t)?),
            };
            updated.insert(name.clone(), proto);
        }
        for (name, t) in &self.running {
            updated.insert(name.clone(), tamp_onnx::tensor::from_array(name, &to_nd(t)?));
        }
        let mut proto = model.proto.clone();
        let g = proto.graph.get_or_insert_with(Default::default);
        for init in &mut g.initializer {
            if let Some(new) = init.name.as_ref().and_then(|n| updated.get(n)) {
                // Same name, dims and element type; only the values change.
                init.raw_data = new.raw_data.clone();
                init.float_data.clear();
                init.int32_data.clear();
                init.data_location = None;
                init.external_data.clear();
            }
        }
        for node in &mut g.node {
            if node.op_type.as_deref() != Some("Constant") {
                continue;
            }
            let Some(out) = node.output.first().filter(|o| self.from_constant.contains(*o)).cloned() else { continue };
            if let Some(new) = updated.get(&out)
                && let Some(a) = node.attribute.iter_mut().find(|a: &&mut AttributeProto| a.name.as_deref() == Some("value"))
                && let Some(t) = a.t.as_mut()
            {
                t.raw_data = new.raw_data.clone();
                t.float_data.clear();
            }
        }
        Ok(Model::new(proto))
    }
}

/// Round with a straight-through gradient.
fn ste_round(t: &Tensor) -> Result<Tensor> {
    let r = t.round()?;
    Ok((t + (r - t)?.detach())?)
}

/// Fake quantization of a weight: `(clamp(round(w/s) + z) - z) · s`, straight-through.
fn fake_quant(w: &Tensor, scale: &Tensor, zero: &Tensor, lo: f64, hi: f64) -> Result<Tensor> {
    let q = ste_round(&w.broadcast_div(scale)?.broadcast_add(zero)?)?.clamp(lo as f32, hi as f32)?;
    Ok(q.broadcast_sub(zero)?.broadcast_mul(scale)?)
}

fn per_axis(s: &Tensor, zp: Option<&Tensor>, rank: usize, axis: usize) -> Result<(Tensor, Tensor)> {
    let s = s.to_dtype(DType::F32)?;
    let z = match zp {
        Some(z) => z.to_dtype(DType::F32)?,
        None => s.zeros_like()?,
    };
    if s.rank() == 0 || s.elem_count() == 1 {
        return Ok((s.flatten_all()?.reshape(())?, z.flatten_all()?.reshape(())?));
    }
    let mut dims = vec![1usize; rank];
    dims[axis] = s.elem_count();
    Ok((s.reshape(dims.clone())?, z.reshape(dims)?))
}

fn norm_axis(a: i64, rank: usize) -> usize {
    if a < 0 { (a + rank as i64).max(0) as usize } else { a as usize }
}

fn broadcast_shape(shapes: &[&Shape]) -> Result<Shape> {
    let mut s = shapes[0].clone();
    for o in &shapes[1..] {
        s = s.broadcast_shape_binary_op(o, "broadcast")?;
    }
    Ok(s)
}

/// MatMul with ONNX broadcasting; a 2-D right side (weights) is one flat matmul.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = if a.rank() == 1 { a.unsqueeze(0)? } else { a.clone() };
    if b.rank() == 2 && a.rank() >= 2 {
        let dims = a.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = a.contiguous()?.reshape((rows, k))?.matmul(&b.contiguous()?)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(b.dim(1)?);
        return Ok(y.reshape(out)?);
    }
    Ok(a.contiguous()?.broadcast_matmul(&b.contiguous()?)?)
}

/// Pads, strides, dilations and the output size of a 2-D window op.
struct Geometry {
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    /// top, left, bottom, right
    pads: [usize; 4],
    out: (usize, usize),
}

impl Geometry {
    fn of(n: &NodeProto, x: &Tensor, kernel: (usize, usize)) -> Result<Self> {
        let (_, _, h, w) = x.dims4()?;
        let two = |name: &str| -> (usize, usize) {
            match attr_ints(n, name) {
                [a, b] => (*a as usize, *b as usize),
                _ => (1, 1),
            }
        };
        let (stride, dilation) = (two("strides"), two("dilations"));
        let ek = ((kernel.0 - 1) * dilation.0 + 1, (kernel.1 - 1) * dilation.1 + 1);
        let auto = attr(n, "auto_pad").and_then(|a| a.s.as_deref()).map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
        let pads = match auto.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let total = |size: usize, s: usize, k: usize| (size.div_ceil(s) - 1) * s + k - size.min((size.div_ceil(s) - 1) * s + k);
                let (th, tw) = (total(h, stride.0, ek.0), total(w, stride.1, ek.1));
                if auto == "SAME_UPPER" { [th / 2, tw / 2, th - th / 2, tw - tw / 2] } else { [th - th / 2, tw - tw / 2, th / 2, tw / 2] }
            }
            "VALID" => [0; 4],
            _ => match attr_ints(n, "pads") {
                [a, b, c, d] => [*a as usize, *b as usize, *c as usize, *d as usize],
                _ => [0; 4],
            },
        };
        if attr_int(n, "ceil_mode", 0) != 0 {
            return Err(node_err(n, "ceil_mode pooling does not train here"));
        }
        let hp = h + pads[0] + pads[2];
        let wp = w + pads[1] + pads[3];
        if hp < ek.0 || wp < ek.1 {
            return Err(node_err(n, "the window is larger than the padded input"));
        }
        let out = ((hp - ek.0) / stride.0 + 1, (wp - ek.1) / stride.1 + 1);
        Ok(Self { kernel, stride, dilation, pads, out })
    }
}

/// The input under each window position, as kh·kw tensors [N, C, Ho, Wo] (row-major over
/// the kernel). Strided picks are reshape + narrow (cheap in both directions).
fn patches(x: &Tensor, g: &Geometry, pad_value: f64) -> Result<Vec<Tensor>> {
    let (n, c, h, w) = x.dims4()?;
    let (s0, s1) = g.stride;
    // Extra bottom/right rows so every strided reshape has whole strides.
    let extra = (s0.saturating_sub(1), s1.saturating_sub(1));
    let pad = |t: Tensor, dim: usize, lo: usize, hi: usize| -> candle_core::Result<Tensor> {
        if lo == 0 && hi == 0 {
            return Ok(t);
        }
        if pad_value == 0.0 {
            return t.pad_with_zeros(dim, lo, hi);
        }
        let mut parts = Vec::new();
        let mut dims = t.dims().to_vec();
        if lo > 0 {
            dims[dim] = lo;
            parts.push(Tensor::full(pad_value as f32, dims.clone(), t.device())?);
        }
        parts.push(t.clone());
        if hi > 0 {
            dims[dim] = hi;
            parts.push(Tensor::full(pad_value as f32, dims, t.device())?);
        }
        Tensor::cat(&parts, dim)
    };
    let xp = pad(x.clone(), 2, g.pads[0], g.pads[2] + extra.0)?;
    let xp = pad(xp, 3, g.pads[1], g.pads[3] + extra.1)?;
    let (ho, wo) = g.out;
    let _ = (h, w);
    let mut out = Vec::with_capacity(g.kernel.0 * g.kernel.1);
    for dy in 0..g.kernel.0 {
        for dx in 0..g.kernel.1 {
            let mut t = xp.narrow(2, dy * g.dilation.0, ho * s0)?.narrow(3, dx * g.dilation.1, wo * s1)?;
            if s0 > 1 {
                t = t.reshape((n, c, ho, s0, wo * s1))?.narrow(3, 0, 1)?.reshape((n, c, ho, wo * s1))?;
            }
            if s1 > 1 {
                t = t.reshape((n, c, ho, wo, s1))?.narrow(4, 0, 1)?.reshape((n, c, ho, wo))?;
            }
            out.push(t);
        }
    }
    Ok(out)
}

/// Names of the graph's float outputs.
pub fn float_outputs(model: &Model) -> Vec<String> {
    let types = tamp_onnx::types::elem_types(model.graph());
    model.graph().output.iter().filter_map(|o| o.name.clone()).filter(|n| types.get(n).is_none_or(|t| *t == DataType::Float)).collect()
}

/// The argmax along the last axis (for accuracy).
pub fn argmax(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
