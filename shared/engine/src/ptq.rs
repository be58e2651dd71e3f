//! Static post-training quantization, end to end: fold batch norms, plan which activations
//! to quantize, calibrate them in one streaming pass, and apply the QDQ pass. Deterministic:
//! the same model, data, seed and config give a byte-identical model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tamp_onnx::{Model, Pass};
use tamp_onnx::patch::run_to_fixpoint;

use crate::calibrate::{Method, Range, StatRequest, collect};
use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::passes::dynamic::DynamicCounts;
use crate::passes::{DynamicConfig, FoldBatchNorm, NBitsConfig, QuantizeConfig, QuantizeDynamic, QuantizeNBits, QuantizeQdq, quantize};
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
    pub quantize: QuantizeConfig,
    pub session: SessionConfig,
}

impl Default for PtqConfig {
    fn default() -> Self {
        Self {
            method: Method::MinMax,
            samples: 256,
            seed: 0,
            batch_size: 32,
            bins: 2048,
            fold_batch_norm: true,
            quantize: QuantizeConfig::default(),
            session: SessionConfig { intra_threads: 1, ..SessionConfig::default() },
        }
    }
}

/// What a PTQ run did, for reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PtqReport {
    pub method: Method,
    pub calibration_rows: usize,
    pub folded_batch_norms: usize,
    pub quantized_activations: usize,
    pub quantized_weights: usize,
    /// Nodes kept in float on request (accuracy-aware fallback, `keep_float`).
    pub excluded: Vec<String>,
    /// Ops left in float, by type (count).
    pub float_ops: BTreeMap<String, usize>,
    pub ranges: BTreeMap<String, Range>,
}

fn count(model: &Model, op: &str) -> usize {
    model.graph().node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count()
}

pub(crate) fn patch_err(e: tamp_onnx::PatchError) -> EngineError {
    EngineError::Config(e.to_string())
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
}

/// Folds batch norms and calibrates every activation the QDQ pass could quantize, in one
/// streaming run over `cfg.samples` seeded rows of `data`.
pub fn calibrate(model: &Model, data: &Dataset, cfg: &PtqConfig) -> Result<Calibrated> {
    let folded = if cfg.fold_batch_norm { run_to_fixpoint(model, &[&FoldBatchNorm], 4).map_err(patch_err)? } else { model.clone() };
    let folded_batch_norms = count(model, "BatchNormalization") - count(&folded, "BatchNormalization");
    let values = quantize::plan(&folded, &Default::default())?;
    if values.is_empty() {
        return Err(EngineError::Config("nothing to quantize: the model has no float activations between quantizable ops".into()));
    }
    let requests: Vec<StatRequest> = values.iter().map(|v| StatRequest { value: v.clone(), method: cfg.method }).collect();
    let indices = data.sample(cfg.samples, cfg.seed);
    let stats = collect(&folded, data, &indices, &requests, cfg.batch_size, cfg.bins, &cfg.session)?;
    let ranges = stats.iter().map(|(k, s)| Ok((k.clone(), s.range(cfg.method)?))).collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Calibrated { folded, folded_batch_norms, calibration_rows: indices.len(), method: cfg.method, ranges })
}

impl Calibrated {
    /// Applies the QDQ pass with `config` (per-channel, exclusions).
    pub fn quantize(&self, config: &QuantizeConfig) -> Result<(Model, PtqReport)> {
        let pass = QuantizeQdq { config: config.clone(), ranges: self.ranges.clone() };
        let (patch, quantized_weights) = pass.build(&self.folded)?.ok_or_else(|| EngineError::Config("the quantization pass found nothing to change".into()))?;
        let quantized = patch.apply(&self.folded, pass.name()).map_err(patch_err)?;
        let mut float_ops = BTreeMap::new();
        for n in &quantized.graph().node {
            let op = n.op_type.as_deref().unwrap_or("");
            let excluded = config.exclude.contains(quantize::node_key(n));
            if (excluded || !quantize::QUANTIZABLE.contains(&op)) && op != "QuantizeLinear" && op != "DequantizeLinear" {
                *float_ops.entry(op.to_owned()).or_insert(0) += 1;
            }
        }
        let quantized_activations = quantize::plan(&self.folded, &config.exclude)?.len();
        let report = PtqReport {
            method: self.method,
            calibration_rows: self.calibration_rows,
            folded_batch_norms: self.folded_batch_norms,
            quantized_activations,
            quantized_weights,
            excluded: config.exclude.iter().cloned().collect(),
            float_ops,
            ranges: self.ranges.clone(),
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
    let (patch, counts) = pass.build(model)?.ok_or_else(|| EngineError::Config("dynamic quantization found nothing to quantize: no MatMul by a constant 2-D weight and no constant embedding table".into()))?;
    Ok((patch.apply(model, pass.name()).map_err(patch_err)?, counts))
}

/// 4-bit weight-only quantization of MatMuls by constant weights (`MatMulNBits`), then int8
/// embedding tables as in [`quantize_dynamic`]. Returns the model and the number of MatMuls.
pub fn quantize_4bit(model: &Model, cfg: &NBitsConfig) -> Result<(Model, usize)> {
    let pass = QuantizeNBits { config: cfg.clone() };
    let (patch, n) = pass.build(model)?.ok_or_else(|| EngineError::Config("4-bit quantization found no MatMul by a constant 2-D weight".into()))?;
    let q = patch.apply(model, pass.name()).map_err(patch_err)?;
    let emb = QuantizeDynamic { config: DynamicConfig { exclude: cfg.exclude.clone(), ..DynamicConfig::default() } };
    let q = match emb.build(&q)? {
        Some((p, _)) => p.apply(&q, emb.name()).map_err(patch_err)?,
        None => q,
    };
    Ok((q, n))
}
