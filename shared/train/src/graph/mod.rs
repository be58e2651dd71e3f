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

use candle_core::{D, DType, Device, Tensor, Var};

mod ops;

use ndarray::{ArrayD, IxDyn};
use ops::fake_quant;
use tamp_onnx::graph::{attr, attr_int, node_label};
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
    "MatMulNBits",
    "Max",
    "MaxPool",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Pad",
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
    /// Float weights that Tamp's 4-bit pass would quantize are read fake-quantized to exactly
    /// its codes (4-bit QAT with float latent weights): Conv weights symmetric int4 per output
    /// channel, MatMul/Gemm weights asymmetric uint4 in blocks along K.
    pub fake_quant_4bit: Option<FourBit>,
    /// Only these weights train; every other one is a constant (e.g. a frozen backbone under
    /// new heads). `None`: all of them.
    pub train_only: Option<HashSet<String>>,
}

/// Which weights the 4-bit pass quantizes, and how (mirrors `tamp_engine`'s `QuantizeConv4`
/// and `QuantizeNBits` defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FourBit {
    pub conv_min_elements: usize,
    pub matmul_min_elements: usize,
    pub block: usize,
}

impl Default for FourBit {
    fn default() -> Self {
        Self { conv_min_elements: 256, matmul_min_elements: 4096, block: 32 }
    }
}

/// How a float weight is fake-quantized when read ([`GraphOptions::fake_quant_4bit`]).
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Symmetric, one scale (max |w| / `div`) per slice of axis 0, codes in `[lo, hi]`: int4
    /// Conv weights (`/7`, `[-8, 7]`), int8 embedding rows (`/127`, `[-127, 127]`).
    Symmetric { div: f32, lo: f64, hi: f64 },
    /// Asymmetric uint4 per block of `block` along K; `k_first`: the weight is [K, N].
    Uint4Blocks { block: usize, k_first: bool },
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
    /// The integer type written back.
    elem: DataType,
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
    /// Float weights read through a 4-bit fake quantizer.
    hooks: HashMap<String, Hook>,
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
        DataType::Int4 => {
            let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
            let raw = t
                .raw_data
                .as_deref()
                .filter(|r| r.len() * 2 >= n)
                .ok_or_else(|| GraphError::Other(format!("int4 tensor '{}' has no packed raw data of {n} values", t.name.as_deref().unwrap_or("?"))))?;
            let codes = tamp_onnx::tensor::unpack_int4(raw, n);
            let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            TensorValue::I8(ArrayD::from_shape_vec(IxDyn(&shape), codes).map_err(|e| GraphError::Other(e.to_string()))?)
        }
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

/// Inputs these op slots read on the host (shapes, axes, indices, scalar exponents and
/// bounds): on a GPU they stay there, so reading them never waits for the device.
fn host_slot(op: &str, slot: usize) -> bool {
    is_shape_slot(op, slot) || matches!((op, slot), ("Pow", 1) | ("Clip", 1 | 2) | ("Split" | "Pad" | "TopK", 1..))
}

/// Where a value is made on a GPU graph: integers (ids, masks, shapes) and scalars on the
/// host, where shape arithmetic and index checks read them without a device round trip;
/// every other tensor on the device.
pub(super) fn home(t: &Tensor, dev: &Device) -> Result<Tensor> {
    let host = !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) || t.elem_count() <= 1;
    Ok(if host { t.to_device(&Device::Cpu)? } else { t.to_device(dev)? })
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
        let dev = crate::device::current();
        // The one contrib op read is the `MatMulNBits` Tamp's 4-bit pass writes.
        let foreign = |n: &NodeProto| n.domain.as_deref().is_some_and(|d| !d.is_empty() && d != "ai.onnx" && !(d == "com.microsoft" && op(n) == "MatMulNBits"));
        if let Some(n) = g.node.iter().find(|n| !SUPPORTED.contains(&op(n)) || foreign(n)) {
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
                // int8/uint8/int4 weights train; int32 biases (scale = x_scale · w_scale, computed by
                // a node) stay as PTQ wrote them.
                let weight = |q: &&String| view.initializer(q).is_some_and(|t| matches!(data_type(t), DataType::Int8 | DataType::Uint8 | DataType::Int4));
                if let Some(q) = n.input.first().filter(weight) {
                    let zp = n.input.get(2).cloned().unwrap_or_default();
                    dq_weights.insert(q.clone(), (n.input.get(1).cloned().unwrap_or_default(), zp, attr_int(n, "axis", 1)));
                }
            }
            if op(n) == "MatMulNBits" {
                // Packed weights, block scales and zero points: the weights train (below).
                shape_like.extend(n.input.iter().skip(1).take(3).cloned());
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
            let value = proto_to_candle(t, &Device::Cpu)?;
            let value = if bn_stats.contains(&name) { value.to_device(&dev)? } else { home(&value, &dev)? };
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
            let elem = g.initializer.iter().find(|t| t.name.as_deref() == Some(q.as_str())).map_or(DataType::Uint8, data_type);
            let (lo, hi) = match elem {
                DataType::Int8 => (-128.0, 127.0),
                DataType::Int4 => (-8.0, 7.0),
                _ => (0.0, 255.0),
            };
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
            // Integer codes and scalar scales were made on the host (`home`); the weight and
            // its quantizer live where training runs.
            let (scale, zero) = (shape_for(&scale.to_device(&dev)?)?, shape_for(&zero.to_dtype(DType::F32)?.to_device(&dev)?)?);
            let w = qv.to_dtype(DType::F32)?.to_device(&dev)?.broadcast_sub(&zero)?.broadcast_mul(&scale)?;
            consts.remove(&q);
            params.insert(q.clone(), Var::from_tensor(&w)?);
            quant.insert(q, QuantWeight { scale, zero, lo, hi, elem });
        }
        for n in nodes.iter().filter(|n| op(n) == "MatMulNBits") {
            let (b, w) = nbits_weight(n, &consts)?;
            let b = QuantWeight { scale: b.scale.to_device(&dev)?, zero: b.zero.to_device(&dev)?, ..b };
            let name = n.input[1].clone();
            consts.remove(&name);
            params.insert(name.clone(), Var::from_tensor(&w.to_device(&dev)?)?);
            quant.insert(name, b);
        }
        if !opts.trainable {
            // A frozen graph: the same values, not tracked by autograd.
            let frozen: Vec<(String, Tensor)> = params.iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
            params.clear();
            for (k, v) in frozen {
                params.insert(k, Var::from_tensor(&v)?);
            }
        }
        if let Some(only) = &opts.train_only {
            // Frozen weights are constants: no gradient is computed for them, and the
            // optimizer never sees them.
            let frozen: Vec<String> = params.keys().filter(|k| !only.contains(*k)).cloned().collect();
            for k in frozen {
                if let Some(v) = params.remove(&k) {
                    consts.insert(k, v.as_tensor().detach());
                }
            }
        }
        let hooks = match opts.fake_quant_4bit {
            Some(fb) => four_bit_hooks(&nodes, &params, &consts, fb),
            None => HashMap::new(),
        };
        let inits: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let inputs = g.input.iter().filter_map(|i| i.name.clone()).filter(|n| !inits.contains(n.as_str())).collect();
        let outputs = g.output.iter().filter_map(|o| o.name.clone()).collect();
        Ok(Self { nodes, params, consts, running, quant, hooks, from_constant, int8, inputs, outputs, device: dev })
    }

    /// The trainable weights, by name.
    pub fn params(&self) -> &BTreeMap<String, Var> {
        &self.params
    }

    /// Names of weights trained through fake quantization (quantized in the graph, or float
    /// weights read through the 4-bit quantizer).
    pub fn quantized_weights(&self) -> impl Iterator<Item = &str> {
        self.quant.keys().chain(self.hooks.keys()).map(String::as_str)
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
                let ins = self.placed(n, ins)?;
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

    /// On a GPU: a node with an input on the device runs there (inputs it reads on the host
    /// stay there); one without runs on the host (shape arithmetic). No-op on the CPU.
    fn placed(&self, n: &NodeProto, ins: Vec<Option<Tensor>>) -> Result<Vec<Option<Tensor>>> {
        if self.device.is_cpu() {
            return Ok(ins);
        }
        let o = op(n);
        let on_device = ins.iter().enumerate().any(|(k, t)| t.as_ref().is_some_and(|t| !t.device().is_cpu() && !host_slot(o, k)));
        ins.into_iter()
            .enumerate()
            .map(|(k, t)| {
                Ok(match t {
                    Some(t) if on_device && t.device().is_cpu() && !host_slot(o, k) => Some(t.to_device(&self.device)?),
                    Some(t) if !on_device && !t.device().is_cpu() && !host_slot(o, k) => Some(t.to_device(&Device::Cpu)?),
                    other => other,
                })
            })
            .collect()
    }

    fn value(&self, name: &str, env: &HashMap<String, Tensor>) -> Result<Tensor> {
        if let Some(v) = env.get(name) {
            return Ok(v.clone());
        }
        if let Some(p) = self.params.get(name) {
            if let Some(q) = self.quant.get(name) {
                return fake_quant(p.as_tensor(), &q.scale, &q.zero, q.lo, q.hi);
            }
            return match self.hooks.get(name) {
                Some(h) => hooked(p.as_tensor(), *h),
                None => Ok(p.as_tensor().clone()),
            };
        }
        if let Some(c) = self.consts.get(name).or_else(|| self.running.get(name)) {
            return Ok(c.clone());
        }
        Err(GraphError::Other(format!("value '{name}' is not computed before it is read (feed it as an input)")))
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
                    fn shaped<T>(shape: &IxDyn, v: Vec<T>) -> Result<ArrayD<T>> {
                        ArrayD::from_shape_vec(shape.clone(), v).map_err(|e| GraphError::Other(e.to_string()))
                    }
                    match q.elem {
                        DataType::Int8 => tamp_onnx::tensor::from_array(name, &shaped(&shape, vals.iter().map(|&v| v as i8).collect())?),
                        DataType::Int4 => TensorProto {
                            name: Some(name.clone()),
                            dims: t.dims().iter().map(|&d| d as i64).collect(),
                            data_type: Some(DataType::Int4 as i32),
                            raw_data: Some(tamp_onnx::tensor::pack_int4(&vals.iter().map(|&v| v as i8).collect::<Vec<_>>())),
                            ..Default::default()
                        },
                        DataType::Uint4 => {
                            // MatMulNBits' layout: [N, blocks, block / 2] bytes, low nibble first.
                            let d = t.dims();
                            let packed = tamp_onnx::tensor::pack_int4(&vals.iter().map(|&v| v as i8).collect::<Vec<_>>());
                            tamp_onnx::tensor::from_array(name, &shaped(&IxDyn(&[d[0], d[1], d[2] / 2]), packed)?)
                        }
                        _ => tamp_onnx::tensor::from_array(name, &shaped(&shape, vals.iter().map(|&v| v as u8).collect())?),
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

/// A `MatMulNBits` weight as float `[N, blocks, block]` (what the trained param holds) and its
/// block scales and zero points; written back as uint4 codes in the same packing.
fn nbits_weight(n: &NodeProto, consts: &HashMap<String, Tensor>) -> Result<(QuantWeight, Tensor)> {
    let get = |slot: usize| n.input.get(slot).filter(|s| !s.is_empty()).and_then(|s| consts.get(s));
    let (Some(b), Some(scales)) = (get(1), get(2)) else {
        return Err(node_err(n, "the packed weights and scales must be initializers"));
    };
    if attr_int(n, "bits", 4) != 4 || n.input.get(4).is_some_and(|g| !g.is_empty()) {
        return Err(node_err(n, "only 4-bit MatMulNBits without g_idx trains"));
    }
    let (cols, blocks, half) = b.dims3()?;
    let block = half * 2;
    let bytes: Vec<u8> = ints(b)?.iter().map(|&v| v as u8).collect();
    let codes: Vec<f32> = bytes.iter().flat_map(|&v| [f32::from(v & 0x0f), f32::from(v >> 4)]).collect();
    let q = Tensor::from_vec(codes, (cols, blocks, block), b.device())?;
    let scale = scales.to_dtype(DType::F32)?.reshape((cols, blocks, 1))?;
    let zero = match get(3) {
        Some(z) if z.dtype() != DType::F32 => {
            // Packed like the weights: ⌈blocks / 2⌉ bytes per column.
            let zb: Vec<u8> = ints(z)?.iter().map(|&v| v as u8).collect();
            let per = blocks.div_ceil(2);
            let zs: Vec<f32> = (0..cols * blocks)
                .map(|i| {
                    let (c, k) = (i / blocks, i % blocks);
                    let byte = zb[c * per + k / 2];
                    f32::from(if k.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 })
                })
                .collect();
            Tensor::from_vec(zs, (cols, blocks, 1), b.device())?
        }
        Some(_) => return Err(node_err(n, "float zero points do not train")),
        None => Tensor::full(8f32, (cols, blocks, 1), b.device())?,
    };
    let w = q.broadcast_sub(&zero)?.broadcast_mul(&scale)?;
    Ok((QuantWeight { scale, zero, lo: 0.0, hi: 15.0, elem: DataType::Uint4 }, w))
}

/// The float weights Tamp's 4-bit passes would quantize: Conv weights (rank ≥ 3) of at least
/// `conv_min_elements`; MatMul weights (2-D, activation on the left) and plain Gemm weights
/// (no transA, alpha = beta = 1) of at least `matmul_min_elements`.
fn four_bit_hooks(nodes: &[NodeProto], params: &BTreeMap<String, Var>, consts: &HashMap<String, Tensor>, fb: FourBit) -> HashMap<String, Hook> {
    let mut hooks = HashMap::new();
    for n in nodes {
        let Some(w) = n.input.get(1).filter(|w| params.contains_key(*w)) else { continue };
        let dims = params[w].dims();
        let count: usize = dims.iter().product();
        let activation_left = n.input.first().is_some_and(|x| !params.contains_key(x) && !consts.contains_key(x));
        let hook = match op(n) {
            "Conv" if dims.len() >= 3 && count >= fb.conv_min_elements => Hook::Symmetric { div: 7.0, lo: -8.0, hi: 7.0 },
            "MatMul" if dims.len() == 2 && count >= fb.matmul_min_elements && activation_left => Hook::Uint4Blocks { block: fb.block, k_first: true },
            "Gemm"
                if dims.len() == 2
                    && count >= fb.matmul_min_elements
                    && activation_left
                    && attr_int(n, "transA", 0) == 0
                    && tamp_onnx::graph::attr_float(n, "alpha", 1.0) == 1.0
                    && tamp_onnx::graph::attr_float(n, "beta", 1.0) == 1.0 =>
            {
                Hook::Uint4Blocks { block: fb.block, k_first: attr_int(n, "transB", 0) == 0 }
            }
            _ => continue,
        };
        hooks.insert(w.clone(), hook);
    }
    // The 4-bit pass keeps embedding tables in int8, one scale per row (as dynamic int8 does).
    for n in nodes.iter().filter(|n| op(n) == "Gather" && attr_int(n, "axis", 0) == 0) {
        let Some(t) = n.input.first().filter(|t| params.get(*t).is_some_and(|v| v.rank() == 2 && v.elem_count() >= fb.matmul_min_elements)) else { continue };
        hooks.insert(t.clone(), Hook::Symmetric { div: 127.0, lo: -127.0, hi: 127.0 });
    }
    hooks
}

/// `w` through the 4-bit quantizer `h` (scales from the current weights, not tracked; the
/// rounding passes gradients straight through).
fn hooked(w: &Tensor, h: Hook) -> Result<Tensor> {
    let wd = w.detach();
    match h {
        Hook::Symmetric { div, lo, hi } => {
            let out = w.dim(0)?;
            let amax = wd.abs()?.reshape((out, ()))?.max_keepdim(1)?;
            // Divided, not multiplied by 1/div: the same f32 the export computes.
            let scale = amax.broadcast_div(&Tensor::new(div, w.device())?)?;
            // An all-zero channel gets scale 1 (its codes are 0 either way).
            let scale = scale.eq(0.0)?.where_cond(&scale.ones_like()?, &scale)?;
            let mut shape = vec![1usize; w.rank()];
            shape[0] = out;
            let scale = scale.reshape(shape)?;
            fake_quant(w, &scale, &scale.zeros_like()?, lo, hi)
        }
        Hook::Uint4Blocks { block, k_first } => {
            // As [N, K], zero-padded to whole blocks.
            let wt = if k_first { w.t()? } else { w.clone() };
            let (cols, k) = wt.dims2()?;
            let blocks = k.div_ceil(block);
            let padded = if blocks * block > k { Tensor::cat(&[&wt, &Tensor::zeros((cols, blocks * block - k), DType::F32, w.device())?], 1)? } else { wt };
            let x = padded.reshape((cols, blocks, block))?;
            let xd = x.detach();
            let lo = xd.min_keepdim(2)?.minimum(0.0)?;
            let hi = xd.max_keepdim(2)?.maximum(0.0)?;
            let range = (&hi - &lo)?;
            let flat = range.eq(0.0)?;
            let scale = flat.where_cond(&range.ones_like()?, &range.broadcast_div(&Tensor::new(15f32, w.device())?)?)?;
            let zero = lo.neg()?.broadcast_div(&scale)?.round()?.clamp(0f32, 15f32)?;
            let q = fake_quant(&x, &scale, &zero, 0.0, 15.0)?;
            let back = q.reshape((cols, blocks * block))?.narrow(1, 0, k)?;
            Ok(if k_first { back.t()? } else { back })
        }
    }
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
