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
    pub fn slower_in_int8(&self) -> bool {
        let weighted = matches!(self.op_type.as_str(), "Conv" | "Gemm" | "MatMul");
        weighted && self.fp32_us > 0.0 && self.int8_us > self.fp32_us * 1.5 + 2.0
    }

    /// "Conv 'c1': int8 264 µs vs fp32 44 µs (ONNX Runtime profile, batch 1)".
    pub fn reason(&self) -> String {
        format!("{} '{}': int8 {:.0} µs vs fp32 {:.0} µs (ONNX Runtime profile, batch 1)", self.op_type, self.layer, self.int8_us, self.fp32_us)
    }
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
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

/// Every quantizable layer's time in `fp32` (the float model the int8 one was built from)
/// and in `int8`, from `runs` profiled runs of each on `inputs` (one row).
pub fn compare(fp32: &Model, int8: &Model, inputs: &BTreeMap<String, TensorValue>, runs: usize, cfg: &SessionConfig) -> Result<Vec<LayerTiming>> {
    let feeds: Vec<(&str, &TensorValue)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let (of_value, op_of) = layers(fp32);
    let f = attribute(&profile_nodes(fp32, &feeds, runs, cfg)?, &of_value);
    let q = attribute(&profile_nodes(int8, &feeds, runs, cfg)?, &of_value);
    Ok(op_of
        .iter()
        .filter(|(_, o)| QUANTIZABLE.contains(&o.as_str()))
        .filter_map(|(k, o)| {
            let (a, b) = (f.get(k).copied().unwrap_or(0.0), q.get(k).copied().unwrap_or(0.0));
            (a > 0.0 || b > 0.0).then(|| LayerTiming { layer: k.clone(), op_type: o.clone(), fp32_us: a, int8_us: b })
        })
        .collect())
}

/// [`compare`], cached by both models' hashes, the CPU and the runtime.
pub fn compare_cached(fp32: &Model, int8: &Model, inputs: &BTreeMap<String, TensorValue>, runs: usize, cfg: &SessionConfig) -> Result<Vec<LayerTiming>> {
    let cpu = crate::eval::cpu_info();
    let key = format!("{}|{}|{}|{:?}|{}|{}|{runs}", fp32.sha256()?, int8.sha256()?, cpu.model, cpu.features, crate::runtime::ORT_VERSION, cfg.intra_threads);
    if let Some(hit) = crate::cache::load("kernels", &key) {
        return Ok(hit);
    }
    let timings = compare(fp32, int8, inputs, runs, cfg)?;
    crate::cache::store("kernels", &key, &timings);
    Ok(timings)
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
