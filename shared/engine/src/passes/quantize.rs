//! Static int8 quantization as QDQ, laid out the way ONNX Runtime's optimizer fuses it into
//! integer kernels (QLinearConv, QGemm/MatMulInteger, QLinearAdd, QLinearGlobalAveragePool):
//! - activations: one QuantizeLinear/DequantizeLinear pair (uint8, asymmetric) per float
//!   value that flows between quantizable ops, shared by all of them; a value whose only
//!   readers are Relu/Clip gets none — the pair goes after the activation, which ORT then
//!   absorbs (its zero point is the clip floor);
//! - weights: int8 symmetric, per output channel (or per tensor), stored quantized with a
//!   DequantizeLinear; biases int32 at scale s_x·s_w so the integer kernel can take them;
//! - a SiLU `x · σ(x)` is carried in int8 as one unit ([`gates`]): ORT runs it as
//!   QLinearSigmoid + QLinearMul, 2.8× faster than a float SiLU between a DequantizeLinear
//!   and a QuantizeLinear (measured, 64×80×80);
//! - graph outputs and everything outside [`QUANTIZABLE`] and the gates stay float.
//!
//! [`plan`] lists the activation values to calibrate; [`QuantizeQdq`] turns ranges into a patch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ndarray::{ArrayD, Axis, IxDyn};
use serde::{Deserialize, Serialize};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::graph::attr_int;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use crate::calibrate::Range;

/// Ops whose float inputs and outputs are carried in int8 between Q/DQ pairs.
pub const QUANTIZABLE: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "GlobalAveragePool",
    "AveragePool",
    "MaxPool",
    "Relu",
    "Clip",
    "Flatten",
    "Reshape",
    "Transpose",
    "Concat",
    "Split",
    "Resize",
];
/// Ops whose outputs lie within their input's range (they move, select or interpolate
/// values): their outputs take the input's quantization parameters, so nothing clips, and
/// ONNX Runtime runs them on the uint8 codes (NhwcMaxPool, a uint8 Resize) instead of
/// DequantizeLinear → float op (in NCHWc, with reorders) → QuantizeLinear: what made a
/// MaxPool look slower in int8 than in fp32. Resize only when not cubic (which overshoots).
fn moves(n: &NodeProto) -> bool {
    match op(n) {
        "Flatten" | "Reshape" | "Transpose" | "Split" | "MaxPool" => true,
        "Resize" => tamp_onnx::graph::attr_str(n, "mode").is_none_or(|m| m != "cubic"),
        _ => false,
    }
}
/// Ops with weights quantized per channel, and the activations ORT folds into them.
const WEIGHTED: &[&str] = &["Conv", "Gemm", "MatMul"];
const ABSORBED: &[&str] = &["Relu", "Clip"];

/// How to quantize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizeConfig {
    /// Per-output-channel weight scales (else one per tensor).
    pub per_channel: bool,
    /// Symmetric int8 weights (zero point 0); else asymmetric uint8 with a zero point per
    /// scale. ONNX Runtime's QLinearConv needs one zero point for all channels, so per-channel
    /// asymmetric Conv weights run as DequantizeLinear + float Conv (measured, and flagged
    /// when not faster).
    pub symmetric: bool,
    /// Empirical bias correction (on by default): each layer's bias absorbs its weight
    /// quantization error times the mean of its input (from calibration), so outputs keep
    /// their mean.
    pub bias_correction: bool,
    /// Nodes (by [`node_key`]) left in float: neither their inputs nor weights are quantized.
    pub exclude: BTreeSet<String>,
    /// Leave in float the layers ONNX Runtime runs slower in int8 ([`slow_in_int8`]).
    pub float_slow_layers: bool,
    /// Element type of quantized activations.
    pub activations: ActivationType,
    /// Activations with zero point 0 and a range symmetric around it (int8 only; what
    /// TensorRT-style runtimes expect); otherwise asymmetric over [min(x, 0), max(x, 0)].
    pub symmetric_activations: bool,
    /// Symmetric weights stored as uint8 with zero point 128 (the same codes), which ONNX
    /// Runtime runs on its U8U8 kernels: for CPUs whose u8×s8 kernels saturate ([`crate::isa`]).
    pub u8_weights: bool,
    /// Decide `float_slow_layers` from ONNX Runtime's measured kernel times (else by the
    /// fixed rule [`slow_in_int8`], which never depends on timing).
    pub measure_kernels: bool,
}

/// How activations are stored between quantized ops (uint8 is ONNX Runtime's x86 default:
/// its U8S8 kernels use VNNI directly); the recipe's type, shared.
pub use tamp_domain::recipe::ActivationType;

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            per_channel: true,
            symmetric: true,
            bias_correction: true,
            exclude: BTreeSet::new(),
            float_slow_layers: true,
            activations: ActivationType::Uint8,
            symmetric_activations: false,
            u8_weights: false,
            measure_kernels: true,
        }
    }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// The gates of SiLUs, by [`node_key`]: each `Sigmoid` of a value `x` that a `Mul`
/// multiplies by `x` itself, and that `Mul`. Carried in int8 like
/// [`QUANTIZABLE`] ops: the gate's output and the product get Q/DQ pairs (the product
/// whatever reads it, like a layer's output), so ORT fuses QLinearSigmoid and QLinearMul.
/// Anything else (a Sigmoid scoring a detector's classes, a Mul by a constant, the Muls
/// inside a LayerNorm or GELU) stays float. A hard-swish is one `HardSwish` op after
/// [`super::hardswish`], carried in int8 by [`hard_swishes_in_int8`].
pub fn gates(model: &Model) -> HashSet<String> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut out = HashSet::new();
    for n in g.node.iter().filter(|n| op(n) == "Sigmoid" && n.input.len() == 1 && n.output.len() == 1) {
        let (x, s) = (&n.input[0], &n.output[0]);
        for &c in view.consumers(s) {
            let m = &g.node[c];
            let pair = matches!(m.input.as_slice(), [a, b] if (a == x && b == s) || (a == s && b == x));
            if op(m) == "Mul" && pair {
                out.insert(node_key(n).to_owned());
                out.insert(node_key(m).to_owned());
            }
        }
    }
    out
}

/// Whether `n` is carried in int8: a [`QUANTIZABLE`] op or one of the [`gates`], and not
/// excluded by the user.
pub fn carried(n: &NodeProto, gates: &HashSet<String>, exclude: &BTreeSet<String>) -> bool {
    (QUANTIZABLE.contains(&op(n)) || gates.contains(node_key(n))) && !exclude.contains(node_key(n))
}

/// Layers that ONNX Runtime's CPU kernels run slower in int8 than in fp32, by [`node_key`]:
/// a Conv reading a single input channel (group 1, weight `[C_out, 1, kh, kw]`, e.g. the
/// first layer on grayscale images). QLinearConv reduces over only kh·kw values per output
/// there and loses to the fp32 NCHWc kernel: ResNet-8's 1 → 16, 3×3 stem took 264 µs per
/// batch of 32 as QLinearConv vs 44 µs in fp32 (1 thread), and leaving it float made the
/// whole int8 model 1.25× faster. A 3-channel stem (EfficientNet-Lite0's) is faster in int8
/// and stays quantized; depthwise Convs have their own int8 kernel.
pub fn slow_in_int8(model: &Model) -> BTreeSet<String> {
    let g = model.graph();
    let view = GraphView::new(g);
    g.node
        .iter()
        .filter(|n| op(n) == "Conv" && tamp_onnx::graph::attr_int(n, "group", 1) == 1)
        .filter(|n| n.input.get(1).and_then(|w| view.constant(w)).is_some_and(|w| w.dims.len() == 4 && w.dims[1] == 1))
        .map(|n| node_key(n).to_owned())
        .collect()
}

/// How a node is named in `exclude` lists and reports: its name, else its first output.
pub fn node_key(n: &NodeProto) -> &str {
    match n.name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => n.output.first().map_or("", String::as_str),
    }
}

/// Weighted nodes (Conv/Gemm/MatMul by a constant) the pass would quantize: the units the
/// accuracy-aware fallback returns to float.
pub fn weighted_nodes(model: &Model) -> Vec<String> {
    let g = model.graph();
    let view = GraphView::new(g);
    g.node.iter().filter(|n| WEIGHTED.contains(&op(n)) && is_weight_slot(&view, n, 1)).map(|n| node_key(n).to_owned()).collect()
}

fn is_weight_slot(view: &GraphView<'_>, node: &NodeProto, slot: usize) -> bool {
    WEIGHTED.contains(&op(node)) && slot >= 1 && node.input.get(slot).is_some_and(|v| view.constant(v).is_some())
}

/// The float activation values to calibrate and wrap in Q/DQ, in graph order.
pub fn plan(model: &Model, exclude: &BTreeSet<String>) -> Result<Vec<String>, OnnxError> {
    let g = model.graph();
    let gates = gates(model);
    let quantizable = |n: &NodeProto| carried(n, &gates, exclude);
    let gate_mul = |n: &NodeProto| op(n) == "Mul" && gates.contains(node_key(n)) && !exclude.contains(node_key(n));
    let opset = model.opset("").unwrap_or(0);
    if opset < 13 {
        return Err(OnnxError::Graph(format!("the model imports opset {opset}; per-axis QuantizeLinear needs 13 or later (re-export at opset ≥ 13)")));
    }
    let view = GraphView::new(g);
    let outputs: HashSet<&str> = g.output.iter().filter_map(|o| o.name.as_deref()).collect();
    let float_inputs: Vec<&str> = g
        .input
        .iter()
        .filter(|i| {
            matches!(i.r#type.as_ref().and_then(|t| t.value.as_ref()), Some(tamp_onnx::proto::type_proto::Value::TensorType(t)) if t.elem_type == Some(DataType::Float as i32))
        })
        .filter_map(|i| i.name.as_deref())
        .collect();
    // What quantizable ops compute, and what a weighted layer reads whatever computed it: a
    // Conv after a float op (a hard-swish's Mul, a Div) still runs as QLinearConv, with a
    // QuantizeLinear after that op, as ONNX Runtime's own quantizer lays it out. Without
    // it the Conv is DequantizeLinear + float Conv, slower than either form.
    let candidates = float_inputs.into_iter().chain(view.topological_order()?.into_iter().map(|i| &g.node[i]).filter(|n| quantizable(n)).flat_map(|n| {
        // A layer reads its input in int8, and so does a gate (its `x`).
        let read = ((WEIGHTED.contains(&op(n)) && is_weight_slot(&view, n, 1)) || (op(n) != "Mul" && gates.contains(node_key(n)))).then(|| n.input[0].as_str());
        read.into_iter().chain(n.output.iter().map(String::as_str))
    }));
    // Integer and boolean values (shape computations, masks, indices) are never activations.
    let types = tamp_onnx::types::elem_types(g);
    let float = |v: &str| types.get(v).is_none_or(|t| *t == DataType::Float);
    // A layer's output is quantized whatever reads it (ONNX Runtime fuses a Conv into
    // QLinearConv only with a QuantizeLinear after it), and so is a Relu/Clip it absorbs
    // and a gated activation's product (QLinearMul likewise).
    let layer = |p: &NodeProto| (quantizable(p) && is_weight_slot(&view, p, 1)) || gate_mul(p);
    let layer_output = |v: &str| {
        view.producer(v).map(|p| &g.node[p]).is_some_and(|p| {
            layer(p) || (ABSORBED.contains(&op(p)) && quantizable(p) && p.input.first().and_then(|x| view.producer(x)).is_some_and(|q| layer(&g.node[q])))
        })
    };
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for v in candidates {
        if v.is_empty() || outputs.contains(v) || view.initializer(v).is_some() || !float(v) || !seen.insert(v) {
            continue;
        }
        let readers: Vec<&NodeProto> = view.consumers(v).iter().map(|&c| &g.node[c]).collect();
        let quantized_readers =
            readers.iter().filter(|n| quantizable(n) && n.input.iter().enumerate().any(|(s, i)| i == v && !is_weight_slot(&view, n, s))).count();
        if quantized_readers == 0 && !layer_output(v) {
            continue;
        }
        let producer = view.producer(v).map(|p| &g.node[p]).filter(|p| quantizable(p)).map(op);
        let absorbed = producer.is_some_and(|p| WEIGHTED.contains(&p) || p == "Add") && readers.iter().all(|n| ABSORBED.contains(&op(n)));
        if !absorbed {
            out.push(v.to_owned());
        }
    }
    // A value whose int8 readers all compute in float anyway (a Reshape whose output is a
    // graph output, a Concat with a float input) gains nothing from int8 and loses
    // precision: PicoDet's class scores went through a Q/DQ pair on their way to the output
    // (cosine 0.90 → 0.56). Such values go, until none is left; layer and gate outputs stay
    // (ORT fuses the layer only with a QuantizeLinear after it), and so do the outputs of
    // the Relu/Clip a layer absorbs that an int8-capable op reads: dropping those left DNSMOS's last two Convs (each
    // `Conv → Relu → MaxPool/ReduceMax`) as float Convs dequantizing their weights at every
    // run, 3.0 ms where QLinearConv takes 0.7.
    loop {
        let kept: HashSet<&str> = out.iter().map(String::as_str).collect();
        let computes_in_int8 = |n: &NodeProto| WEIGHTED.contains(&op(n)) || gates.contains(node_key(n)) || n.output.iter().any(|o| kept.contains(o.as_str()));
        // Through an absorbed Relu/Clip only while something int8-capable reads it: a
        // `MatMul → Clip(1e-10, ∞) → Log` (oww_melspec's mel power) keeps its float output,
        // as quantizing the power spectrum before the log cost 0.12 of cosine (0.986 → 0.863).
        let keeps =
            |v: &str| view.producer(v).is_some_and(|p| layer(&g.node[p])) || (layer_output(v) && view.consumers(v).iter().any(|&c| quantizable(&g.node[c])));
        let idle = |v: &str| !keeps(v) && view.consumers(v).iter().map(|&c| &g.node[c]).filter(|n| quantizable(n)).all(|n| !computes_in_int8(n));
        let before = out.len();
        let drop: HashSet<String> = out.iter().filter(|v| idle(v)).cloned().collect();
        out.retain(|v| !drop.contains(v));
        if out.len() == before {
            break;
        }
    }
    Ok(out)
}

/// Symmetric int8 codes as uint8 with zero point 128 (the same values once dequantized).
pub fn to_u8(q: &ArrayD<i8>) -> ArrayD<u8> {
    q.mapv(|v| (i16::from(v) + 128) as u8)
}

/// uint8 asymmetric parameters covering `r` (and zero, so zero is exact).
pub fn activation_params(r: Range) -> (f32, u8) {
    let (lo, hi) = (r.min.min(0.0), r.max.max(0.0));
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

/// A scalar zero point of the configured activation type, with its scale, covering `r`.
fn activation_zero_point(r: Range, ty: ActivationType, symmetric: bool, name: &str) -> (f32, tamp_onnx::proto::TensorProto) {
    let zp_tensor = |v: i32| match ty {
        ActivationType::Uint8 => from_array(name, &ArrayD::from_elem(IxDyn(&[]), v as u8)),
        ActivationType::Int8 => from_array(name, &ArrayD::from_elem(IxDyn(&[]), v as i8)),
    };
    if symmetric {
        let amax = r.min.abs().max(r.max.abs());
        return (if amax > 0.0 { amax / 127.0 } else { 1.0 }, zp_tensor(0));
    }
    let (scale, zp) = activation_params(r);
    (
        scale,
        zp_tensor(match ty {
            ActivationType::Uint8 => i32::from(zp),
            ActivationType::Int8 => i32::from(zp) - 128,
        }),
    )
}

/// int8 symmetric quantization of `w` along `axis` (None: per tensor): (values, scales).
pub fn quantize_weight(w: &ArrayD<f32>, axis: Option<usize>) -> (ArrayD<i8>, Vec<f32>) {
    let qmax = 127.0f32;
    let scale_of = |amax: f32| if amax > 0.0 { amax / qmax } else { 1.0 };
    match axis {
        None => {
            let s = scale_of(w.iter().fold(0.0f32, |m, v| m.max(v.abs())));
            (w.mapv(|v| (v / s).round().clamp(-qmax, qmax) as i8), vec![s])
        }
        Some(ax) => {
            let scales: Vec<f32> = w.axis_iter(Axis(ax)).map(|c| scale_of(c.iter().fold(0.0f32, |m, v| m.max(v.abs())))).collect();
            let mut q = ArrayD::<i8>::zeros(w.raw_dim());
            for (c, (src, mut dst)) in w.axis_iter(Axis(ax)).zip(q.axis_iter_mut(Axis(ax))).enumerate() {
                dst.zip_mut_with(&src, |d, &v| *d = (v / scales[c]).round().clamp(-qmax, qmax) as i8);
            }
            (q, scales)
        }
    }
}

/// Asymmetric uint8 weights: per slice of `axis` (or the whole tensor), the range
/// [min(w, 0), max(w, 0)] over 255 steps: (quantized, scales, zero points).
pub fn quantize_weight_asym(w: &ArrayD<f32>, axis: Option<usize>) -> (ArrayD<u8>, Vec<f32>, Vec<u8>) {
    let params = |it: &mut dyn Iterator<Item = f32>| {
        let (lo, hi) = it.fold((0f32, 0f32), |(l, h), v| (l.min(v), h.max(v)));
        let s = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
        (s, (-lo / s).round().clamp(0.0, 255.0) as u8)
    };
    let q1 = |v: f32, s: f32, z: u8| ((v / s).round() + f32::from(z)).clamp(0.0, 255.0) as u8;
    match axis {
        None => {
            let (s, z) = params(&mut w.iter().copied());
            (w.mapv(|v| q1(v, s, z)), vec![s], vec![z])
        }
        Some(ax) => {
            let p: Vec<(f32, u8)> = w.axis_iter(Axis(ax)).map(|c| params(&mut c.iter().copied())).collect();
            let mut q = ArrayD::<u8>::zeros(w.raw_dim());
            for (c, (src, mut dst)) in w.axis_iter(Axis(ax)).zip(q.axis_iter_mut(Axis(ax))).enumerate() {
                dst.zip_mut_with(&src, |d, &v| *d = q1(v, p[c].0, p[c].1));
            }
            (q, p.iter().map(|x| x.0).collect(), p.iter().map(|x| x.1).collect())
        }
    }
}

/// The output-channel axis of a weighted node's weight (per-channel scales run along it).
pub fn weight_axis(n: &NodeProto, w: &ArrayD<f32>) -> usize {
    match op(n) {
        "Conv" => 0,
        "Gemm" if attr_int(n, "transB", 0) == 1 => 0,
        _ => w.ndim().saturating_sub(1),
    }
}

/// What the QDQ pass will make of `w` once dequantized (float), for bias correction.
pub fn fake_quantized(w: &ArrayD<f32>, axis: Option<usize>, symmetric: bool) -> ArrayD<f32> {
    let per = |c: usize, scales: &[f32]| scales[if scales.len() == 1 { 0 } else { c }];
    let mut out = ArrayD::<f32>::zeros(w.raw_dim());
    if symmetric {
        let (q, scales) = quantize_weight(w, axis);
        match axis {
            Some(ax) => {
                for (c, (src, mut dst)) in q.axis_iter(Axis(ax)).zip(out.axis_iter_mut(Axis(ax))).enumerate() {
                    dst.zip_mut_with(&src, |d, &v| *d = f32::from(v) * per(c, &scales));
                }
            }
            None => out = q.mapv(|v| f32::from(v) * scales[0]),
        }
    } else {
        let (q, scales, zps) = quantize_weight_asym(w, axis);
        match axis {
            Some(ax) => {
                for (c, (src, mut dst)) in q.axis_iter(Axis(ax)).zip(out.axis_iter_mut(Axis(ax))).enumerate() {
                    dst.zip_mut_with(&src, |d, &v| *d = (f32::from(v) - f32::from(zps[c])) * scales[c]);
                }
            }
            None => out = q.mapv(|v| (f32::from(v) - f32::from(zps[0])) * scales[0]),
        }
    }
    out
}

/// The QDQ pass over calibrated ranges (from [`plan`] values).
#[derive(Debug, Clone)]
pub struct QuantizeQdq {
    pub config: QuantizeConfig,
    pub ranges: BTreeMap<String, Range>,
}

fn scalar_f32(name: &str, v: f32) -> tamp_onnx::proto::TensorProto {
    from_array(name, &ArrayD::from_elem(IxDyn(&[]), v))
}

fn node(op_type: &str, name: String, inputs: Vec<String>, output: String, attrs: Vec<tamp_onnx::proto::AttributeProto>) -> NodeProto {
    NodeProto { op_type: Some(op_type.into()), name: Some(name), input: inputs, output: vec![output], attribute: attrs, ..Default::default() }
}

impl Pass for QuantizeQdq {
    type Report = usize;

    fn name(&self) -> &str {
        "quantize-qdq"
    }

    /// The patch plus the number of layers whose weights it quantizes.
    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        if self.config.symmetric_activations && self.config.activations == ActivationType::Uint8 {
            return Err(OnnxError::Graph("symmetric activations need int8 activations (uint8 has no zero-centred range): set `activation_type: int8`".into()));
        }
        let g = model.graph();
        if g.node.iter().any(|n| op(n) == "QuantizeLinear") {
            return Ok(None); // already quantized: the pass is one-shot
        }
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let exclude = &self.config.exclude;
        // Activation Q/DQ pairs, for the values the plan (with exclusions) wants.
        let wanted = plan(model, exclude)?;
        let wanted_set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        let mut act_scale: HashMap<&str, f32> = HashMap::new();
        for v in &wanted {
            // A moved value is quantized like its source when the source is quantized too,
            // through chains of moves (SPPF's three MaxPools in a row share one range).
            let source =
                |v: &str| view.producer(v).map(|p| &g.node[p]).filter(|p| moves(p)).and_then(|p| p.input.first()).filter(|x| wanted_set.contains(x.as_str()));
            let mut root = v.as_str();
            while let Some(x) = source(root) {
                root = x;
            }
            let r = self.ranges.get(root).ok_or_else(|| OnnxError::Graph(format!("no calibrated range for '{root}' (calibrate with the same model)")))?;
            if view.producer(v).is_none() && !g.input.iter().any(|i| i.name.as_deref() == Some(v.as_str())) {
                return Err(OnnxError::Graph(format!("calibrated value '{v}' is not in the graph")));
            }
            let (s, z, q, dq) = (format!("{v}.s"), format!("{v}.zp"), format!("{v}.q"), format!("{v}.dq"));
            let (scale, zp) = activation_zero_point(*r, self.config.activations, self.config.symmetric_activations, &z);
            patch.add_initializers.push(scalar_f32(&s, scale));
            patch.add_initializers.push(zp);
            patch.add_nodes.push(node("QuantizeLinear", format!("{v}.Q"), vec![v.clone(), s.clone(), z.clone()], q.clone(), vec![]));
            patch.add_nodes.push(node("DequantizeLinear", format!("{v}.DQ"), vec![q, s, z], dq.clone(), vec![]));
            // Every reader takes the dequantized value, float ops too: ONNX Runtime fuses a
            // Conv/Add into its integer kernel only when a QuantizeLinear is the output's
            // one reader (a hard-swish's Mul reading the float value kept 33 of PP-OCR's 38
            // Convs as DequantizeLinear + float Conv).
            for &c in view.consumers(v) {
                let n = &g.node[c];
                for (slot, input) in n.input.iter().enumerate() {
                    if input == v && !is_weight_slot(&view, n, slot) {
                        patch.rewire.push((c, slot, dq.clone()));
                    }
                }
            }
            act_scale.insert(v.as_str(), scale);
        }
        hard_swishes_in_int8(g, &act_scale, &mut patch);
        // Weights (and biases) of layers whose activation input is quantized.
        let mut weights = 0;
        for (i, n) in g.node.iter().enumerate() {
            let kind = op(n);
            if !WEIGHTED.contains(&kind) || exclude.contains(node_key(n)) || !is_weight_slot(&view, n, 1) {
                continue;
            }
            let Some(&sx) = n.input.first().and_then(|x| act_scale.get(x.as_str())) else { continue };
            let wname = &n.input[1];
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            let axis = weight_axis(n, &w);
            // A weight read by one node keeps its name; a shared one is quantized per reader.
            let key = if view.consumers(wname).len() == 1 { wname.clone() } else { format!("{wname}#{i}") };
            let (wq, ws, wdq) = (format!("{key}.q"), format!("{key}.s"), format!("{key}.dq"));
            let (scales, zero_points) = if self.config.symmetric {
                let (q, scales) = quantize_weight(&w, self.config.per_channel.then_some(axis));
                if self.config.u8_weights {
                    // The same codes shifted by 128 with zero point 128: ORT's U8U8 kernels.
                    patch.add_initializers.push(from_array(&wq, &to_u8(&q)));
                    let n = scales.len();
                    (scales, Some(vec![128u8; n]))
                } else {
                    patch.add_initializers.push(from_array(&wq, &q));
                    (scales, None)
                }
            } else {
                let (q, scales, zps) = quantize_weight_asym(&w, self.config.per_channel.then_some(axis));
                patch.add_initializers.push(from_array(&wq, &q));
                (scales, Some(zps))
            };
            let scale_shape: Vec<usize> = if scales.len() == 1 { vec![] } else { vec![scales.len()] };
            let scale_arr = ArrayD::from_shape_vec(IxDyn(&scale_shape), scales.clone())?;
            patch.add_initializers.push(from_array(&ws, &scale_arr));
            let axis_attr = if scales.len() > 1 { vec![attribute("axis", Attr::Int(axis as i64))] } else { vec![] };
            // Symmetric: the zero point is 0, which an omitted zero point means (a byte per channel
            // saved). ORT fuses Conv without it, but QGemm/MatMulInteger only with it.
            let mut dq_inputs = vec![wq, ws.clone()];
            let wz = format!("{key}.zp");
            match zero_points {
                Some(z) => {
                    patch.add_initializers.push(from_array(&wz, &ArrayD::from_shape_vec(scale_arr.raw_dim(), z)?));
                    dq_inputs.push(wz);
                }
                None if kind != "Conv" => {
                    patch.add_initializers.push(from_array(&wz, &ArrayD::<i8>::zeros(scale_arr.raw_dim())));
                    dq_inputs.push(wz);
                }
                None => {}
            }
            patch.add_nodes.push(node("DequantizeLinear", format!("{key}.DQ"), dq_inputs, wdq.clone(), axis_attr));
            patch.rewire.push((i, 1, wdq));
            weights += 1;
            // Bias: int32 at s_x·s_w[c], zero point 0, so ORT's integer kernel consumes it.
            let bias_slot = 2;
            let bias = n.input.get(bias_slot).filter(|b| !b.is_empty()).and_then(|b| view.constant(b)).and_then(|t| to_array::<f32>(t).ok());
            if let Some(b) = bias.filter(|b| b.ndim() == 1 && (scales.len() == 1 || b.len() == scales.len()) && kind != "MatMul") {
                let bs: Vec<f32> = (0..b.len()).map(|c| sx * scales[if scales.len() == 1 { 0 } else { c }]).collect();
                let bq = ArrayD::from_shape_fn(IxDyn(&[b.len()]), |ix| (b[ix[0]] / bs[ix[0]]).round().clamp(i32::MIN as f32, i32::MAX as f32) as i32);
                let (bqn, bsn, bdq) = (format!("{key}.bias.q"), format!("{key}.bias.s"), format!("{key}.bias.dq"));
                patch.add_initializers.push(from_array(&bqn, &bq));
                if scales.len() == b.len() && scales.len() > 1 {
                    // The bias scale s_x·s_w is not stored: a Mul of the two stored scales makes
                    // it (the same f32 product), and ORT folds it at load before fusing — 4 bytes
                    // per output channel saved (EfficientNet-Lite0: 88 KB).
                    let x = n.input.first().map_or("", String::as_str);
                    patch.add_nodes.push(node("Mul", format!("{key}.bias.S"), vec![format!("{x}.s"), ws.clone()], bsn.clone(), vec![]));
                } else {
                    patch.add_initializers.push(from_array(&bsn, &ArrayD::from_shape_vec(IxDyn(&[bs.len()]), bs)?));
                }
                patch.add_nodes.push(node("DequantizeLinear", format!("{key}.bias.DQ"), vec![bqn, bsn], bdq.clone(), vec![attribute("axis", Attr::Int(0))]));
                patch.rewire.push((i, bias_slot, bdq));
            }
        }
        Ok((!patch.is_empty()).then_some((patch, weights)))
    }
}

/// Each `HardSwish` whose input and output are both quantized, carried in int8 in two integer
/// kernels: `x · clip(x + 3, 0, 6) / 6 = (x / 6) · clip(x + 3, 0, 6)`, with
/// - `clip(x + 3, 0, 6)` a QLinearAdd whose QuantizeLinear over [0, 6] does the clip (255
///   steps of 6/255, as a uint8 HardSigmoid would have);
/// - `x / 6` free: the same uint8 codes as `x`, dequantized at a sixth of its scale;
/// - the product a QLinearMul into the output's QuantizeLinear.
///
/// ONNX Runtime has no HardSwish kernel (it inlines HardSigmoid + Mul), so in float between
/// a DequantizeLinear and a QuantizeLinear it is four passes over fp32; its own quantizer
/// makes five (QLinearAdd, a float Div between Q/DQ, QLinearMul). On PicoDet: 77 of them.
fn hard_swishes_in_int8(g: &tamp_onnx::proto::GraphProto, act_scale: &HashMap<&str, f32>, patch: &mut Patch) {
    for (i, n) in g.node.iter().enumerate() {
        if op(n) != "HardSwish" || n.input.len() != 1 || n.output.len() != 1 {
            continue;
        }
        let (x, y) = (&n.input[0], &n.output[0]);
        let (Some(&sx), true) = (act_scale.get(x.as_str()), act_scale.contains_key(y.as_str())) else { continue };
        let k = node_key(n).to_owned();
        let name = |s: &str| format!("{k}.int8.{s}");
        // 3 exactly: code 255 at scale 3/255.
        patch.add_initializers.push(from_array(&name("three.q"), &ArrayD::from_elem(IxDyn(&[]), 255u8)));
        patch.add_initializers.push(scalar_f32(&name("three.s"), 3.0 / 255.0));
        patch.add_initializers.push(from_array(&name("zero"), &ArrayD::from_elem(IxDyn(&[]), 0u8)));
        patch.add_initializers.push(scalar_f32(&name("six.s"), 6.0 / 255.0));
        patch.add_initializers.push(scalar_f32(&name("x6.s"), sx / 6.0));
        let dq = |out: String, q: String, s: String, z: String| node("DequantizeLinear", format!("{out}.DQ"), vec![q, s, z], out, vec![]);
        patch.add_nodes.push(dq(name("three"), name("three.q"), name("three.s"), name("zero")));
        patch.add_nodes.push(node("Add", name("Add"), vec![format!("{x}.dq"), name("three")], name("sum"), vec![]));
        patch.add_nodes.push(node("QuantizeLinear", name("clip.Q"), vec![name("sum"), name("six.s"), name("zero")], name("clip.q"), vec![]));
        patch.add_nodes.push(dq(name("clip"), name("clip.q"), name("six.s"), name("zero")));
        patch.add_nodes.push(dq(name("x6"), format!("{x}.q"), name("x6.s"), format!("{x}.zp")));
        patch.add_nodes.push(node("Mul", name("Mul"), vec![name("x6"), name("clip")], y.clone(), vec![]));
        patch.remove_nodes.insert(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Dequantized weights are within half a step of the originals, per channel.
        #[test]
        fn weight_round_trip_error_is_half_a_step(values in proptest::collection::vec(-4.0f32..4.0, 12)) {
            let w = ArrayD::from_shape_vec(IxDyn(&[3, 4]), values).unwrap();
            let (q, scales) = quantize_weight(&w, Some(0));
            for ((r, c), &v) in w.clone().into_dimensionality::<ndarray::Ix2>().unwrap().indexed_iter() {
                let back = f32::from(q[[r, c]]) * scales[r];
                prop_assert!((back - v).abs() <= scales[r] / 2.0 + 1e-6);
            }
        }

        /// Zero is exactly representable and the range is covered.
        #[test]
        fn activation_params_cover_the_range(lo in -10.0f32..0.0, hi in 0.0f32..10.0) {
            let (scale, zp) = activation_params(Range { min: lo, max: hi });
            prop_assert!(scale > 0.0);
            prop_assert!((f32::from(zp) * scale + lo).abs() <= scale);
            prop_assert!((255.0 - f32::from(zp)) * scale >= hi - scale);
        }
    }

    #[test]
    fn relu_outputs_get_zero_point_zero() {
        assert_eq!(activation_params(Range { min: 0.0, max: 6.0 }).1, 0);
    }

    #[test]
    fn int8_activation_zero_points() {
        let zp = |r, ty, sym| {
            let (s, t) = activation_zero_point(r, ty, sym, "z");
            (s, t.data_type, tamp_onnx::TensorValue::from_proto(&t).unwrap())
        };
        // A ReLU's range in asymmetric int8 starts at the type's minimum.
        let (s, dt, v) = zp(Range { min: 0.0, max: 6.0 }, ActivationType::Int8, false);
        assert_eq!((s, dt, v), (6.0 / 255.0, Some(DataType::Int8 as i32), tamp_onnx::TensorValue::I8(ArrayD::from_elem(IxDyn(&[]), -128))));
        // Symmetric: zero point 0, the larger side over 127 steps.
        let (s, _, v) = zp(Range { min: -2.0, max: 5.0 }, ActivationType::Int8, true);
        assert_eq!((s, v), (5.0 / 127.0, tamp_onnx::TensorValue::I8(ArrayD::from_elem(IxDyn(&[]), 0))));
        let (_, dt, _) = zp(Range { min: -2.0, max: 5.0 }, ActivationType::Uint8, false);
        assert_eq!(dt, Some(DataType::Uint8 as i32));
    }
}
