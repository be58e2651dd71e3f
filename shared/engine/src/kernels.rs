//! Float or int8, per layer, from measured kernel times on the target runtime: ONNX Runtime's
//! profiler times every node of the fp32 model and of the all-int8 model at batch 1, each
//! node is attributed to the layer it computes (a fused `QLinearConv` and the
//! Quantize/Dequantize nodes around it to the Conv; a Relu folded into its Conv to the Conv),
//! and a layer whose int8 form takes longer than its float form stays float. Which layers
//! lose in int8 depends on the kernels (ORT's QLinearConv over one input channel, a small
//! model's Q/DQ overhead) and on the CPU, so no fixed rule gets it right.
//!
//! Decisions are cached by the model's hash, the CPU and the runtime version
//! (`$TAMP_CACHE_DIR/kernels/`): the same model on the same kind of machine always gets the
//! same float layers, so the artifact's bytes do not depend on timing noise.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::{GraphView, Model, TensorValue};

use crate::error::Result;
use crate::passes::quantize::{QUANTIZABLE, node_key};
use crate::runtime::{NodeTime, SessionConfig, profile_nodes};

/// A layer's measured time in each form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerTiming {
    /// The node key of the layer in the float model.
    pub layer: String,
    pub op_type: String,
    pub fp32_us: f64,
    pub int8_us: f64,
    /// ONNX Runtime ran the layer's weight `DequantizeLinear` at every inference: it found
    /// no integer kernel for the layer (a MatMul whose float output feeds `Clip → Log` is
    /// not fused into `MatMulIntegerToFloat`), so the "int8" layer is its float kernel plus
    /// a dequantize of the whole weight.
    #[serde(default)]
    pub unfused: bool,
}

impl LayerTiming {
    /// Slower in int8 by half again plus 2 µs: a margin wide enough that run-to-run noise
    /// (a few percent) does not flip a decision, so a retry on another machine of the same
    /// kind makes the same artifact. A layer with no float time of its own (ONNX Runtime
    /// fused it into a neighbour's kernel, as an Add into the Conv before it) cannot be
    /// compared alone and stays as it is.
    ///
    /// Only weighted layers (Conv, Gemm, MatMul) are judged. A Concat, Add, pool or Resize
    /// kept float between int8 neighbours costs its fp32 time *plus* a DequantizeLinear per
    /// input and a QuantizeLinear after it, which the fp32 model's profile does not show:
    /// judged alone they looked 2× slower in int8 (YOLOv8's Concats, 20–100 µs each), and
    /// keeping them float made the whole model slower (nudenet 11.8 → 11.2 ms when they
    /// stayed int8).
    ///
    /// A layer the runtime left [`unfused`](Self::unfused) is slower by construction (the
    /// same float kernel, plus the dequantize), whatever the timings say.
    pub fn slower_in_int8(&self) -> bool {
        if is_recurrent(&self.op_type) {
            // Always unfused (no integer kernel): the dequantize and the repacking are pure
            // cost, so any measured excess counts; a tiny GRU whose excess drowns in the
            // noise (AECMOS's, ~40 µs) keeps its 4× smaller int8 weights.
            return self.int8_us > self.fp32_us;
        }
        let weighted = matches!(self.op_type.as_str(), "Conv" | "Gemm" | "MatMul");
        weighted && (self.unfused || (self.fp32_us > 0.0 && self.int8_us > self.fp32_us * 1.5 + 2.0))
    }

    /// "Conv 'c1': int8 264 µs vs fp32 44 µs (ONNX Runtime profile, batch 1)".
    pub fn reason(&self) -> String {
        if self.unfused {
            return format!(
                "{} '{}': ONNX Runtime has no integer kernel for it here and dequantizes its weight at every run (int8 {:.0} µs vs fp32 {:.0} µs, batch 1)",
                self.op_type, self.layer, self.int8_us, self.fp32_us
            );
        }
        format!("{} '{}': int8 {:.0} µs vs fp32 {:.0} µs (ONNX Runtime profile, batch 1)", self.op_type, self.layer, self.int8_us, self.fp32_us)
    }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

/// LSTM, GRU and RNN: static PTQ stores their top-level W and R as int8 read through
/// `DequantizeLinear` ([`crate::passes::QuantizeSubgraphWeights`]). ONNX Runtime has no
/// integer kernel for them in a QDQ model, so they are judged like any layer it leaves
/// [`unfused`](LayerTiming::unfused): tashkeel's nine GRUs took 2077 µs with int8 weights
/// (plus 18 dequantizes, 230 µs) against 1831 µs with float ones, which are packed once at
/// load instead of at every run.
fn is_recurrent(op: &str) -> bool {
    matches!(op, "LSTM" | "GRU" | "RNN")
}

/// A layer this module times: a quantizable weighted op or a recurrent one.
fn timed(op: &str) -> bool {
    QUANTIZABLE.contains(&op) || is_recurrent(op)
}

/// Names the runtime derives from a value or node name: `x.q`, `x.dq`, `x_nchwc`,
/// `x/duplicated`, `x_token_12`, `x.Q`, `x.DQ`.
fn strip(mut s: &str) -> &str {
    loop {
        let before = s;
        for suffix in [".q", ".dq", ".Q", ".DQ", "_nchwc", "/duplicated", "_QuantizeLinear", "_DequantizeLinear"] {
            s = s.strip_suffix(suffix).unwrap_or(s);
        }
        if let Some(i) = s.rfind("_token_")
            && s[i + 7..].chars().all(|c| c.is_ascii_digit())
            && i + 7 < s.len()
        {
            s = &s[..i];
        }
        if s == before {
            return s;
        }
    }
}

/// value → the layer (node key) it belongs to: its producer, except that the output of an
/// activation the runtime folds into the layer before it (Relu/Clip after Conv/Gemm/MatMul/
/// Add) belongs to that layer.
fn layers(model: &Model) -> (HashMap<String, String>, HashMap<String, String>) {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut of_value = HashMap::new();
    let mut op_of = HashMap::new();
    for n in &g.node {
        let mut owner = n;
        if matches!(op(n), "Relu" | "Clip")
            && let Some(p) = n.input.first().and_then(|x| view.producer(x)).map(|p| &g.node[p])
            && matches!(op(p), "Conv" | "Gemm" | "MatMul" | "Add")
        {
            owner = p;
        }
        let key = node_key(owner).to_owned();
        op_of.insert(key.clone(), op(owner).to_owned());
        for o in &n.output {
            of_value.insert(o.clone(), key.clone());
        }
        of_value.insert(node_key(n).to_owned(), key.clone());
    }
    (of_value, op_of)
}

fn attribute(times: &[NodeTime], of_value: &HashMap<String, String>) -> BTreeMap<String, f64> {
    let mut per_layer: BTreeMap<String, f64> = BTreeMap::new();
    for t in times {
        let names = std::iter::once(t.name.as_str()).chain(t.outputs.iter().map(String::as_str));
        if let Some(layer) = names.filter_map(|s| of_value.get(s).or_else(|| of_value.get(strip(s)))).next() {
            *per_layer.entry(layer.clone()).or_default() += t.micros;
        }
    }
    per_layer
}

/// The layers whose weight's `DequantizeLinear` shows in the int8 profile: ONNX Runtime
/// folds a weight's dequantize into the integer kernel it fuses, so one that runs at every
/// inference means the layer found none. Weights are named in the float model; the
/// runtime names their dequantize `w.DQ`/`w_DequantizeLinear` (see [`strip`]).
/// Each such layer with its dequantizes' time, which is part of its int8 cost.
fn unfused_layers(fp32: &Model, int8_times: &[NodeTime]) -> HashMap<String, f64> {
    let g = fp32.graph();
    let inits: std::collections::HashSet<&str> = g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let mut reader: HashMap<&str, String> = HashMap::new();
    for n in g.node.iter().filter(|n| timed(op(n))) {
        for w in n.input.iter().filter(|w| inits.contains(w.as_str())) {
            reader.entry(w.as_str()).or_insert_with(|| node_key(n).to_owned());
        }
    }
    let mut unfused: HashMap<String, f64> = HashMap::new();
    for t in int8_times.iter().filter(|t| t.op_type == "DequantizeLinear") {
        if let Some(layer) = reader.get(strip(&t.name)) {
            *unfused.entry(layer.clone()).or_default() += t.micros;
        }
    }
    unfused
}

/// Every quantizable layer's time in `fp32` (the float model the int8 one was built from)
/// and in `int8`, from `runs` profiled runs of each on `inputs` (one row).
pub fn compare(fp32: &Model, int8: &Model, inputs: &BTreeMap<String, TensorValue>, runs: usize, cfg: &SessionConfig) -> Result<Vec<LayerTiming>> {
    let feeds: Vec<(&str, &TensorValue)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let (of_value, op_of) = layers(fp32);
    let f = attribute(&profile_nodes(fp32, &feeds, runs, cfg)?, &of_value);
    let int8_times = profile_nodes(int8, &feeds, runs, cfg)?;
    let q = attribute(&int8_times, &of_value);
    let unfused = unfused_layers(fp32, &int8_times);
    Ok(op_of
        .iter()
        .filter(|(_, o)| timed(o))
        .filter_map(|(k, o)| {
            let dequantize = unfused.get(k).copied();
            let (a, b) = (f.get(k).copied().unwrap_or(0.0), q.get(k).copied().unwrap_or(0.0) + dequantize.unwrap_or(0.0));
            (a > 0.0 || b > 0.0).then(|| LayerTiming { layer: k.clone(), op_type: o.clone(), fp32_us: a, int8_us: b, unfused: dequantize.is_some() })
        })
        .collect())
}

/// [`compare`], cached by both models' hashes, the CPU and the runtime.
pub fn compare_cached(fp32: &Model, int8: &Model, inputs: &BTreeMap<String, TensorValue>, runs: usize, cfg: &SessionConfig) -> Result<Vec<LayerTiming>> {
    let cpu = crate::eval::cpu_info();
    // `v2`: timings carry `unfused` (entries written before it would read as fused);
    // `v3`: recurrent layers are timed.
    let key = format!("v3|{}|{}|{}|{:?}|{}|{}|{runs}", fp32.sha256()?, int8.sha256()?, cpu.model, cpu.features, crate::runtime::ORT_VERSION, cfg.intra_threads);
    if let Some(hit) = crate::cache::load("kernels", &key) {
        return Ok(hit);
    }
    let timings = compare(fp32, int8, inputs, runs, cfg)?;
    crate::cache::store("kernels", &key, &timings);
    Ok(timings)
}

/// Total kernel time of `model` on `inputs`, in microseconds: the sum of its nodes'
/// median times ([`profile_nodes`]).
pub fn total_us(model: &Model, inputs: &BTreeMap<String, TensorValue>, runs: usize, cfg: &SessionConfig) -> Result<f64> {
    let feeds: Vec<(&str, &TensorValue)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(profile_nodes(model, &feeds, runs, cfg)?.iter().map(|t| t.micros).sum())
}

/// A float layer must save more than this share of the whole model's time to stay float.
const WHOLE_MODEL_MARGIN: f64 = 0.02;
/// Beyond this many timed float layers, the whole-model check compares all of them against
/// none, not each one (each trial is a profiled model).
const MAX_ONE_BY_ONE: usize = 6;

/// Confirms per-layer float choices on the whole model. A layer judged alone leaves out
/// what keeping it float costs around it: ONNX Runtime reorders a float Conv's output out of
/// its blocked layout, transposes it for the next NHWC integer kernel and quantizes it.
/// DNSMOS's first Conv (one input channel) took 17.9 ms in int8 against 3.9 ms in float,
/// yet kept float the model took 123 ms against 108 ms all in int8: 23 ms of
/// ReorderOutput, Transpose and QuantizeLinear around it.
///
/// `chosen` are the layers the per-layer rule keeps float; `build` makes the model with a
/// given set kept float. Layers the runtime left [`unfused`](LayerTiming::unfused) stay
/// float (their int8 form is their float form plus a dequantize). The timed ones are
/// dropped one at a time, the drop that makes the model fastest first, while dropping one
/// makes the whole model faster by more than [`WHOLE_MODEL_MARGIN`]. Cached like
/// [`compare_cached`], so the same model on the same kind of machine gets the same layers.
pub fn confirm(
    all_int8: &Model,
    chosen: Vec<LayerTiming>,
    inputs: &BTreeMap<String, TensorValue>,
    cfg: &SessionConfig,
    build: impl Fn(&[String]) -> Result<Model>,
) -> Result<Vec<LayerTiming>> {
    let (fixed, mut timed): (Vec<LayerTiming>, Vec<LayerTiming>) = chosen.into_iter().partition(|t| t.unfused);
    if timed.is_empty() {
        return Ok(fixed);
    }
    let cpu = crate::eval::cpu_info();
    let names = |ts: &[LayerTiming]| ts.iter().map(|t| t.layer.clone()).collect::<Vec<_>>();
    let key = format!(
        "{}|{:?}|{:?}|{}|{:?}|{}|{}",
        all_int8.sha256()?,
        names(&fixed),
        names(&timed),
        cpu.model,
        cpu.features,
        crate::runtime::ORT_VERSION,
        cfg.intra_threads
    );
    if let Some(kept) = crate::cache::load::<Vec<String>>("kernels-whole", &key) {
        timed.retain(|t| kept.contains(&t.layer));
        return Ok(fixed.into_iter().chain(timed).collect());
    }
    let with = |timed: &[LayerTiming]| -> Result<f64> {
        let keys: Vec<String> = names(&fixed).into_iter().chain(names(timed)).collect();
        total_us(&build(&keys)?, inputs, 50, cfg)
    };
    let mut best = with(&timed)?;
    while !timed.is_empty() {
        let trials: Vec<Vec<LayerTiming>> = if timed.len() <= MAX_ONE_BY_ONE {
            (0..timed.len()).map(|i| timed.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| t.clone()).collect()).collect()
        } else {
            vec![Vec::new()]
        };
        let mut scored = Vec::new();
        for trial in trials {
            scored.push((with(&trial)?, trial));
        }
        let Some((t, trial)) = scored.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)) else { break };
        if t >= best * (1.0 - WHOLE_MODEL_MARGIN) {
            break;
        }
        (best, timed) = (t, trial);
    }
    crate::cache::store("kernels-whole", &key, &names(&timed));
    Ok(fixed.into_iter().chain(timed).collect())
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn runtime_names_strip_back_to_the_value() {
        assert_eq!(strip("conv1_out.q"), "conv1_out");
        assert_eq!(strip("batch_norm_31.tmp_2_nchwc"), "batch_norm_31.tmp_2");
        assert_eq!(strip("Conv@7_token_99"), "Conv@7");
        assert_eq!(strip("x.dq/duplicated"), "x");
        assert_eq!(strip("my_token_x"), "my_token_x");
    }
}
