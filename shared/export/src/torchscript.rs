//! ONNX → TorchScript (`.pt`) without PyTorch: the archive `torch.jit.load` reads — a zip
//! with the module's TorchScript source (`code/__torch__.py`, one `forward` of `torch.*`
//! calls in the ONNX graph's order), its state (`data.pkl`, a protocol-2 pickle of the
//! module object whose tensors point at raw storages under `data/`), `constants.pkl` and the
//! format `version`. Weights become buffers; the graph's float ops map one to one onto ATen
//! ops, so outputs match ONNX Runtime's to float rounding. Int8 QDQ graphs are refused
//! (TorchScript's quantized ops need packed weights from PyTorch itself).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;

use tamp_onnx::graph::{attr, attr_float, attr_int, attr_ints};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::TensorValue;
use tamp_onnx::{GraphView, Model};

use crate::Problem;

/// The TorchScript file-format version written (read by PyTorch 1.6 and later).
pub const FILE_VERSION: &str = "3";

/// A tiny protocol-2 pickle writer: exactly the opcodes TorchScript's unpickler reads.
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Self(vec![0x80, 2])
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn string(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if let Ok(b) = u8::try_from(v) {
            self.0.extend_from_slice(&[b'K', b]);
        } else if let Ok(i) = i32::try_from(v) {
            self.0.push(b'J');
            self.0.extend_from_slice(&i.to_le_bytes());
        } else {
            // LONG1 for 64-bit values.
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn op(&mut self, code: u8) {
        self.0.push(code);
    }
    fn int_tuple(&mut self, v: &[i64]) {
        self.op(b'(');
        for &x in v {
            self.int(x);
        }
        self.op(b't');
    }
    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, key: &str, numel: usize, shape: &[i64]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(b'(');
        self.op(b'(');
        self.string("storage");
        self.global("torch", "FloatStorage");
        self.string(key);
        self.string("cpu");
        self.int(i64::try_from(numel).unwrap_or(i64::MAX));
        self.op(b't');
        self.op(b'Q');
        self.int(0);
        self.int_tuple(shape);
        let mut strides = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1].max(1);
        }
        self.int_tuple(&strides);
        self.op(0x89);
        self.global("collections", "OrderedDict");
        self.op(b')');
        self.op(b'R');
        self.op(b't');
        self.op(b'R');
    }
}

fn ints(v: &[i64]) -> String {
    format!("[{}]", v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
}

fn float_lit(v: f32) -> String {
    if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        let s = format!("{v:?}");
        if s.contains('.') || s.contains('e') { s } else { format!("{s}.") }
    }
}

/// The ONNX ops the exporter maps (each onto one ATen call).
pub const SUPPORTED: &[&str] = &[
    "Conv",
    "BatchNormalization",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "GlobalAveragePool",
    "MaxPool",
    "AveragePool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Concat",
    "Softmax",
    "Gemm",
    "MatMul",
    "Identity",
    "Dropout",
    "Shape",
    "Gather",
    "Range",
    "Cast",
    "Unsqueeze",
    "LayerNormalization",
    "Erf",
    "ReduceSum",
    "ReduceMean",
    "ReduceL2",
    "Max",
    "Min",
    "Sqrt",
    "Pow",
];

struct Writer<'m> {
    view: GraphView<'m>,
    /// ONNX value → TorchScript expression (a local or `self.wN`).
    names: HashMap<String, String>,
    buffers: Vec<(String, Vec<f32>, Vec<i64>)>,
    body: String,
    next: usize,
    problems: Vec<Problem>,
    ranks: HashMap<String, usize>,
    /// `Shape` outputs: the tensor whose sizes they are (read by `Gather` as `torch.size`).
    shape_of: HashMap<String, String>,
}

impl Writer<'_> {
    fn local(&mut self) -> String {
        self.next += 1;
        format!("_{}", self.next)
    }

    /// The expression for `value`: a local, or a buffer made from a constant.
    fn get(&mut self, value: &str) -> Option<String> {
        if let Some(n) = self.names.get(value) {
            return Some(n.clone());
        }
        let t = self.view.constant(value)?;
        let TensorValue::F32(a) = TensorValue::from_proto(t).ok()? else { return None };
        let name = format!("w{}", self.buffers.len());
        self.ranks.insert(value.to_owned(), a.ndim());
        self.buffers.push((name.clone(), a.iter().copied().collect(), a.shape().iter().map(|&d| d as i64).collect()));
        let expr = format!("self.{name}");
        self.names.insert(value.to_owned(), expr.clone());
        Some(expr)
    }

    fn scalar(&self, value: &str) -> Option<f32> {
        let t = self.view.constant(value)?;
        match TensorValue::from_proto(t).ok()? {
            TensorValue::F32(a) if a.len() == 1 => a.iter().next().copied(),
            _ => None,
        }
    }

    fn const_ints(&self, value: &str) -> Option<Vec<i64>> {
        match TensorValue::from_proto(self.view.constant(value)?).ok()? {
            TensorValue::I64(a) => Some(a.iter().copied().collect()),
            _ => None,
        }
    }

    fn emit(&mut self, out: &str, expr: String, rank: usize) {
        let l = self.local();
        let _ = writeln!(self.body, "    {l} = {expr}");
        self.names.insert(out.to_owned(), l);
        self.ranks.insert(out.to_owned(), rank);
    }

    fn node(&mut self, n: &NodeProto) -> Result<(), String> {
        let op = n.op_type.as_deref().unwrap_or("");
        if matches!(
            op,
            "QuantizeLinear" | "DequantizeLinear" | "QLinearConv" | "QLinearMatMul" | "MatMulInteger" | "ConvInteger" | "DynamicQuantizeLinear" | "MatMulNBits"
        ) {
            return Err("int8 / 4-bit graphs: TorchScript's quantized kernels need weights packed by PyTorch itself; export the fp32 model".into());
        }
        if !SUPPORTED.contains(&op) {
            return Err(format!("{op} has no TorchScript mapping in Tamp's exporter"));
        }
        let need = match op {
            "BatchNormalization" => 5,
            "Range" => 3,
            "Conv" | "Gemm" | "MatMul" | "Add" | "Sub" | "Mul" | "Div" | "Reshape" | "Pow" | "Gather" => 2,
            _ => 1,
        };
        if n.input.iter().take(need).filter(|v| !v.is_empty()).count() < need || n.output.first().is_none_or(String::is_empty) {
            return Err(format!("{op} needs {need} input(s) and an output; this node has {} and {}", n.input.len(), n.output.len()));
        }
        // Data inputs only: shapes, axes and Clip bounds are read as constants below.
        let data_inputs = match op {
            "Reshape" | "Clip" | "Unsqueeze" | "ReduceSum" | "ReduceMean" | "Cast" | "Shape" => 1,
            "Range" => 0,
            "Gather" if self.shape_of.contains_key(&n.input[0]) => 0,
            _ => n.input.len(),
        };
        let ins: Vec<String> = n.input[..data_inputs.min(n.input.len())]
            .iter()
            .map(|i| if i.is_empty() { Ok(String::new()) } else { self.get(i).ok_or(i.clone()) })
            .collect::<Result<_, _>>()
            .map_err(|v| format!("input '{v}' is neither a value nor a float constant"))?;
        let rank = |w: &Self, i: usize| n.input.get(i).and_then(|v| w.ranks.get(v)).copied().unwrap_or(4);
        let out = n.output.first().cloned().unwrap_or_default();
        let x = ins.first().cloned().unwrap_or_default();
        match op {
            "Conv" => {
                let pads = attr_ints(n, "pads");
                let (k, s, d) = (attr_ints(n, "kernel_shape"), attr_ints(n, "strides"), attr_ints(n, "dilations"));
                let sp = k.len().max(2);
                let s = if s.is_empty() { vec![1; sp] } else { s.to_vec() };
                let d = if d.is_empty() { vec![1; sp] } else { d.to_vec() };
                if attr(n, "auto_pad").and_then(|a| a.s.as_ref()).is_some_and(|s| s != b"NOTSET") {
                    return Err("auto_pad (write explicit pads)".into());
                }
                let p = if pads.is_empty() { vec![0; 2 * sp] } else { pads.to_vec() };
                if p.len() != 2 * sp || s.len() != sp || d.len() != sp {
                    return Err("pads, strides or dilations of the wrong length".into());
                }
                let (begin, end) = p.split_at(sp);
                let mut input = x.clone();
                let sym = if begin == end {
                    begin.to_vec()
                } else {
                    // Asymmetric pads: constant_pad_nd takes (last dim first) begin/end pairs.
                    let mut pad = Vec::new();
                    for i in (0..sp).rev() {
                        pad.extend([begin[i], end[i]]);
                    }
                    let l = self.local();
                    let _ = writeln!(self.body, "    {l} = torch.constant_pad_nd({x}, {}, 0.)", ints(&pad));
                    input = l;
                    vec![0; sp]
                };
                let b = ins.get(2).filter(|b| !b.is_empty()).cloned().unwrap_or_else(|| "None".into());
                let f = if sp == 1 { "conv1d" } else { "conv2d" };
                self.emit(
                    &out,
                    format!("torch.{f}({input}, {}, {b}, {}, {}, {}, {})", ins[1], ints(&s), ints(&sym), ints(&d), attr_int(n, "group", 1)),
                    sp + 2,
                );
            }
            "BatchNormalization" => {
                let eps = attr_float(n, "epsilon", 1e-5);
                self.emit(
                    &out,
                    format!("torch.batch_norm({x}, {}, {}, {}, {}, False, 0.10000000000000001, {}, False)", ins[1], ins[2], ins[3], ins[4], float_lit(eps)),
                    rank(self, 0),
                );
            }
            "Relu" => self.emit(&out, format!("torch.relu({x})"), rank(self, 0)),
            "Sigmoid" => self.emit(&out, format!("torch.sigmoid({x})"), rank(self, 0)),
            "Tanh" => self.emit(&out, format!("torch.tanh({x})"), rank(self, 0)),
            "Clip" => {
                let lo = n.input.get(1).filter(|v| !v.is_empty()).and_then(|v| self.scalar(v)).map_or("None".into(), float_lit);
                let hi = n.input.get(2).filter(|v| !v.is_empty()).and_then(|v| self.scalar(v)).map_or("None".into(), float_lit);
                self.emit(&out, format!("torch.clamp({x}, {lo}, {hi})"), rank(self, 0));
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let f = match op {
                    "Add" => "torch.add",
                    "Sub" => "torch.sub",
                    "Mul" => "torch.mul",
                    _ => "torch.div",
                };
                let r = rank(self, 0).max(rank(self, 1));
                self.emit(&out, format!("{f}({x}, {})", ins[1]), r);
            }
            "GlobalAveragePool" => self.emit(&out, format!("torch.adaptive_avg_pool2d({x}, [1, 1])"), 4),
            "MaxPool" | "AveragePool" => {
                let k = attr_ints(n, "kernel_shape").to_vec();
                let s = attr_ints(n, "strides");
                let s = if s.is_empty() { vec![1; k.len()] } else { s.to_vec() };
                let pads = attr_ints(n, "pads");
                if !pads.is_empty() && pads.len() != 2 * k.len() {
                    return Err("pads of the wrong length".into());
                }
                let (b, e) = if pads.is_empty() { (vec![0; k.len()], vec![0; k.len()]) } else { (pads[..k.len()].to_vec(), pads[k.len()..].to_vec()) };
                if b != e {
                    return Err("asymmetric pooling pads".into());
                }
                let ceil = attr_int(n, "ceil_mode", 0) != 0;
                let py = |c: bool| if c { "True" } else { "False" };
                let expr = if op == "MaxPool" {
                    format!("torch.max_pool2d({x}, {}, {}, {}, [1, 1], {})", ints(&k), ints(&s), ints(&b), py(ceil))
                } else {
                    format!(
                        "torch.avg_pool2d({x}, {}, {}, {}, {}, {}, None)",
                        ints(&k),
                        ints(&s),
                        ints(&b),
                        py(ceil),
                        py(attr_int(n, "count_include_pad", 0) != 0)
                    )
                };
                self.emit(&out, expr, 4);
            }
            "Flatten" => {
                let axis = attr_int(n, "axis", 1);
                if axis != 1 {
                    return Err(format!("Flatten at axis {axis} (only 1)"));
                }
                self.emit(&out, format!("torch.flatten({x}, 1)"), 2);
            }
            "Reshape" => {
                let shape = n.input.get(1).and_then(|v| self.const_ints(v)).ok_or("a computed target shape")?;
                if attr_int(n, "allowzero", 0) != 0 {
                    return Err("Reshape with allowzero".into());
                }
                // ONNX's 0 copies the input's size there.
                let dims: Vec<String> = shape.iter().enumerate().map(|(i, &d)| if d == 0 { format!("torch.size({x}, {i})") } else { d.to_string() }).collect();
                self.emit(&out, format!("torch.reshape({x}, [{}])", dims.join(", ")), shape.len());
            }
            "Transpose" => {
                let perm = attr_ints(n, "perm").to_vec();
                let r = perm.len();
                self.emit(&out, format!("torch.permute({x}, {})", ints(&perm)), r);
            }
            "Concat" => {
                let parts: Vec<&str> = ins.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
                self.emit(&out, format!("torch.cat([{}], {})", parts.join(", "), attr_int(n, "axis", 0)), rank(self, 0));
            }
            "Softmax" => self.emit(&out, format!("torch.softmax({x}, {}, None)", attr_int(n, "axis", -1)), rank(self, 0)),
            "Gemm" => {
                if attr_int(n, "transA", 0) != 0 || attr_float(n, "alpha", 1.0) != 1.0 || attr_float(n, "beta", 1.0) != 1.0 {
                    return Err("Gemm with transA, alpha or beta".into());
                }
                let w = if attr_int(n, "transB", 0) != 0 { ins[1].clone() } else { format!("torch.t({})", ins[1]) };
                let b = ins.get(2).filter(|b| !b.is_empty()).cloned().unwrap_or_else(|| "None".into());
                self.emit(&out, format!("torch.linear({x}, {w}, {b})"), 2);
            }
            "MatMul" => self.emit(&out, format!("torch.matmul({x}, {})", ins[1]), rank(self, 0).max(rank(self, 1))),
            "Shape" => {
                self.shape_of.insert(out, x);
            }
            "Gather" => {
                let axis = attr_int(n, "axis", 0);
                if let Some(src) = self.shape_of.get(&n.input[0]).cloned() {
                    let i = n
                        .input
                        .get(1)
                        .and_then(|v| self.const_ints(v))
                        .and_then(|v| (v.len() == 1).then(|| v[0]))
                        .ok_or("Gather of a shape at a computed index")?;
                    self.emit(&out, format!("torch.size({src}, {i})"), 0);
                } else if axis == 0 && self.view.constant(&n.input[0]).is_some() {
                    // An embedding lookup.
                    let r = rank(self, 1) + 1;
                    self.emit(&out, format!("torch.embedding({}, {}, -1, False, False)", ins[0], ins[1]), r);
                } else {
                    return Err("Gather other than an embedding lookup or a shape element".into());
                }
            }
            "Range" => {
                let arg = |w: &Self, i: usize| -> Option<String> {
                    let v = n.input.get(i)?;
                    w.const_ints(v).and_then(|c| c.first().map(ToString::to_string)).or_else(|| w.names.get(v).cloned())
                };
                let (Some(a), Some(b), Some(c)) = (arg(self, 0), arg(self, 1), arg(self, 2)) else { return Err("Range over non-integer bounds".into()) };
                self.emit(&out, format!("torch.arange({a}, {b}, {c}, dtype=4)"), 1);
            }
            "Cast" => {
                let to = match attr_int(n, "to", 1) {
                    1 => 6,
                    7 => 4,
                    6 => 3,
                    11 => 7,
                    9 => 11,
                    other => return Err(format!("Cast to ONNX type {other}")),
                };
                self.emit(&out, format!("torch.to({x}, {to})"), rank(self, 0));
            }
            "Unsqueeze" => {
                let mut axes = n.input.get(1).and_then(|v| self.const_ints(v)).unwrap_or_else(|| attr_ints(n, "axes").to_vec());
                let r = rank(self, 0) + axes.len();
                for a in &mut axes {
                    if *a < 0 {
                        *a += r as i64;
                    }
                }
                axes.sort_unstable();
                let mut e = x.clone();
                for a in axes {
                    e = format!("torch.unsqueeze({e}, {a})");
                }
                self.emit(&out, e, r);
            }
            "LayerNormalization" => {
                let axis = attr_int(n, "axis", -1);
                let w = n.input.get(1).and_then(|v| self.view.constant(v)).ok_or("a non-constant scale")?;
                let d: Vec<i64> = w.dims.clone();
                if axis != -1 && usize::try_from(axis).ok() != rank(self, 0).checked_sub(d.len()) {
                    return Err(format!("LayerNormalization over axis {axis}"));
                }
                let b = ins.get(2).filter(|b| !b.is_empty()).cloned().unwrap_or_else(|| "None".into());
                self.emit(
                    &out,
                    format!("torch.layer_norm({x}, {}, {}, {b}, {}, False)", ints(&d), ins[1], float_lit(attr_float(n, "epsilon", 1e-5))),
                    rank(self, 0),
                );
            }
            "Erf" => self.emit(&out, format!("torch.erf({x})"), rank(self, 0)),
            "Sqrt" => self.emit(&out, format!("torch.sqrt({x})"), rank(self, 0)),
            "Pow" => self.emit(&out, format!("torch.pow({x}, {})", ins[1]), rank(self, 0)),
            "Max" | "Min" => {
                let f = if op == "Max" { "maximum" } else { "minimum" };
                let mut e = x.clone();
                for other in &ins[1..] {
                    e = format!("torch.{f}({e}, {other})");
                }
                self.emit(&out, e, rank(self, 0));
            }
            "ReduceSum" | "ReduceMean" | "ReduceL2" => {
                let axes = n.input.get(1).filter(|v| !v.is_empty()).and_then(|v| self.const_ints(v)).unwrap_or_else(|| attr_ints(n, "axes").to_vec());
                if axes.is_empty() {
                    return Err("a reduction over all axes".into());
                }
                let keep = attr_int(n, "keepdims", 1) != 0;
                let k = if keep { "True" } else { "False" };
                let r = if keep { rank(self, 0) } else { rank(self, 0).saturating_sub(axes.len()) };
                let e = match op {
                    "ReduceSum" => format!("torch.sum({x}, {}, {k}, dtype=None)", ints(&axes)),
                    "ReduceMean" => format!("torch.mean({x}, {}, {k}, dtype=None)", ints(&axes)),
                    _ => format!("torch.norm({x}, 2, {}, {k})", ints(&axes)),
                };
                self.emit(&out, e, r);
            }
            "Identity" | "Dropout" => {
                self.names.insert(out.clone(), x);
                self.ranks.insert(out, rank(self, 0));
            }
            other => return Err(format!("{other} has no TorchScript mapping in Tamp's exporter")),
        }
        Ok(())
    }
}

/// The `.pt` bytes of `model`, or every node in the way.
pub fn export(model: &Model, name: &str) -> Result<Vec<u8>, Vec<Problem>> {
    let g = model.graph();
    let view = GraphView::new(g);
    let order = view.topological_order().map_err(|e| vec![Problem::model(format!("no topological order: {e}")).on("torchscript")])?;
    let inits: HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let mut w = Writer {
        view,
        names: HashMap::new(),
        buffers: Vec::new(),
        body: String::new(),
        next: 0,
        problems: Vec::new(),
        ranks: HashMap::new(),
        shape_of: HashMap::new(),
    };
    let mut params = Vec::new();
    for (i, vi) in g.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !inits.contains(n)).enumerate() {
        let p = format!("input_{i}");
        w.names.insert(vi.to_owned(), p.clone());
        params.push(p);
    }
    for &i in &order {
        let n = &g.node[i];
        if n.op_type.as_deref() == Some("Constant") {
            continue;
        }
        if let Err(why) = w.node(n) {
            let node = n.name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| n.output.first().cloned().unwrap_or_default());
            w.problems.push(
                Problem::at(&node, n.op_type.as_deref().unwrap_or(""), &why, "keep this model on ONNX Runtime (`targets: [onnxruntime]`)").on("torchscript"),
            );
            for o in &n.output {
                w.names.insert(o.clone(), "None".into());
            }
        }
    }
    if !w.problems.is_empty() {
        return Err(w.problems);
    }
    let outs: Vec<String> = g.output.iter().filter_map(|o| o.name.as_deref()).map(|o| w.names.get(o).cloned().unwrap_or_else(|| "None".into())).collect();

    let mut code = String::from("class Model(Module):\n  __parameters__ = []\n");
    let _ = writeln!(code, "  __buffers__ = [{}, ]", w.buffers.iter().map(|(n, ..)| format!("\"{n}\"")).collect::<Vec<_>>().join(", "));
    for (n, ..) in &w.buffers {
        let _ = writeln!(code, "  {n} : Tensor");
    }
    code.push_str("  training : bool\n");
    let args: String = params.iter().map(|p| format!(",\n    {p}: Tensor")).collect();
    let (ret_ty, ret) = if outs.len() == 1 {
        ("Tensor".to_owned(), outs[0].clone())
    } else {
        (format!("Tuple[{}]", vec!["Tensor"; outs.len()].join(", ")), format!("({})", outs.join(", ")))
    };
    let _ = write!(code, "  def forward(self: __torch__.Model{args}) -> {ret_ty}:\n{}    return {ret}\n", w.body);

    let mut pickle = Pickle::new();
    pickle.global("__torch__", "Model");
    pickle.op(b')');
    pickle.op(0x81);
    pickle.op(b'}');
    pickle.op(b'(');
    pickle.string("training");
    pickle.op(0x89);
    for (i, (n, data, shape)) in w.buffers.iter().enumerate() {
        pickle.string(n);
        pickle.tensor(&i.to_string(), data.len(), shape);
    }
    pickle.op(b'u');
    pickle.op(b'b');
    pickle.op(b'.');

    let mut constants = Pickle::new();
    constants.op(b')');
    constants.op(b'.');

    let fail = |e: String| vec![Problem::model(format!("writing the archive: {e}")).on("torchscript")];
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut put = |path: String, bytes: &[u8]| -> Result<(), String> {
        zip.start_file(path, opts).map_err(|e| e.to_string())?;
        zip.write_all(bytes).map_err(|e| e.to_string())
    };
    put(format!("{name}/data.pkl"), &pickle.0).map_err(fail)?;
    put(format!("{name}/code/__torch__.py"), code.as_bytes()).map_err(fail)?;
    put(format!("{name}/constants.pkl"), &constants.0).map_err(fail)?;
    for (i, (_, data, _)) in w.buffers.iter().enumerate() {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        put(format!("{name}/data/{i}"), &bytes).map_err(fail)?;
    }
    put(format!("{name}/version"), format!("{FILE_VERSION}\n").as_bytes()).map_err(fail)?;
    zip.finish().map(std::io::Cursor::into_inner).map_err(|e| fail(e.to_string()))
}
