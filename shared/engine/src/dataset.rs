//! `.npz` datasets: arrays named after the model's inputs, plus optional `labels` (integer
//! classes, or float reference values for regression/embedding metrics) and `cohort`.
//! Loading checks NaN/Inf and row counts; [`Dataset::check_against`] checks names, element
//! types and shapes against a session. Batching and seeded sampling never copy the whole set.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn};
use npyz::{DType, NpyFile, Order, TypeChar};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tamp_onnx::TensorValue;

use crate::error::{EngineError, Result};
use crate::runtime::IoSpec;

/// Reserved array names.
pub const LABELS: &str = "labels";
pub const COHORT: &str = "cohort";

/// What the `labels` array holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    /// One class index per row.
    Classes(Vec<i64>),
    /// Reference values per row (regression targets, reference embeddings).
    Values(ArrayD<f32>),
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub path: PathBuf,
    pub sha256: String,
    /// Model inputs by name, each with rows along axis 0.
    pub inputs: BTreeMap<String, TensorValue>,
    pub labels: Option<Labels>,
    pub cohort: Option<Vec<i64>>,
    pub rows: usize,
}

impl Dataset {
    /// Reads an `.npz` file and validates what can be checked without a model.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |m: String| EngineError::Dataset { path: path.clone(), message: m };
        let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let mut archive = npyz::npz::NpzArchive::new(std::io::Cursor::new(&bytes))
            .map_err(|e| err(format!("not a readable .npz archive ({e}); write it with numpy.savez")))?;
        let names: Vec<String> = archive.array_names().map(str::to_owned).collect();
        if names.is_empty() {
            return Err(err("the archive holds no arrays".into()));
        }
        let mut inputs = BTreeMap::new();
        let mut labels = None;
        let mut cohort = None;
        for name in names {
            let file = archive
                .by_name(&name)
                .map_err(|e| err(format!("array '{name}': {e}")))?
                .ok_or_else(|| err(format!("array '{name}' vanished from the archive")))?;
            let value = read_array(file).map_err(|m| err(format!("array '{name}': {m}")))?;
            check_finite(&value).map_err(|m| err(format!("array '{name}': {m}")))?;
            match name.as_str() {
                LABELS => {
                    labels = Some(match value {
                        TensorValue::I64(a) => Labels::Classes(a.iter().copied().collect()),
                        TensorValue::I32(a) => Labels::Classes(a.iter().map(|&v| i64::from(v)).collect()),
                        TensorValue::U8(a) => Labels::Classes(a.iter().map(|&v| i64::from(v)).collect()),
                        TensorValue::F32(a) => Labels::Values(a),
                        TensorValue::F64(a) => Labels::Values(a.mapv(|v| v as f32)),
                        other => return Err(err(format!("labels have unsupported type {:?}; use int64 classes or float32 values", other.data_type()))),
                    })
                }
                COHORT => {
                    cohort = Some(match value {
                        TensorValue::I64(a) => a.iter().copied().collect(),
                        TensorValue::I32(a) => a.iter().map(|&v| i64::from(v)).collect(),
                        TensorValue::U8(a) => a.iter().map(|&v| i64::from(v)).collect(),
                        other => return Err(err(format!("cohort has type {:?}; use integer cohort ids", other.data_type()))),
                    })
                }
                _ => {
                    inputs.insert(name, value);
                }
            }
        }
        if inputs.is_empty() {
            return Err(err("no input arrays (only labels/cohort); name arrays after the model's inputs".into()));
        }
        let rows_of = |v: &TensorValue| v.shape().first().copied().unwrap_or(0);
        let rows = inputs.values().map(rows_of).next().unwrap_or(0);
        for (name, v) in &inputs {
            if v.shape().is_empty() {
                return Err(err(format!("input '{name}' is a scalar; rows must run along axis 0")));
            }
            if rows_of(v) != rows {
                return Err(err(format!("input '{name}' has {} rows but other inputs have {rows}", rows_of(v))));
            }
        }
        let label_rows = match &labels {
            Some(Labels::Classes(c)) => Some(c.len()),
            Some(Labels::Values(v)) => v.shape().first().copied(),
            None => None,
        };
        if let Some(n) = label_rows.filter(|&n| n != rows) {
            return Err(err(format!("labels have {n} rows but the inputs have {rows}")));
        }
        if let Some(n) = cohort.as_ref().map(Vec::len).filter(|&n| n != rows) {
            return Err(err(format!("cohort has {n} rows but the inputs have {rows}")));
        }
        if rows == 0 {
            return Err(err("the dataset has no rows".into()));
        }
        Ok(Self { path, sha256, inputs, labels, cohort, rows })
    }

    /// Checks the dataset against a model's inputs: every input present, element types
    /// equal, ranks equal and fixed dimensions (other than the batch axis) equal.
    pub fn check_against(&self, inputs: &[IoSpec]) -> Result<()> {
        let err = |m: String| EngineError::Dataset { path: self.path.clone(), message: m };
        for spec in inputs {
            let Some(v) = self.inputs.get(&spec.name) else {
                let have: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
                return Err(err(format!("missing input '{}' (the model needs it; the file has {have:?})", spec.name)));
            };
            if v.data_type() != spec.elem {
                return Err(err(format!("input '{}' is {:?} but the model expects {:?}", spec.name, v.data_type(), spec.elem)));
            }
            let shape = v.shape();
            if !spec.shape.is_empty() && shape.len() != spec.shape.len() {
                return Err(err(format!("input '{}' has shape {shape:?} (rank {}) but the model expects rank {} {:?}", spec.name, shape.len(), spec.shape.len(), spec.shape)));
            }
            for (axis, (&have, &want)) in shape.iter().zip(&spec.shape).enumerate().skip(1) {
                if want >= 0 && have as i64 != want {
                    return Err(err(format!("input '{}' has size {have} on axis {axis} but the model expects {want}", spec.name)));
                }
            }
        }
        let extra: Vec<&String> = self.inputs.keys().filter(|k| !inputs.iter().any(|s| &s.name == *k)).collect();
        if !extra.is_empty() {
            return Err(err(format!("arrays {extra:?} match no model input (reserved names: labels, cohort)")));
        }
        Ok(())
    }

    /// The rows at `indices` of every input, in order.
    pub fn select(&self, indices: &[usize]) -> BTreeMap<String, TensorValue> {
        self.inputs.iter().map(|(k, v)| (k.clone(), select_rows(v, indices))).collect()
    }

    /// Class labels at `indices`, when labels are classes.
    pub fn class_labels(&self, indices: &[usize]) -> Option<Vec<i64>> {
        match &self.labels {
            Some(Labels::Classes(c)) => Some(indices.iter().map(|&i| c[i]).collect()),
            _ => None,
        }
    }

    /// Reference values at `indices`, when labels are values.
    pub fn value_labels(&self, indices: &[usize]) -> Option<ArrayD<f32>> {
        match &self.labels {
            Some(Labels::Values(v)) => Some(v.select(Axis(0), indices)),
            _ => None,
        }
    }

    /// `n` distinct row indices drawn with a seeded RNG (all rows, shuffled, if `n` ≥ rows).
    pub fn sample(&self, n: usize, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.rows).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx.truncate(n.min(self.rows));
        idx
    }

    /// A seeded split into (first, second) with `fraction` of rows in the first part.
    pub fn split(&self, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
        let mut idx = self.sample(self.rows, seed);
        let cut = ((self.rows as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
        let second = idx.split_off(cut);
        (idx, second)
    }
}

/// Consecutive index batches covering `indices`.
pub fn batches(indices: &[usize], batch_size: usize) -> impl Iterator<Item = &[usize]> {
    indices.chunks(batch_size.max(1))
}

/// Rows of one tensor.
pub fn select_rows(v: &TensorValue, idx: &[usize]) -> TensorValue {
    match v {
        TensorValue::F32(a) => TensorValue::F32(a.select(Axis(0), idx)),
        TensorValue::F64(a) => TensorValue::F64(a.select(Axis(0), idx)),
        TensorValue::I64(a) => TensorValue::I64(a.select(Axis(0), idx)),
        TensorValue::I32(a) => TensorValue::I32(a.select(Axis(0), idx)),
        TensorValue::I8(a) => TensorValue::I8(a.select(Axis(0), idx)),
        TensorValue::U8(a) => TensorValue::U8(a.select(Axis(0), idx)),
        TensorValue::Bool(a) => TensorValue::Bool(a.select(Axis(0), idx)),
    }
}

fn check_finite(v: &TensorValue) -> std::result::Result<(), String> {
    let bad = |nan: usize, inf: usize, first: Option<usize>| {
        format!("holds {nan} NaN and {inf} infinite values (first at flat index {}); clean the data before evaluating", first.unwrap_or(0))
    };
    macro_rules! scan {
        ($a:expr) => {{
            let (mut nan, mut inf, mut first) = (0usize, 0usize, None);
            for (i, x) in $a.iter().enumerate() {
                if !x.is_finite() {
                    if x.is_nan() { nan += 1 } else { inf += 1 }
                    first.get_or_insert(i);
                }
            }
            if nan + inf > 0 { return Err(bad(nan, inf, first)); }
        }};
    }
    match v {
        TensorValue::F32(a) => scan!(a),
        TensorValue::F64(a) => scan!(a),
        _ => {}
    }
    Ok(())
}

fn read_array<R: Read>(file: NpyFile<R>) -> std::result::Result<TensorValue, String> {
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let fortran = file.order() == Order::Fortran;
    let DType::Plain(ts) = file.dtype() else {
        return Err("structured arrays are not supported; store one plain array per input".into());
    };
    let io = |e: std::io::Error| e.to_string();
    macro_rules! build {
        ($t:ty, $variant:ident) => {{
            let data: Vec<$t> = file.into_vec::<$t>().map_err(io)?;
            TensorValue::$variant(to_standard(data, &shape, fortran)?)
        }};
    }
    Ok(match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => build!(f32, F32),
        (TypeChar::Float, 8) => build!(f64, F64),
        (TypeChar::Int, 8) => build!(i64, I64),
        (TypeChar::Int, 4) => build!(i32, I32),
        (TypeChar::Int, 1) => build!(i8, I8),
        (TypeChar::Uint, 1) => build!(u8, U8),
        (TypeChar::Bool, 1) => build!(bool, Bool),
        _ => return Err(format!("dtype '{ts}' is not supported; use float32, float64, int64, int32, int8, uint8 or bool")),
    })
}

fn to_standard<T: Clone>(data: Vec<T>, shape: &[usize], fortran: bool) -> std::result::Result<ArrayD<T>, String> {
    if fortran {
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let a = ArrayD::from_shape_vec(IxDyn(&rev), data).map_err(|e| e.to_string())?;
        Ok(a.reversed_axes().as_standard_layout().into_owned())
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| e.to_string())
    }
}

/// Writes named arrays as an uncompressed `.npz` (atomically: temp file, then rename).
pub fn write_npz(path: &Path, arrays: &BTreeMap<String, TensorValue>) -> Result<()> {
    use npyz::WriterBuilder;
    let tmp = path.with_extension("npz.tmp");
    let io = |e: std::io::Error| EngineError::io(path, e);
    {
        let mut npz = npyz::npz::NpzWriter::create(&tmp).map_err(io)?;
        let opts = || zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
        macro_rules! put {
            ($t:ty, $a:expr, $name:expr) => {{
                let shape: Vec<u64> = $a.shape().iter().map(|&d| d as u64).collect();
                let mut w = npz.array::<$t>($name, opts()).map_err(io)?.default_dtype().shape(&shape).begin_nd().map_err(io)?;
                w.extend($a.iter().copied()).map_err(io)?;
                w.finish().map_err(io)?;
            }};
        }
        for (name, v) in arrays {
            match v {
                TensorValue::F32(a) => put!(f32, a, name),
                TensorValue::F64(a) => put!(f64, a, name),
                TensorValue::I64(a) => put!(i64, a, name),
                TensorValue::I32(a) => put!(i32, a, name),
                TensorValue::I8(a) => put!(i8, a, name),
                TensorValue::U8(a) => put!(u8, a, name),
                TensorValue::Bool(a) => put!(bool, a, name),
            }
        }
        npz.zip_writer().finish().map_err(|e| EngineError::io(path, std::io::Error::other(e)))?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
