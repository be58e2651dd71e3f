//! ONNX Runtime through `ort` with `load-dynamic`: finding the shared library, one
//! environment per process, sessions built from a typed [`SessionConfig`], and running
//! them on [`TensorValue`]s.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::SessionInputValue;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType, TensorRef};
use serde::{Deserialize, Serialize};
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::{Model, TensorValue};

use crate::error::{EngineError, Result};

/// The ONNX Runtime release Tamp is built and tested against (the `ort` crate's pairing).
pub const ORT_VERSION: &str = "1.31.1";
const LIB_NAME: &str = "libonnxruntime.so.1.31.1";

/// Graph optimisation level, as ONNX Runtime names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

/// Where a session runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    /// NVIDIA GPU; needs an ONNX Runtime library built with CUDA (the GPU worker image).
    Cuda { device_id: i32 },
}

/// Session options. Zero thread counts let ONNX Runtime choose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub optimization: OptimizationLevel,
    /// Tried in order; CPU is always the fallback inside ONNX Runtime.
    pub execution_providers: Vec<ExecutionProvider>,
    /// Whether idle intra-op threads spin (ORT's default, lowest latency); off where other
    /// work shares the cores (calibration's statistics thread).
    pub intra_spinning: bool,
}

impl SessionConfig {
    /// `cuda:<device>` for the first GPU provider asked for, else `cpu`: where a measurement
    /// with this configuration ran (registration fails rather than falling back).
    pub fn provider(&self) -> String {
        self.execution_providers
            .iter()
            .find_map(|ep| match ep {
                ExecutionProvider::Cuda { device_id } => Some(format!("cuda:{device_id}")),
                ExecutionProvider::Cpu => None,
            })
            .unwrap_or_else(|| "cpu".into())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            intra_threads: 0,
            inter_threads: 0,
            optimization: OptimizationLevel::All,
            execution_providers: vec![ExecutionProvider::Cpu],
            intra_spinning: true,
        }
    }
}

/// Where the library was found, for reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub version: String,
    pub library: PathBuf,
}

struct Loaded {
    env: Environment,
    info: RuntimeInfo,
}

static RUNTIME: OnceLock<std::result::Result<Loaded, String>> = OnceLock::new();

/// Candidate library paths, in the order they are tried: `ORT_DYLIB_PATH`; beside the
/// executable (and its `lib/` or `../lib/`); the repository's `.deps/ort/` that `make ort`
/// fills; the cache's `ort/` ([`crate::cache`]: `$TAMP_CACHE_DIR`, default `~/.cache/tamp`).
pub fn library_candidates() -> Vec<PathBuf> {
    dylib_candidates("ORT_DYLIB_PATH", LIB_NAME, "ort")
}

/// Where a run-time-loaded library `name` is looked for, in order: the path in `env` (alone,
/// when set); beside the executable, its `lib/` and `../lib/`; the checkout's `.deps/<dir>/`
/// found from the working directory up, then the one this binary was compiled in (the build
/// cache may be shared by clones); the cache's `<dir>/`. ONNX Runtime and LiteRT share it.
pub fn dylib_candidates(env: &str, name: &str, dir: &str) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return vec![PathBuf::from(p)];
    }
    let mut c = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        c.push(exe_dir.join(name));
        c.push(exe_dir.join("lib").join(name));
        c.push(exe_dir.join("../lib").join(name));
    }
    let deps = Path::new(".deps").join(dir);
    if let Ok(cwd) = std::env::current_dir() {
        c.extend(cwd.ancestors().map(|d| d.join(&deps).join(name)).filter(|p| p.is_file()).take(1));
    }
    c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(&deps).join(name));
    if let Some(cache) = crate::cache::subdir(dir) {
        c.push(cache.join(name));
    }
    c
}

fn load() -> std::result::Result<Loaded, String> {
    let candidates = library_candidates();
    let from_env = std::env::var_os("ORT_DYLIB_PATH").is_some();
    let Some(path) = candidates.iter().find(|p| p.is_file()) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return Err(if from_env {
            format!("ORT_DYLIB_PATH points to {}, which does not exist", tried.join(""))
        } else {
            format!("{LIB_NAME} not found (looked in {}); run `make ort` or set ORT_DYLIB_PATH", tried.join(", "))
        });
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.clone());
    let env = ort::init_from(&path)
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?
        .with_name("tamp")
        .build()
        .map_err(|e| format!("cannot create the environment: {e}"))?;
    let version = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("libonnxruntime.so.")).unwrap_or(ORT_VERSION).to_owned();
    Ok(Loaded { env, info: RuntimeInfo { version, library: path } })
}

fn loaded() -> Result<&'static Loaded> {
    RUNTIME.get_or_init(load).as_ref().map_err(|e| EngineError::Library(e.clone()))
}

/// Loads ONNX Runtime once per process and reports which library is in use.
pub fn runtime_info() -> Result<&'static RuntimeInfo> {
    Ok(&loaded()?.info)
}

pub use tamp_data::IoSpec;

/// An ONNX Runtime session plus its input/output signature.
pub struct Session {
    inner: ort::session::Session,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("inputs", &self.inputs).field("outputs", &self.outputs).finish()
    }
}

fn to_onnx_type(t: TensorElementType) -> DataType {
    match t {
        TensorElementType::Float32 => DataType::Float,
        TensorElementType::Float64 => DataType::Double,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Float16 => DataType::Float16,
        TensorElementType::Bfloat16 => DataType::Bfloat16,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::String => DataType::String,
        _ => DataType::Undefined,
    }
}

fn spec(o: &ort::value::Outlet) -> IoSpec {
    let dt = o.dtype();
    IoSpec {
        name: o.name().to_owned(),
        elem: dt.tensor_type().map_or(DataType::Undefined, to_onnx_type),
        shape: dt.tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
    }
}

impl Session {
    /// Builds a session from an in-memory model.
    pub fn from_model(model: &Model, cfg: &SessionConfig) -> Result<Self> {
        Self::from_bytes(&model.to_bytes()?, cfg)
    }

    /// Builds a session from a model file (external data resolved by ONNX Runtime).
    pub fn from_file(path: &Path, cfg: &SessionConfig) -> Result<Self> {
        let mut b = builder(cfg)?;
        let inner = b.commit_from_file(path).map_err(|e| EngineError::ort(format!("cannot load {}", path.display()), e))?;
        Ok(Self::wrap(inner))
    }

    /// Builds a session from serialized model bytes.
    pub fn from_bytes(bytes: &[u8], cfg: &SessionConfig) -> Result<Self> {
        let mut b = builder(cfg)?;
        let inner = b.commit_from_memory(bytes).map_err(|e| EngineError::ort("cannot load the model", e))?;
        Ok(Self::wrap(inner))
    }

    fn wrap(inner: ort::session::Session) -> Self {
        let inputs = inner.inputs().iter().map(spec).collect();
        let outputs = inner.outputs().iter().map(spec).collect();
        Self { inner, inputs, outputs }
    }

    /// Runs the model on named inputs and returns every output, in the session's order.
    ///
    /// An input given with one more axis than the model declares carries rows on that
    /// leading axis: the model has no batch axis there (a recurrent state `h0 [4, 1, 64]`, a
    /// scalar sample rate), so each row is one call — those inputs give their row, the
    /// batch-major ones their row as a batch of one — and the outputs come back rows first
    /// ([`TensorValue::join_rows`]).
    pub fn run(&mut self, inputs: &[(&str, &TensorValue)]) -> Result<Vec<(String, TensorValue)>> {
        match self.rows_on_own_axis(inputs)? {
            Some((rows, own)) => self.run_rows(inputs, rows, &own),
            None => self.run_once(inputs),
        }
    }

    /// When some input carries rows on an axis the model does not have: the row count, and
    /// which inputs carry them so (the others are batch-major).
    fn rows_on_own_axis(&self, inputs: &[(&str, &TensorValue)]) -> Result<Option<(usize, Vec<bool>)>> {
        let own: Vec<bool> = inputs.iter().map(|(n, v)| self.inputs.iter().any(|s| s.name == *n && tamp_data::own_row_axis(&s.shape, v.shape()))).collect();
        let Some(rows) = inputs.iter().zip(&own).find(|(_, o)| **o).map(|((_, v), _)| v.shape()[0]) else { return Ok(None) };
        if let Some((name, v)) = inputs.iter().find(|(_, v)| v.shape().first() != Some(&rows)) {
            return Err(EngineError::Config(format!(
                "input '{name}' has shape {:?}, but another input carries {rows} rows on its leading axis: every input needs the same rows first",
                v.shape()
            )));
        }
        Ok(Some((rows, own)))
    }

    fn run_rows(&mut self, inputs: &[(&str, &TensorValue)], rows: usize, own: &[bool]) -> Result<Vec<(String, TensorValue)>> {
        let mut per_row: Vec<(String, Vec<TensorValue>)> = Vec::new();
        for i in 0..rows {
            let feeds: Vec<TensorValue> = inputs
                .iter()
                .zip(own)
                .map(|((_, v), own)| if *own { v.row(i).unwrap_or_else(|| (*v).clone()) } else { tamp_data::select_rows(v, &[i]) })
                .collect();
            let named: Vec<(&str, &TensorValue)> = inputs.iter().map(|(n, _)| *n).zip(&feeds).collect();
            for (k, (name, value)) in self.run_once(&named)?.into_iter().enumerate() {
                match per_row.get_mut(k) {
                    Some((_, parts)) => parts.push(value),
                    None => per_row.push((name, vec![value])),
                }
            }
        }
        per_row
            .into_iter()
            .map(|(name, parts)| {
                let joined = TensorValue::join_rows(&parts).map_err(|e| EngineError::Config(format!("output '{name}', run one row at a time: {e}")))?;
                Ok((name, joined))
            })
            .collect()
    }

    fn run_once(&mut self, inputs: &[(&str, &TensorValue)]) -> Result<Vec<(String, TensorValue)>> {
        let mut values: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, v) in inputs {
            values.push(((*name).to_owned(), input_value(name, v)?));
        }
        let outputs = self.inner.run(values).map_err(|e| EngineError::ort("inference failed", e))?;
        let mut out = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            out.push((name.to_owned(), extract(name, &value)?));
        }
        Ok(out)
    }
}

fn opt_err<T>(e: ort::Error<T>) -> EngineError
where
    ort::Error<T>: std::fmt::Display,
{
    EngineError::ort("session options", e)
}

fn builder(cfg: &SessionConfig) -> Result<ort::session::builder::SessionBuilder> {
    let env = &loaded()?.env;
    let mut b = ort::session::Session::builder(env).map_err(opt_err)?;
    b = b
        .with_optimization_level(match cfg.optimization {
            OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
            OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
            OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
            OptimizationLevel::All => GraphOptimizationLevel::All,
        })
        .map_err(opt_err)?;
    if cfg.intra_threads > 0 {
        b = b.with_intra_threads(cfg.intra_threads).map_err(opt_err)?;
    }
    if cfg.inter_threads > 0 {
        b = b.with_inter_threads(cfg.inter_threads).map_err(opt_err)?;
    }
    if !cfg.intra_spinning {
        b = b.with_intra_op_spinning(false).map_err(opt_err)?;
    }
    for ep in &cfg.execution_providers {
        if let ExecutionProvider::Cuda { device_id } = ep {
            // Registration fails (and says so) where the loaded library is the CPU build or
            // CUDA/cuDNN are missing: never a silent fall back to the CPU.
            let cuda = ort::ep::CUDA::default().with_device_id(*device_id).build().error_on_failure();
            b = b.with_execution_providers([cuda]).map_err(|e| {
                EngineError::Config(format!(
                    "execution provider cuda (device {device_id}): {e}. It needs the GPU build of ONNX Runtime ({LIB_NAME} from the \
                     onnxruntime-gpu wheel, as in the GPU worker image) with CUDA 13 and cuDNN 9; use the CPU provider otherwise"
                ))
            })?;
        }
    }
    Ok(b)
}

fn input_value<'a>(name: &str, v: &'a TensorValue) -> Result<SessionInputValue<'a>> {
    let err = |e: ort::Error| EngineError::ort(format!("input '{name}'"), e);
    Ok(match v {
        TensorValue::F32(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::F64(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::I64(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::I32(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::I8(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::U8(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
        TensorValue::Bool(a) => TensorRef::from_array_view(a.view()).map_err(err)?.into(),
    })
}

fn extract(name: &str, v: &DynValue) -> Result<TensorValue> {
    let err = |e: ort::Error| EngineError::ort(format!("output '{name}'"), e);
    let ty = v.dtype().tensor_type();
    Ok(match ty {
        Some(TensorElementType::Float32) => TensorValue::F32(v.try_extract_array::<f32>().map_err(err)?.to_owned()),
        Some(TensorElementType::Float64) => TensorValue::F64(v.try_extract_array::<f64>().map_err(err)?.to_owned()),
        Some(TensorElementType::Int64) => TensorValue::I64(v.try_extract_array::<i64>().map_err(err)?.to_owned()),
        Some(TensorElementType::Int32) => TensorValue::I32(v.try_extract_array::<i32>().map_err(err)?.to_owned()),
        Some(TensorElementType::Int8) => TensorValue::I8(v.try_extract_array::<i8>().map_err(err)?.to_owned()),
        Some(TensorElementType::Uint8) => TensorValue::U8(v.try_extract_array::<u8>().map_err(err)?.to_owned()),
        Some(TensorElementType::Bool) => TensorValue::Bool(v.try_extract_array::<bool>().map_err(err)?.to_owned()),
        other => {
            return Err(EngineError::Ort {
                context: format!("output '{name}'"),
                message: format!("element type {other:?} is not supported by Tamp's evaluator"),
            });
        }
    })
}

/// The op types ONNX Runtime runs after its graph optimizations (up to `extended`, where the
/// QDQ fusions happen; the hardware-specific level is left out so the answer is portable):
/// the proof that a quantized graph runs on integer kernels (QLinearConv, QGemm,
/// DynamicQuantizeMatMul, …) rather than dequantizing back to float.
pub fn optimized_op_types(path: &Path, cfg: &SessionConfig) -> Result<std::collections::BTreeMap<String, usize>> {
    let model = with_optimized(&SessionConfig { optimization: OptimizationLevel::Extended, ..cfg.clone() }, |mut b| {
        b.commit_from_file(path).map_err(|e| EngineError::ort(format!("cannot load {}", path.display()), e))
    })?;
    let mut ops = std::collections::BTreeMap::new();
    for node in &model.graph().node {
        *ops.entry(node.op_type.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    Ok(ops)
}

/// The model as ONNX Runtime's optimizer at `cfg.optimization` leaves it (what
/// `quant_pre_process` saves at the basic level: constants folded, value infos inferred).
pub fn optimized_model(model: &Model, cfg: &SessionConfig) -> Result<Model> {
    let bytes = model.to_bytes()?;
    with_optimized(cfg, |mut b| b.commit_from_memory(&bytes).map_err(|e| EngineError::ort("cannot load the model", e)))
}

fn with_optimized(cfg: &SessionConfig, commit: impl FnOnce(ort::session::builder::SessionBuilder) -> Result<ort::session::Session>) -> Result<Model> {
    in_scratch("optimized", |dir| {
        let out = dir.join("optimized.onnx");
        let b = builder(cfg)?.with_optimized_model_path(&out).map_err(opt_err)?;
        drop(commit(b)?);
        Ok(Model::load(&out)?)
    })
}

/// Runs `f` in a fresh folder under the temp dir, removed afterwards whatever `f` returns
/// (ONNX Runtime writes optimized models and profiles only to files).
fn in_scratch<T>(kind: &str, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tamp-{kind}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| EngineError::Io { path: dir.clone(), source: e })?;
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One node of ONNX Runtime's optimized graph with its median kernel time.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTime {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Median kernel time over the profiled runs, in microseconds.
    pub micros: f64,
}

/// Seconds of profiled runs per model in [`profile_nodes`] beyond the three warm-ups.
pub const PROFILE_BUDGET_S: f64 = 2.0;

/// Per-node kernel times of `model` on `inputs` (ONNX Runtime's profiler, `runs` runs after
/// three warm-ups, medians), with the optimized graph each time belongs to — what deciding
/// float vs int8 per layer from measurements needs.
pub fn profile_nodes(model: &Model, inputs: &[(&str, &TensorValue)], runs: usize, cfg: &SessionConfig) -> Result<Vec<NodeTime>> {
    in_scratch("profile", |dir| {
        let opt = dir.join("optimized.onnx");
        // The profiler's own "maximum number of events reached" (a Loop body's nodes log one
        // event per iteration) is not the user's problem: errors only.
        let mut b = builder(cfg)?
            .with_optimized_model_path(&opt)
            .map_err(opt_err)?
            .with_profiling(dir.join("profile"))
            .map_err(opt_err)?
            .with_log_level(ort::logging::LogLevel::Fatal)
            .map_err(opt_err)?;
        let inner = b.commit_from_memory(&model.to_bytes()?).map_err(|e| EngineError::ort("cannot load the model", e))?;
        let mut session = Session::wrap(inner);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            session.run(inputs)?;
        }
        // At most ~PROFILE_BUDGET of profiled runs (at least 5): a table recogniser whose Loop
        // decoder runs 500 steps took 90 s and 9 GB for 50 runs of two models.
        let per_run = start.elapsed().as_secs_f64() / 3.0;
        let runs = runs.max(1).min(((PROFILE_BUDGET_S / per_run.max(1e-9)) as usize).max(5));
        for _ in 0..runs {
            session.run(inputs)?;
        }
        let file = session.inner.end_profiling().map_err(|e| EngineError::ort("profiling", e))?;
        let text = std::fs::read_to_string(&file).map_err(|e| EngineError::Io { path: file.clone().into(), source: e })?;
        // Only three fields of each event are read; the rest (args, timestamps) are skipped.
        #[derive(serde::Deserialize)]
        struct Event<'a> {
            #[serde(borrow)]
            cat: Option<std::borrow::Cow<'a, str>>,
            #[serde(borrow)]
            name: Option<std::borrow::Cow<'a, str>>,
            dur: Option<f64>,
        }
        let events: Vec<Event<'_>> = serde_json::from_str(&text).map_err(|e| EngineError::Config(format!("ONNX Runtime's profile: {e}")))?;
        let mut times: std::collections::BTreeMap<String, Vec<f64>> = std::collections::BTreeMap::new();
        for e in &events {
            let (Some(cat), Some(name), Some(dur)) = (e.cat.as_deref(), e.name.as_deref(), e.dur) else { continue };
            if let (true, Some(node)) = (cat == "Node", name.strip_suffix("_kernel_time")) {
                times.entry(node.to_owned()).or_default().push(dur);
            }
        }
        let graph = Model::load(&opt)?;
        Ok(graph
            .graph()
            .node
            .iter()
            .filter_map(|nd| {
                let name = nd.name.clone().unwrap_or_default();
                let all = times.get(&name)?;
                // The warm-up runs are the first three of each node's events.
                let mut t = all[if all.len() > 3 { 3 } else { 0 }..].to_vec();
                t.sort_by(f64::total_cmp);
                Some(NodeTime {
                    name,
                    op_type: nd.op_type.clone().unwrap_or_default(),
                    inputs: nd.input.clone(),
                    outputs: nd.output.clone(),
                    micros: crate::perf::percentile(&t, 50.0),
                })
            })
            .collect())
    })
}
