//! Evaluation of one model on one dataset: task metrics streamed batch by batch, latency,
//! throughput, peak memory and size, gathered into an [`EvalReport`] that is also the
//! `baseline.json` record (with hashes, seeds, versions and CPU features).

use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView2, Ix2};
use serde::{Deserialize, Serialize};
use tamp_onnx::{Model, TensorValue};

use crate::dataset::{Dataset, Labels, batches};
use crate::error::{EngineError, Result};
use crate::metrics::{self, Needs, Targets};
use crate::perf::{self, LatencyConfig, LatencyStats, MemoryStats, Throughput};
use crate::runtime::{self, RuntimeInfo, Session, SessionConfig};

/// What to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Metric names; empty picks `top1` for class labels and `cosine` for value labels.
    pub metrics: Vec<String>,
    /// The model output the metrics read; the first output when unset.
    pub output: Option<String>,
    pub batch_size: usize,
    /// Evaluate a seeded sample of this many rows instead of all of them.
    pub samples: Option<usize>,
    pub seed: u64,
    pub latency: LatencyConfig,
    /// Batch sizes for throughput; empty skips it.
    pub throughput_batches: Vec<usize>,
    pub throughput_runs: usize,
    pub session: SessionConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            metrics: Vec::new(),
            output: None,
            batch_size: 32,
            samples: None,
            seed: 0,
            latency: LatencyConfig::default(),
            throughput_batches: vec![1, 32],
            throughput_runs: 20,
            session: SessionConfig::default(),
        }
    }
}

/// The model side of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
    pub params: usize,
    pub opsets: Vec<(String, i64)>,
}

/// The data side of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub rows: usize,
    pub evaluated_rows: usize,
}

pub use tamp_domain::results::CpuInfo;

/// One evaluation; written as `baseline.json` for the baseline model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub tamp_version: String,
    pub onnxruntime: RuntimeInfo,
    pub model: ModelInfo,
    pub dataset: DataInfo,
    pub seed: u64,
    pub output: String,
    /// Metric name → value.
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Wall time of the metric pass (batching, inference, metrics), in seconds.
    pub eval_seconds: f64,
    /// Rows per second of the metric pass.
    pub eval_rows_per_s: f64,
    pub latency: LatencyStats,
    pub throughput: Vec<Throughput>,
    pub memory: MemoryStats,
    pub cpu: CpuInfo,
    pub session: SessionConfig,
    /// Where the metric, latency and throughput were measured: `cpu` or `cuda:<device>`.
    #[serde(default)]
    pub provider: String,
}

/// Progress reported while metrics stream.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Flattens an output to rows × features as f32.
pub fn as_rows(v: &TensorValue) -> Result<Array2<f32>> {
    let f = match v {
        TensorValue::F32(a) => a.clone(),
        TensorValue::F64(a) => a.mapv(|x| x as f32),
        TensorValue::I64(a) => a.mapv(|x| x as f32),
        TensorValue::I32(a) => a.mapv(|x| x as f32),
        other => return Err(EngineError::Config(format!("metrics need a numeric output, got {:?}", other.data_type()))),
    };
    let rows = f.shape().first().copied().unwrap_or(1);
    let cols = f.len().checked_div(rows).unwrap_or(0);
    f.as_standard_layout()
        .into_owned()
        .into_shape_with_order((rows, cols))
        .map_err(|e| EngineError::Config(e.to_string()))?
        .into_dimensionality::<Ix2>()
        .map_err(|e| EngineError::Config(e.to_string()))
}

/// The outputs of a session, one line each: `name (FLOAT [-1, 10])`.
pub fn describe_outputs(outputs: &[crate::runtime::IoSpec]) -> String {
    outputs.iter().map(|o| format!("{} ({} {:?})", o.name, o.elem.as_str_name(), o.shape)).collect::<Vec<_>>().join(", ")
}

/// The output the metrics score: `requested`, else the first. A metric is never computed on
/// an integer or boolean output (class ids, lengths, masks): its number would mean nothing.
pub fn metric_output(outputs: &[crate::runtime::IoSpec], requested: Option<&str>) -> Result<String> {
    use tamp_onnx::proto::tensor_proto::DataType;
    let chosen = match requested {
        Some(o) => outputs
            .iter()
            .find(|s| s.name == o)
            .ok_or_else(|| EngineError::Config(format!("the model has no output '{o}'; its outputs are {}", describe_outputs(outputs))))?,
        None => outputs.first().ok_or_else(|| EngineError::Config("the model has no outputs".into()))?,
    };
    if !matches!(chosen.elem, DataType::Float | DataType::Double | DataType::Float16) {
        let float: Vec<&str> = outputs.iter().filter(|o| matches!(o.elem, DataType::Float | DataType::Double)).map(|o| o.name.as_str()).collect();
        let how = if requested.is_some() { "name another" } else { "name the one to score" };
        return Err(EngineError::Config(format!(
            "output '{}' is {} {:?}: a task metric needs float scores or values, not integers; {how} with `evaluation.output` in the recipe or `--output` on the command line{} (outputs: {})",
            chosen.name,
            chosen.elem.as_str_name(),
            chosen.shape,
            if float.is_empty() { String::new() } else { format!(" — float outputs: {}", float.join(", ")) },
            describe_outputs(outputs)
        )));
    }
    Ok(chosen.name.clone())
}

pub(crate) type Active = Vec<(&'static str, Box<dyn metrics::Metric>)>;

/// The metrics to compute: `names`, or the default for the dataset's labels (top1 for
/// classes, cosine for reference values); each checked against the labels it needs.
pub(crate) fn active_metrics(names: &[String], data: &Dataset) -> Result<Active> {
    let names: Vec<String> = if names.is_empty() {
        match &data.labels {
            Some(Labels::Classes(_)) => vec!["top1".into()],
            Some(Labels::Values(_)) => vec!["cosine".into()],
            None => vec![],
        }
    } else {
        names.to_vec()
    };
    let mut active = Vec::new();
    for name in &names {
        let def = metrics::lookup(name)?;
        let ok = matches!((def.needs, &data.labels), (Needs::Classes, Some(Labels::Classes(_))) | (Needs::Values, Some(Labels::Values(_))));
        if !ok {
            let want = if def.needs == Needs::Classes { "integer class labels" } else { "float reference values" };
            return Err(EngineError::Metric {
                metric: name.clone(),
                message: format!("needs {want} in the dataset's `labels` array, which {} has not", data.path.display()),
            });
        }
        active.push((def.name, (def.make)()));
    }
    Ok(active)
}

/// The default metric name for a dataset (see [`active_metrics`]).
pub fn default_metric(data: &Dataset) -> Option<&'static str> {
    match &data.labels {
        Some(Labels::Classes(_)) => Some("top1"),
        Some(Labels::Values(_)) => Some("cosine"),
        None => None,
    }
}

/// Streams `indices` through the session in batches and finishes every metric.
#[allow(clippy::too_many_arguments)]
fn metric_pass(
    session: &mut Session,
    data: &Dataset,
    indices: &[usize],
    output: &str,
    active: &mut Active,
    batch_size: usize,
    mut kept: Option<&mut Vec<Array2<f32>>>,
    progress: Progress<'_>,
) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut done = 0;
    // A model exported with a fixed batch dimension runs at exactly that batch; rows that do
    // not fill a last batch are left out (the report's evaluated rows say how many ran).
    let (batch_size, indices) = match crate::dataset::fixed_batch(&session.inputs) {
        Some(b) => (b, &indices[..indices.len() - indices.len() % b]),
        None => (batch_size, indices),
    };
    if indices.is_empty() {
        return Err(EngineError::Config(format!("the model's batch dimension is fixed at {batch_size}, more rows than the data set offers")));
    }
    for rows in batches(indices, batch_size) {
        let batch = data.select(rows)?;
        let inputs: Vec<(&str, &TensorValue)> = batch.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let outs = session.run(&inputs)?;
        let out =
            outs.iter().find(|(k, _)| *k == output).map(|(_, v)| v).ok_or_else(|| EngineError::Config(format!("output '{output}' missing from results")))?;
        let out = as_rows(out)?;
        if done == 0 && out.ncols() < 2 && active.iter().any(|(n, _)| n.starts_with("top")) {
            return Err(EngineError::Config(format!(
                "output '{output}' has {} value per row, so top-k of class scores means nothing there; score another output (`evaluation.output` / `--output`), outputs: {}",
                out.ncols(),
                describe_outputs(&session.outputs)
            )));
        }
        let classes = data.class_labels(rows);
        let values = data.value_labels(rows).map(|v| as_rows(&TensorValue::F32(v))).transpose()?;
        let targets = Targets { classes: classes.as_deref(), values: values.as_ref().map(|v| v.view()) };
        for (_, m) in active.iter_mut() {
            m.update(ArrayView2::from(&out), targets)?;
        }
        if let Some(k) = kept.as_deref_mut() {
            k.push(out);
        }
        done += rows.len();
        progress(done, indices.len());
    }
    let mut metrics = std::collections::BTreeMap::new();
    for (name, m) in active.iter() {
        metrics.insert((*name).to_owned(), m.finish()?);
    }
    Ok(metrics)
}

/// The scored output (`output`, else the first) of an in-memory model on `indices` rows, as rows × features.
pub fn output_rows(model: &Model, data: &Dataset, indices: &[usize], output: Option<&str>, session: &SessionConfig) -> Result<Array2<f32>> {
    let mut session = Session::from_model(model, session)?;
    data.check_against(&session.inputs)?;
    let output = metric_output(&session.outputs, output)?;
    let mut parts: Vec<Array2<f32>> = Vec::new();
    metric_pass(&mut session, data, indices, &output, &mut Vec::new(), 64, Some(&mut parts), &mut |_, _| {})?;
    let views: Vec<ndarray::ArrayView2<f32>> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| EngineError::Config(format!("outputs of different widths: {e}")))
}

/// Mean per-row cosine similarity of `b` to `a`, and the share of rows whose arg-max agrees.
pub fn agreement(a: &Array2<f32>, b: &Array2<f32>) -> (f64, f64) {
    let (mut cos, mut same) = (0.0, 0usize);
    for (x, y) in a.outer_iter().zip(b.outer_iter()) {
        let dot: f64 = x.iter().zip(y.iter()).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum();
        let nx = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        let ny = y.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        cos += dot / (nx * ny).max(1e-30);
        let arg = |v: ndarray::ArrayView1<f32>| v.iter().enumerate().max_by(|p, q| p.1.total_cmp(q.1)).map(|(i, _)| i);
        same += usize::from(arg(x) == arg(y));
    }
    let n = a.nrows().max(1) as f64;
    (cos / n, same as f64 / n)
}

/// One task metric of an in-memory model on `indices` rows, untimed: what the
/// accuracy-aware fallback ranks candidates with. `output` (else the first) is scored.
pub fn score(model: &Model, data: &Dataset, indices: &[usize], metric: &str, output: Option<&str>, batch_size: usize, session: &SessionConfig) -> Result<f64> {
    let mut session = Session::from_model(model, session)?;
    data.check_against(&session.inputs)?;
    let output = metric_output(&session.outputs, output)?;
    let mut active = active_metrics(&[metric.to_owned()], data)?;
    let values = metric_pass(&mut session, data, indices, &output, &mut active, batch_size, None, &mut |_, _| {})?;
    values.get(metric).copied().ok_or_else(|| EngineError::Config(format!("metric '{metric}' produced no value")))
}

/// Evaluates `model_path` on `data`. `keep_outputs` collects the metric output of every
/// evaluated row (for `--dump-outputs`); `progress` is told rows done and rows total.
pub fn evaluate(
    model_path: &Path,
    data: &Dataset,
    cfg: &EvalConfig,
    keep_outputs: Option<&mut Vec<Array2<f32>>>,
    progress: Progress<'_>,
) -> Result<EvalReport> {
    let (model, file) = Model::load_with_info(model_path)?;
    let stats = tamp_onnx::graph::stats(model.graph());
    let ort = runtime::runtime_info()?.clone();
    let rss_before = perf::rss_mb();
    perf::reset_peak_rss();
    let mut session = Session::from_file(model_path, &cfg.session)?;
    data.check_against(&session.inputs)?;
    let output = metric_output(&session.outputs, cfg.output.as_deref())?;
    let mut active = active_metrics(&cfg.metrics, data)?;
    let indices: Vec<usize> = match cfg.samples {
        Some(n) => data.sample(n, cfg.seed),
        None => (0..data.rows).collect(),
    };
    let started = std::time::Instant::now();
    let metrics = metric_pass(&mut session, data, &indices, &output, &mut active, cfg.batch_size, keep_outputs, progress)?;
    let eval_seconds = started.elapsed().as_secs_f64();
    let latency = perf::latency(&mut session, data, cfg.latency)?;
    let throughput = perf::throughput(&mut session, data, &cfg.throughput_batches, cfg.throughput_runs)?;
    let peak = perf::peak_rss_mb();
    drop(session);
    Ok(EvalReport {
        tamp_version: crate::TAMP_VERSION.to_owned(),
        onnxruntime: ort,
        model: ModelInfo {
            path: model_path.to_owned(),
            sha256: file.sha256,
            size_bytes: file.size_bytes,
            params: stats.params,
            opsets: model.proto.opset_import.iter().map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0))).collect(),
        },
        dataset: DataInfo { path: data.path.clone(), sha256: data.sha256.clone(), rows: data.rows, evaluated_rows: indices.len() },
        seed: cfg.seed,
        output,
        metrics,
        eval_seconds,
        eval_rows_per_s: indices.len() as f64 / eval_seconds.max(1e-9),
        latency,
        throughput,
        memory: MemoryStats { peak_rss_mb: peak, session_peak_mb: (peak - rss_before).max(0.0) },
        cpu: cpu_info(),
        session: cfg.session.clone(),
        provider: cfg.session.provider(),
    })
}

/// CPU model, core count and the SIMD features that decide kernel choice.
pub fn cpu_info() -> CpuInfo {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| text.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_owned());
    let flags = field("flags").unwrap_or_default();
    let interesting = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"];
    CpuInfo {
        model: field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_owned()),
        logical_cores: std::thread::available_parallelism().map_or(1, usize::from),
        features: flags.split_whitespace().filter(|f| interesting.contains(f)).map(str::to_owned).collect(),
    }
}
