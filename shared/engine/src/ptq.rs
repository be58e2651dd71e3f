//! Static post-training quantization, end to end: fold batch norms, plan which activations
//! to quantize, calibrate them in one streaming pass, and apply the QDQ pass. Deterministic:
//! the same model, data, seed and config give a byte-identical model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tamp_onnx::patch::run_to_fixpoint;
use tamp_onnx::{Model, Pass};

use crate::calibrate::{ChannelAxis, Collector, Method, Range, StatRequest, ValueStats, collect_with};
use crate::calibrate_auto as auto;
use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::kernels::{self, LayerTiming};
use crate::passes::bias_correct::{self, CorrectedLayer};
use crate::passes::dynamic::DynamicCounts;
use crate::passes::equalize::{self, EqualizedPair};
use crate::passes::pad_channels::PadInputChannels;
use crate::passes::{
    DynamicConfig, FoldBatchNorm, NBitsConfig, QuantizeConfig, QuantizeConv4, QuantizeDynamic, QuantizeNBits, QuantizeQdq, QuantizeSubgraphWeights, conv4,
    quantize,
};
use crate::runtime::SessionConfig;

/// Everything a static PTQ run needs besides the model and data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PtqConfig {
    pub method: Method,
    /// Calibration rows, drawn with `seed` (all rows when the set is smaller).
    pub samples: usize,
    pub seed: u64,
    pub batch_size: usize,
    /// Histogram bins for percentile/entropy/MSE.
    pub bins: usize,
    pub fold_batch_norm: bool,
    /// Cross-layer equalization of Conv → [Relu] → Conv pairs before calibration.
    pub cross_layer_equalization: bool,
    /// Also gather the per-channel input means bias correction needs (same pass).
    pub bias_correction: bool,
    pub quantize: QuantizeConfig,
    pub session: SessionConfig,
    /// The output the quality is judged on: `auto` compares candidates on it alone (every
    /// float output when unset). SLANet's table structure and its cell boxes favour
    /// different clippings.
    pub output: Option<String>,
}

impl Default for PtqConfig {
    fn default() -> Self {
        // The recipe's defaults are the only ones: `tamp quantize` and a recipe's `ptq: {}` agree.
        let c = tamp_domain::recipe::Calibration::default();
        Self {
            method: Method::from(&c),
            samples: c.samples,
            seed: c.seed,
            batch_size: 32,
            bins: c.bins,
            fold_batch_norm: true,
            cross_layer_equalization: false,
            bias_correction: true,
            quantize: QuantizeConfig::default(),
            session: SessionConfig { intra_threads: 2, intra_spinning: false, ..SessionConfig::default() },
            output: None,
        }
    }
}

/// What a PTQ run did, for reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtqReport {
    pub method: Method,
    pub calibration_rows: usize,
    /// Padded token sequences were calibrated at their true lengths (pad positions left out).
    #[serde(default)]
    pub calibration_trimmed_padding: bool,
    pub folded_batch_norms: usize,
    pub quantized_activations: usize,
    pub quantized_weights: usize,
    /// Weights inside If/Loop/Scan bodies stored int8 (read through DequantizeLinear).
    #[serde(default)]
    pub subgraph_weights: usize,
    /// Convs whose one to three input channels were padded to four
    /// ([`crate::passes::pad_channels`]: ONNX Runtime's faster integer path, same values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub padded_channels: Vec<String>,
    /// Nodes kept in float on request (accuracy-aware fallback, `keep_float`).
    pub excluded: Vec<String>,
    /// Nodes kept in float because ONNX Runtime runs them slower in int8
    /// ([`quantize::slow_in_int8`]).
    #[serde(default)]
    pub float_for_speed: Vec<String>,
    /// Why, per layer: its measured int8 and fp32 kernel times.
    #[serde(default)]
    pub float_for_speed_reasons: Vec<String>,
    /// Ops left in float, by type (count).
    pub float_ops: BTreeMap<String, usize>,
    /// Pairs cross-layer equalization balanced.
    #[serde(default)]
    pub equalized: Vec<EqualizedPair>,
    /// Layers whose bias absorbed their weight quantization error.
    #[serde(default)]
    pub bias_corrected: Vec<CorrectedLayer>,
    pub ranges: BTreeMap<String, Range>,
    /// With `method: auto`: each candidate's output cosine to fp32 on the calibration rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method_trials: Vec<auto::MethodTrial>,
}

fn count(model: &Model, op: &str) -> usize {
    model.graph().node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count()
}

/// A calibrated model: batch norms folded and every candidate activation's range measured,
/// so candidates that differ only in what stays float are built without recalibrating.
#[derive(Debug, Clone)]
pub struct Calibrated {
    pub folded: Model,
    pub folded_batch_norms: usize,
    pub calibration_rows: usize,
    pub method: Method,
    pub ranges: BTreeMap<String, Range>,
    pub equalized: Vec<EqualizedPair>,
    /// Per-channel input means of the weighted nodes (for bias correction), by node key.
    pub input_means: Option<BTreeMap<String, Vec<f64>>>,
    /// Padded token sequences were calibrated at their true lengths.
    pub trimmed_padding: bool,
    /// One calibration row, for measuring which layers run faster in float ([`kernels`]).
    pub probe: Option<BTreeMap<String, tamp_onnx::TensorValue>>,
    /// The per-layer timings, measured on the first `quantize` call and reused by the rest
    /// (the accuracy fallback builds many variants of one calibration).
    pub timings: std::sync::OnceLock<Vec<LayerTiming>>,
    /// With `method: auto`: each candidate's output cosine to fp32 (`method` is the one kept).
    pub method_trials: Vec<auto::MethodTrial>,
}

/// The values whose per-channel means bias correction needs: every non-constant input of a
/// Conv/Gemm with a constant weight → (the readers' node keys, the channel axis).
fn mean_readers(model: &Model) -> BTreeMap<String, (Vec<String>, ChannelAxis)> {
    let g = model.graph();
    let view = tamp_onnx::GraphView::new(g);
    let mut readers: BTreeMap<String, (Vec<String>, ChannelAxis)> = BTreeMap::new();
    for n in &g.node {
        let op = n.op_type.as_deref().unwrap_or_default();
        if !matches!(op, "Conv" | "Gemm") || n.input.get(1).is_none_or(|w| view.constant(w).is_none()) {
            continue;
        }
        if let Some(x) = n.input.first().filter(|x| view.constant(x).is_none()) {
            let axis = if op == "Conv" { ChannelAxis::Second } else { ChannelAxis::Last };
            readers.entry(x.clone()).or_insert_with(|| (Vec::new(), axis)).0.push(quantize::node_key(n).to_owned());
        }
    }
    readers
}

/// Folds batch norms and calibrates every activation the QDQ pass could quantize, in one
/// streaming run over `cfg.samples` seeded rows of `data`.
pub fn calibrate(model: &Model, data: &Dataset, cfg: &PtqConfig) -> Result<Calibrated> {
    let folded = if cfg.fold_batch_norm { run_to_fixpoint(model, &[&FoldBatchNorm], 4)? } else { model.clone() };
    let folded_batch_norms = count(model, "BatchNormalization") - count(&folded, "BatchNormalization");
    let (folded, equalized) = match cfg.cross_layer_equalization.then(|| equalize::equalize(&folded, 8)).transpose()?.flatten() {
        Some((patch, pairs)) => (patch.apply(&folded, "cross-layer-equalization")?, pairs),
        None => (folded, Vec::new()),
    };
    let values = quantize::plan(&folded, &Default::default())?;
    if values.is_empty() {
        return Err(EngineError::Config(
            "nothing to quantize statically: the model has no float activations between quantizable ops at its top level (weights inside If/Loop bodies: use dynamic quantization, `mode: dynamic` / `--dynamic`)".into(),
        ));
    }
    let requests: Vec<StatRequest> = values.iter().map(|v| StatRequest { value: v.clone(), method: cfg.method }).collect();
    let indices = data.sample(cfg.samples, cfg.seed);
    // Bias correction's per-channel input means come from the same streaming run.
    let readers = if cfg.bias_correction { mean_readers(&folded) } else { BTreeMap::new() };
    let mut collector = Collector::new(&requests, cfg.bins);
    for (value, (_, axis)) in &readers {
        collector = collector.with_channel_means(value, *axis);
    }
    let (collector, trimmed_padding) = collect_with(&folded, data, &indices, collector, cfg.batch_size, &cfg.session)?;
    let (stats, value_means) = collector.finish_with_means();
    let first = if cfg.method == Method::Auto { Method::MinMax } else { cfg.method };
    let ranges = auto::ranges_for(&stats, first)?;
    let input_means = cfg.bias_correction.then(|| {
        let mut by_node = BTreeMap::new();
        for (value, m) in value_means {
            for key in &readers[&value].0 {
                by_node.insert(key.clone(), m.clone());
            }
        }
        by_node
    });
    let probe = indices.first().map(|&i| data.select(&[i])).transpose()?;
    let mut calibrated = Calibrated {
        folded,
        folded_batch_norms,
        calibration_rows: indices.len(),
        method: first,
        ranges,
        equalized,
        input_means,
        trimmed_padding,
        probe,
        timings: std::sync::OnceLock::new(),
        method_trials: Vec::new(),
    };
    if cfg.method == Method::Auto {
        // Two folds: each half's ranges judged on the other half's rows, so a clip that only
        // fits the rows it was measured on is not rewarded. Too few rows for halves: one fold.
        let folds = if indices.len() >= 2 * auto::MIN_FOLD_ROWS {
            let (a, b): (Vec<usize>, Vec<usize>) = (indices.iter().step_by(2).copied().collect(), indices.iter().skip(1).step_by(2).copied().collect());
            let half = |rows: &[usize]| -> Result<_> {
                let (c, _) = collect_with(&calibrated.folded, data, rows, Collector::new(&requests, cfg.bins), cfg.batch_size, &cfg.session)?;
                Ok(c.finish())
            };
            let (sa, sb) = (half(&a)?, half(&b)?);
            vec![(sa, b), (sb, a)]
        } else {
            vec![(stats.clone(), indices.clone())]
        };
        calibrated.choose_method(&stats, &folds, data, cfg)?;
    }
    Ok(calibrated)
}

impl Calibrated {
    /// `auto`: per fold (statistics, held-out rows), builds every candidate's int8 model
    /// from those statistics (all layers int8: measured speed does not change which clipping
    /// is closest) and runs it on the held-out rows (at most [`auto::AUTO_ROWS`] in all); the
    /// candidate whose outputs are closest to fp32's on average keeps its ranges from `stats`.
    fn choose_method(
        &mut self,
        stats: &BTreeMap<String, ValueStats>,
        folds: &[(BTreeMap<String, ValueStats>, Vec<usize>)],
        data: &Dataset,
        cfg: &PtqConfig,
    ) -> Result<()> {
        let per_fold = (auto::AUTO_ROWS / folds.len().max(1)).max(1);
        let rows: Vec<&[usize]> = folds.iter().map(|(_, r)| &r[..r.len().min(per_fold)]).collect();
        let reference = rows.iter().map(|r| auto::float_outputs(&self.folded, data, r, cfg.output.as_deref(), &cfg.session)).collect::<Result<Vec<_>>>()?;
        let build = QuantizeConfig { float_slow_layers: false, ..cfg.quantize.clone() };
        for method in Method::AUTO_CANDIDATES {
            let mut sum = 0.0;
            for (((fold_stats, _), r), want) in folds.iter().zip(&rows).zip(&reference) {
                self.ranges = auto::ranges_for(fold_stats, method)?;
                let (model, _) = self.build(&build, Vec::new(), Vec::new())?;
                sum += auto::fidelity(want, &auto::float_outputs(&model, data, r, cfg.output.as_deref(), &cfg.session)?);
            }
            self.method_trials.push(auto::MethodTrial { method, cosine: sum / folds.len().max(1) as f64 });
        }
        let chosen = auto::choose(&self.method_trials).unwrap_or(Method::MinMax);
        self.method = chosen;
        self.ranges = auto::ranges_for(stats, chosen)?;
        Ok(())
    }

    /// Applies the QDQ pass with `config` (per-channel, exclusions). With
    /// `float_slow_layers`, the layers ONNX Runtime runs slower in int8 than in float stay
    /// float: measured once per calibration ([`kernels`]: the fp32 and the all-int8 model
    /// profiled at batch 1 on a calibration row), or, without a row to run, by the rule
    /// [`quantize::slow_in_int8`].
    pub fn quantize(&self, config: &QuantizeConfig) -> Result<(Model, PtqReport)> {
        if !config.float_slow_layers {
            return self.build(config, Vec::new(), Vec::new());
        }
        let Some(probe) = self.probe.as_ref().filter(|_| config.measure_kernels) else {
            let rule = quantize::slow_in_int8(&self.folded).into_iter().filter(|k| !config.exclude.contains(k)).collect();
            return self.build(config, rule, Vec::new());
        };
        let timings = match self.timings.get() {
            Some(t) => t.clone(),
            None => {
                let (all, _) = self.build(config, Vec::new(), Vec::new())?;
                let cfg = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
                let t = kernels::compare_cached(&self.folded, &all, probe, 50, &cfg)?;
                let _ = self.timings.set(t.clone());
                t
            }
        };
        let slow: Vec<LayerTiming> = timings.iter().filter(|t| t.slower_in_int8() && !config.exclude.contains(&t.layer)).cloned().collect();
        let mut slow = if slow.iter().any(|t| !t.unfused) {
            let (all, _) = self.build(config, Vec::new(), Vec::new())?;
            let cfg = SessionConfig { intra_threads: 1, ..SessionConfig::default() };
            kernels::confirm(&all, slow, probe, &cfg, |keys| Ok(self.build(config, keys.to_vec(), Vec::new())?.0))?
        } else {
            slow
        };
        slow.sort_by(|a, b| a.layer.cmp(&b.layer));
        let keys = slow.iter().map(|t| t.layer.clone()).collect();
        let reasons = slow.iter().map(|t| t.reason()).collect();
        let (model, report) = self.build(config, keys, reasons)?;
        // Every layer measured slower: there is no int8 model to make that way, so the
        // all-int8 one it is (judged against the baseline like any other).
        if report.quantized_weights == 0 && report.quantized_activations == 0 {
            return self.build(config, Vec::new(), Vec::new());
        }
        Ok((model, report))
    }

    fn build(&self, config: &QuantizeConfig, float_for_speed: Vec<String>, speed_reasons: Vec<String>) -> Result<(Model, PtqReport)> {
        let requested = config;
        let merged = QuantizeConfig { exclude: config.exclude.iter().chain(&float_for_speed).cloned().collect(), ..config.clone() };
        let config = &merged;
        let (base, bias_corrected) = if config.bias_correction {
            let means = self
                .input_means
                .as_ref()
                .ok_or_else(|| EngineError::Config("bias correction needs the input means: calibrate with `bias_correction: true`".into()))?;
            match bias_correct::correct(&self.folded, means, config.per_channel, config.symmetric, &config.exclude)? {
                Some((patch, layers)) => (patch.apply(&self.folded, "bias-correction")?, layers),
                None => (self.folded.clone(), Vec::new()),
            }
        } else {
            (self.folded.clone(), Vec::new())
        };
        let pass = QuantizeQdq { config: config.clone(), ranges: self.ranges.clone() };
        let (quantized, quantized_weights) = match pass.build(&base)? {
            Some((patch, n)) => (patch.apply(&base, pass.name())?, n),
            // Every layer excluded (the accuracy fallback's "all float" probe): the float model.
            None if !config.exclude.is_empty() => (base.clone(), 0),
            None => {
                let qdq = base.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("QuantizeLinear")).count();
                return Err(EngineError::Config(if qdq > 0 {
                    format!("the model is already quantized ({qdq} QuantizeLinear nodes): Tamp quantizes float models; give it the float original")
                } else {
                    "the quantization pass found nothing to change".into()
                }));
            }
        };
        // A recurrent layer kept float (for speed, or excluded) keeps its float W and R.
        let weights = QuantizeSubgraphWeights { keep_float: config.exclude.iter().cloned().collect(), ..Default::default() };
        let (quantized, subgraph_weights) = match weights.apply(&quantized)? {
            Some((m, n)) => (m, n),
            None => (quantized, 0),
        };
        let (quantized, padded_channels) = match PadInputChannels.apply(&quantized)? {
            Some((m, padded)) => (m, padded),
            None => (quantized, Vec::new()),
        };
        let mut float_ops = BTreeMap::new();
        let gates = quantize::gates(&self.folded);
        for n in &quantized.graph().node {
            let op = n.op_type.as_deref().unwrap_or("");
            // The bias-scale Muls (`….bias.S`) are constants ORT folds at load, not float compute.
            let bias_scale = op == "Mul" && n.name.as_deref().is_some_and(|x| x.ends_with(".bias.S"));
            // A hard-swish carried in int8 (QLinearAdd + QLinearMul).
            let bias_scale = bias_scale || n.name.as_deref().is_some_and(|x| x.ends_with(".int8.Add") || x.ends_with(".int8.Mul"));
            // The zero channels a small Conv's input gains (`….pad4.Pad`), part of that Conv.
            let bias_scale = bias_scale || crate::passes::pad_channels::is_padding(n);
            if !quantize::carried(n, &gates, &config.exclude) && op != "QuantizeLinear" && op != "DequantizeLinear" && !bias_scale {
                *float_ops.entry(op.to_owned()).or_insert(0) += 1;
            }
        }
        let quantized_activations = quantize::plan(&self.folded, &config.exclude)?.len();
        let report = PtqReport {
            method: self.method,
            calibration_rows: self.calibration_rows,
            calibration_trimmed_padding: self.trimmed_padding,
            folded_batch_norms: self.folded_batch_norms,
            quantized_activations,
            quantized_weights,
            subgraph_weights,
            padded_channels,
            excluded: requested.exclude.iter().cloned().collect(),
            float_for_speed,
            float_for_speed_reasons: speed_reasons,
            float_ops,
            ranges: self.ranges.clone(),
            equalized: self.equalized.clone(),
            bias_corrected,
            method_trials: self.method_trials.clone(),
        };
        Ok((quantized, report))
    }
}

/// Quantizes `model` with calibration rows from `data`.
pub fn quantize_static(model: &Model, data: &Dataset, cfg: &PtqConfig) -> Result<(Model, PtqReport)> {
    calibrate(model, data, cfg)?.quantize(&cfg.quantize)
}

/// Dynamic int8 quantization (weights ahead of time, activations at run time): no
/// calibration data. Deterministic.
pub fn quantize_dynamic(model: &Model, cfg: &DynamicConfig) -> Result<(Model, DynamicCounts)> {
    let pass = QuantizeDynamic { config: cfg.clone() };
    let (top, mut counts) = match pass.build(model)? {
        Some((patch, counts)) => (patch.apply(model, pass.name())?, counts),
        None => (model.clone(), DynamicCounts::default()),
    };
    // Weights inside If/Loop/Scan bodies, which the top-level pass cannot reach.
    let sub = QuantizeSubgraphWeights::default();
    let q = match sub.apply(&top)? {
        Some((m, n)) => {
            counts.subgraph_weights = n;
            m
        }
        None => top,
    };
    if counts.matmuls + counts.embeddings + counts.subgraph_weights == 0 {
        return Err(EngineError::Config(
            "dynamic quantization found nothing to quantize: no MatMul by a constant 2-D weight, no constant embedding table and no Conv/MatMul/Gemm weight inside an If/Loop/Scan body".into(),
        ));
    }
    Ok((q, counts))
}

/// 4-bit weight-only quantization: MatMuls and Gemms by constant weights as `MatMulNBits`,
/// Conv weights as int4 behind `DequantizeLinear` (batch norms folded into them first; opset
/// 21), then int8 embedding tables as in [`quantize_dynamic`]. Returns the model and the
/// number of layers with 4-bit weights.
pub fn quantize_4bit(model: &Model, cfg: &NBitsConfig) -> Result<(Model, usize)> {
    quantize_4bit_corrected(model, cfg, &BTreeMap::new())
}

/// Calibration rows for bias-correcting 4-bit Conv weights: `samples` rows drawn with `seed`.
#[derive(Debug, Clone, Copy)]
pub struct MeanRows<'a> {
    pub data: &'a Dataset,
    pub samples: usize,
    pub seed: u64,
}

/// Per-channel means of every Conv/Gemm input of `model` with its batch norms folded (the
/// model the 4-bit pass quantizes) over `rows`, by the reader's node key (what bias
/// correction reads), in one streaming run. Measure once and pass them to every
/// [`quantize_4bit_corrected`] of the same model.
pub fn conv4_input_means(model: &Model, rows: &MeanRows<'_>) -> Result<BTreeMap<String, Vec<f64>>> {
    let folded = match FoldBatchNorm.apply(model)? {
        Some((m, _)) => m,
        None => model.clone(),
    };
    let model = &folded;
    let readers = mean_readers(model);
    let cfg = PtqConfig::default();
    let mut collector = Collector::new(&[], cfg.bins);
    for (value, (_, axis)) in &readers {
        collector = collector.with_channel_means(value, *axis);
    }
    let indices = rows.data.sample(rows.samples, rows.seed);
    let (collector, _) = collect_with(model, rows.data, &indices, collector, cfg.batch_size, &cfg.session)?;
    let mut by_node = BTreeMap::new();
    for (value, m) in collector.finish_with_means().1 {
        for key in &readers[&value].0 {
            by_node.insert(key.clone(), m.clone());
        }
    }
    Ok(by_node)
}

/// The float `folded` model (batch norms folded) with each Conv that [`quantize_4bit`] gives
/// int4 weights taking the bias it would get from [`quantize_4bit_corrected`], weights left
/// float: where 4-bit QAT starts, so that its forward pass (int4 weights fake-quantized)
/// begins at the bias-corrected PTQ point. The trained model is then quantized without a
/// correction (training has fitted the biases to the int4 weights).
pub fn with_4bit_corrected_biases(folded: &Model, cfg: &NBitsConfig, means: &BTreeMap<String, Vec<f64>>) -> Result<Model> {
    let conv4 = QuantizeConv4 { exclude: cfg.exclude.clone(), input_means: means.clone(), ..QuantizeConv4::default() };
    let Some((q, _)) = conv4.apply(folded)? else { return Ok(folded.clone()) };
    let g = folded.graph();
    let qg = q.graph();
    let by_key: BTreeMap<&str, &tamp_onnx::proto::NodeProto> = qg.node.iter().map(|n| (quantize::node_key(n), n)).collect();
    let mut patch = tamp_onnx::Patch::default();
    for (i, n) in g.node.iter().enumerate() {
        let Some(qn) = by_key.get(quantize::node_key(n)).filter(|qn| n.op_type.as_deref() == Some("Conv") && qn.input.len() == 3) else { continue };
        let Some(bias) = qg.initializer.iter().find(|t| t.name.as_deref() == Some(qn.input[2].as_str())) else { continue };
        if n.input.len() < 3 || n.input[2].is_empty() {
            let mut m = n.clone();
            m.input.resize(2, String::new());
            m.input.push(qn.input[2].clone());
            patch.remove_nodes.insert(i);
            patch.add_nodes.push(m);
        }
        patch.add_initializers.push(bias.clone());
    }
    Ok(if patch.is_empty() { folded.clone() } else { patch.apply(folded, "4bit-bias-correction")? })
}

/// [`quantize_4bit`], with each 4-bit Conv's bias corrected for its weight error's shift of
/// the output mean where `means` ([`conv4_input_means`]) has its input's (none when empty).
pub fn quantize_4bit_corrected(model: &Model, cfg: &NBitsConfig, means: &BTreeMap<String, Vec<f64>>) -> Result<(Model, usize)> {
    let pass = QuantizeNBits { config: cfg.clone() };
    let (mut q, mut n) = match pass.build(model)? {
        Some((patch, n)) => (patch.apply(model, pass.name())?, n),
        None => (model.clone(), 0),
    };
    let conv4 = QuantizeConv4 { exclude: cfg.exclude.clone(), input_means: means.clone(), ..QuantizeConv4::default() };
    if conv4.build(&q)?.is_some() {
        let folded = match FoldBatchNorm.apply(&q)? {
            Some((m, _)) => m,
            None => q.clone(),
        };
        if let Some((m, convs)) = conv4.apply(&folded)? {
            q = m;
            q.proto.ir_version = Some(q.proto.ir_version.unwrap_or(conv4::IR_VERSION).max(conv4::IR_VERSION));
            n += convs.len();
        }
    }
    if n == 0 {
        let blocked = conv4::opset21_blocker(model).map(|b| format!("; Conv weights need opset 21, and {b}")).unwrap_or_default();
        return Err(EngineError::Config(format!(
            "4-bit quantization found no MatMul or Gemm (no transA, alpha = beta = 1) by a constant 2-D weight of at least {} elements, and no Conv weight of at least {} elements{blocked}",
            cfg.min_elements,
            QuantizeConv4::default().min_elements
        )));
    }
    let emb = QuantizeDynamic { config: DynamicConfig { exclude: cfg.exclude.clone(), ..DynamicConfig::default() } };
    let q = match emb.build(&q)? {
        Some((p, _)) => p.apply(&q, emb.name())?,
        None => q,
    };
    Ok((q, n))
}
