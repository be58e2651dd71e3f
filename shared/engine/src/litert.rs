//! An exported `.tflite` measured in LiteRT on the evaluation set: the task metric, top-1
//! agreement and cosine with the ONNX model it came from (in ONNX Runtime, same rows), and
//! the single-row P50. The library is found like ONNX Runtime's: `LITERT_LIB_PATH`; beside
//! the executable; the checkout's `.deps/litert/` (`make litert`); the cache's `litert/`.

#[allow(unsafe_code)]
mod ffi;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ndarray::{Array2, ArrayView2};
use tamp_onnx::{Model, TensorValue};

pub use ffi::{ElementType, LiteRt, Runner};

use crate::dataset::Dataset;
use crate::error::{EngineError, Result};
use crate::metrics::Targets;
use crate::runtime::SessionConfig;

/// The shared library's file name in the wheel.
pub const LIB_NAME: &str = "libLiteRt.so";
/// The `ai-edge-litert` release the bindings were written against.
pub const LITERT_VERSION: &str = "2.3.0";

static LOADED: OnceLock<std::result::Result<LiteRt, String>> = OnceLock::new();

/// Where `libLiteRt.so` is looked for, in order (as ONNX Runtime's library is).
pub fn library_candidates() -> Vec<PathBuf> {
    crate::runtime::dylib_candidates("LITERT_LIB_PATH", LIB_NAME, "litert")
}

/// The loaded library, or why it could not be loaded (once per process).
pub fn runtime() -> std::result::Result<&'static LiteRt, String> {
    LOADED
        .get_or_init(|| {
            let candidates = library_candidates();
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                return Err(format!("{LIB_NAME} not found (looked in {}); run `make litert` or set LITERT_LIB_PATH", tried.join(", ")));
            };
            LiteRt::load(path).map_err(|e| format!("{}: {e}", path.display()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A `.tflite` measured beside its ONNX source.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub metric: f64,
    pub onnx_metric: f64,
    pub top1_agreement: f64,
    pub cosine: f64,
    pub rows: usize,
    pub latency_ms_p50: f64,
    pub onnx_latency_ms_p50: f64,
}

/// One row of every input, NHWC for 4-D inputs (the exporter's layout), flattened.
fn row_inputs(data: &Dataset, row: usize, names: &[String]) -> Result<Vec<Vec<f32>>> {
    let sel = data.select(&[row])?;
    names
        .iter()
        .map(|n| {
            let v = sel.get(n).ok_or_else(|| EngineError::Config(format!("{} has no array '{n}' (a .tflite input)", data.path.display())))?;
            let TensorValue::F32(a) = v else { return Err(EngineError::Config(format!("input '{n}' is not float32: the .tflite takes float inputs"))) };
            let a = if a.ndim() == 4 { a.view().permuted_axes(ndarray::IxDyn(&[0, 2, 3, 1])).as_standard_layout().to_owned() } else { a.clone() };
            Ok(a.iter().copied().collect())
        })
        .collect()
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `tflite` in LiteRT (1 thread) on `indices` rows of `data`, and `onnx` in ONNX
/// Runtime on the same rows: the metric of each, their agreement, and each one's P50 over
/// `latency_runs` single-row runs after 10 warm-up runs. `inputs` are the `.tflite`'s input
/// names in order (the ONNX input names), `output` the scored output.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    tflite: &Path,
    onnx: &Model,
    data: &Dataset,
    indices: &[usize],
    metric: &str,
    output: Option<&str>,
    inputs: &[String],
    latency_runs: usize,
) -> Result<Measured> {
    let rt = runtime().map_err(EngineError::Config)?;
    let mut runner = Runner::new(rt, tflite, 1)?;
    let out_names: Vec<String> = runner.outputs().into_iter().map(|(n, _, _)| n).collect();
    let out_idx = output.and_then(|o| out_names.iter().position(|n| n == o)).unwrap_or(0);
    let mut rows = Vec::with_capacity(indices.len());
    for &r in indices {
        let x = row_inputs(data, r, inputs)?;
        let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
        let mut outs = runner.run(&refs)?;
        rows.push(outs.swap_remove(out_idx));
    }
    let width = rows.first().map_or(0, Vec::len);
    let lite = Array2::from_shape_vec((rows.len(), width), rows.concat()).map_err(|e| EngineError::Config(format!("LiteRT outputs: {e}")))?;
    let reference = crate::eval::output_rows(onnx, data, indices, output, &SessionConfig::default())?;
    let (cosine, top1_agreement) = crate::eval::agreement(&reference, &lite);
    let score = |out: &Array2<f32>| -> Result<f64> {
        let mut active = crate::eval::active_metrics(&[metric.to_owned()], data)?;
        let classes = data.class_labels(indices);
        let values = data.value_labels(indices).map(|v| crate::eval::as_rows(&TensorValue::F32(v))).transpose()?;
        let targets = Targets { classes: classes.as_deref(), values: values.as_ref().map(|v| v.view()) };
        for (_, m) in active.iter_mut() {
            m.update(ArrayView2::from(out), targets)?;
        }
        active.first_mut().map_or_else(|| Err(EngineError::Config(format!("metric '{metric}' produced no value"))), |(_, m)| m.finish())
    };
    let (value, onnx_value) = (score(&lite)?, score(&reference)?);

    // Latency: one row, warmed up, each runtime on its own.
    let first = indices.first().copied().unwrap_or(0);
    let x = row_inputs(data, first, inputs)?;
    let refs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
    let mut lite_t = Vec::with_capacity(latency_runs);
    for i in 0..latency_runs + 10 {
        let t = Instant::now();
        runner.run(&refs)?;
        if i >= 10 {
            lite_t.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut session = crate::runtime::Session::from_model(onnx, &SessionConfig { intra_threads: 1, ..SessionConfig::default() })?;
    let feed = data.select(&[first])?;
    let feed: Vec<(&str, &TensorValue)> = feed.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut onnx_t = Vec::with_capacity(latency_runs);
    for i in 0..latency_runs + 10 {
        let t = Instant::now();
        session.run(&feed)?;
        if i >= 10 {
            onnx_t.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Measured {
        metric: value,
        onnx_metric: onnx_value,
        top1_agreement,
        cosine,
        rows: indices.len(),
        latency_ms_p50: p50(lite_t),
        onnx_latency_ms_p50: p50(onnx_t),
    })
}
