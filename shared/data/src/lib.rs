//! `.npz` datasets: arrays named after the model's inputs, plus optional `labels` (integer
//! classes, or float reference values for regression/embedding metrics) and `cohort`.
//! Loading checks NaN/Inf and row counts; [`Dataset::check_against`] checks names, element
//! types and shapes against a session. Batching and seeded sampling never copy the whole set.
//! Large inputs stored uncompressed (what `numpy.savez` writes) are not loaded: their rows are
//! read from the file when a batch asks for them, so memory does not grow with the number of
//! rows (2,048 EfficientNet images are 1.2 GB on disk and a few MB in memory).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn};
use npyz::{DType, Endianness, NpyFile, Order, TypeChar};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use tamp_onnx::TensorValue;
use tamp_onnx::proto::tensor_proto::DataType;

mod error;
mod finite;
mod io;

pub use error::{DataError, Result};
pub use finite::min_max;
use finite::{Bad, check_finite, non_finite_message, scan_finite};
pub use io::{IoSpec, fixed_batch};

/// Reserved array names.
pub const LABELS: &str = "labels";
pub const COHORT: &str = "cohort";
/// The input whose 1…1 0…0 rows mark a padded sequence's true tokens.
pub const ATTENTION_MASK: &str = "attention_mask";

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
    inputs: BTreeMap<String, Column>,
    pub labels: Option<Labels>,
    pub cohort: Option<Vec<i64>>,
    pub rows: usize,
}

impl Dataset {
    /// Reads an `.npz` file and validates what can be checked without a model.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_streaming(path, STREAM_MIN_BYTES)
    }

    /// [`Dataset::load`], streaming stored inputs of at least `min_bytes`.
    pub fn load_streaming(path: impl AsRef<Path>, min_bytes: u64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |m: String| DataError::Dataset { path: path.clone(), message: m };
        let io = |e: std::io::Error| DataError::io(&path, e);
        let file = Arc::new(File::open(&path).map_err(io)?);
        let mut hasher = Sha256::new();
        std::io::copy(&mut BufReader::with_capacity(1 << 20, &*file), &mut hasher).map_err(io)?;
        let sha256 = hex::encode(hasher.finalize());
        let mut archive =
            zip::ZipArchive::new(BufReader::new(&*file)).map_err(|e| err(format!("not a readable .npz archive ({e}); write it with numpy.savez")))?;
        let members: Vec<String> = archive.file_names().map(str::to_owned).collect();
        let names: Vec<(String, String)> = members.iter().filter_map(|m| Some((npyz::npz::array_name_from_file_name(m)?.to_owned(), m.clone()))).collect();
        if names.is_empty() {
            return Err(err("the archive holds no arrays".into()));
        }
        let mut inputs = BTreeMap::new();
        let mut labels = None;
        let mut cohort = None;
        let limit = max_decoded_bytes();
        let mut decoded = 0u64;
        for (name, member) in names {
            let entry = archive.by_name(&member).map_err(|e| err(format!("array '{name}': {e}")))?;
            let (stored, size, data_start) = (entry.compression() == zip::CompressionMethod::Stored, entry.size(), entry.data_start());
            // npyz multiplies the header's shape without checking (a (2^32, 2^32) header
            // panicked): the header is read and checked here first, then handed on.
            let (prefix, entry) = checked_npy_header(entry).map_err(|m| err(format!("array '{name}': {m}")))?;
            let npy = NpyFile::new(std::io::Read::chain(std::io::Cursor::new(prefix), entry)).map_err(|e| err(format!("array '{name}': {e}")))?;
            let reserved = name == LABELS || name == COHORT;
            // Sizes come from the file's header: checked, never trusted to fit.
            let bytes =
                array_bytes(&npy).ok_or_else(|| err(format!("array '{name}': its shape {:?} describes more bytes than any machine holds", npy.shape())))?;
            // Stored (uncompressed) plain arrays are read straight from the file: streamed when
            // large, else in one read (no per-element decoding through the zip reader).
            let direct = if stored { Stored::of(&npy, size, data_start, file.clone(), 0) } else { None };
            if let Some(col) = direct.as_ref().filter(|c| !reserved && c.bytes() >= min_bytes) {
                col.check_finite().map_err(|m| err(format!("array '{name}': {m}")))?;
                inputs.insert(name, Column::Stored(col.clone()));
                continue;
            }
            decoded = decoded.saturating_add(bytes);
            if decoded > limit {
                return Err(err(format!(
                    "array '{name}' brings the arrays held in memory to {} MiB; the limit is {} MiB (set TAMP_MAX_NPZ_BYTES, or save large inputs uncompressed with numpy.savez so they are streamed)",
                    decoded >> 20,
                    limit >> 20
                )));
            }
            let value = match direct {
                Some(col) => col.select(&(0..col.shape[0]).collect::<Vec<_>>()).map_err(|e| err(format!("array '{name}': {e}")))?,
                None => read_array(npy).map_err(|m| err(format!("array '{name}': {m}")))?,
            };
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
                    inputs.insert(name, Column::Memory(value));
                }
            }
        }
        if inputs.is_empty() {
            return Err(err("no input arrays (only labels/cohort); name arrays after the model's inputs".into()));
        }
        let rows_of = |v: &Column| v.shape().first().copied().unwrap_or(0);
        let rows = inputs.values().map(rows_of).next().unwrap_or(0);
        for (name, v) in &inputs {
            if v.shape().is_empty() {
                return Err(err(format!("input '{name}' is a scalar; rows must run along axis 0")));
            }
            if v.shape()[1..].contains(&0) {
                return Err(err(format!("input '{name}' has shape {:?}: its rows hold no values", v.shape())));
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
    /// equal, ranks equal and fixed dimensions (other than the batch axis) equal — or, for an
    /// input the model gives no batch axis, rank one more with every declared dimension equal
    /// after the rows axis (the engine's `Session::run` then makes one call per row).
    pub fn check_against(&self, inputs: &[IoSpec]) -> Result<()> {
        let err = |m: String| DataError::Dataset { path: self.path.clone(), message: m };
        for spec in inputs {
            let Some(v) = self.inputs.get(&spec.name) else {
                let have: Vec<&str> = self.inputs.keys().map(String::as_str).collect();
                return Err(err(format!("missing input '{}' (the model needs it; the file has {have:?})", spec.name)));
            };
            if v.data_type() != spec.elem {
                return Err(err(format!("input '{}' is {:?} but the model expects {:?}", spec.name, v.data_type(), spec.elem)));
            }
            let shape = v.shape();
            // One axis more than the model declares, on an input with no batch axis: the rows
            // have an axis of their own (each row is one call), and every declared axis, the
            // first included, must match.
            let own_rows = own_row_axis(&spec.shape, shape);
            if !spec.shape.is_empty() && shape.len() != spec.shape.len() && !own_rows {
                return Err(err(format!(
                    "input '{}' has shape {shape:?} (rank {}) but the model expects rank {} {:?} (rows stacked on its first axis), or rank {} (a row axis of their own, for an input with no batch axis)",
                    spec.name,
                    shape.len(),
                    spec.shape.len(),
                    spec.shape,
                    spec.shape.len() + 1
                )));
            }
            let (per_row, first) = if own_rows { (&shape[1..], 0) } else { (shape, 1) };
            for (axis, (&have, &want)) in per_row.iter().zip(&spec.shape).enumerate().skip(first) {
                if want >= 0 && have as i64 != want {
                    let axis = axis + usize::from(own_rows);
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

    /// A dataset held in memory (derived rows: shifted copies for robustness analysis, a
    /// subset). `path` labels it in messages; inputs must agree on their row count.
    pub fn in_memory(path: PathBuf, inputs: BTreeMap<String, TensorValue>, labels: Option<Labels>, cohort: Option<Vec<i64>>) -> Result<Self> {
        let rows = inputs.values().next().and_then(|v| v.shape().first().copied()).unwrap_or(0);
        if let Some((k, _)) = inputs.iter().find(|(_, v)| v.shape().first().copied() != Some(rows)) {
            return Err(DataError::Dataset { path, message: format!("array '{k}' has a different row count than the others ({rows})") });
        }
        let inputs = inputs.into_iter().map(|(k, v)| (k, Column::Memory(v))).collect();
        Ok(Self { path, sha256: String::new(), inputs, labels, cohort, rows })
    }

    /// The rows at `indices` of every input, in order (read from the file for streamed inputs).
    pub fn select(&self, indices: &[usize]) -> Result<BTreeMap<String, TensorValue>> {
        self.inputs
            .iter()
            .map(|(k, v)| {
                let rows = match v {
                    Column::Memory(t) => select_rows(t, indices),
                    Column::Stored(s) => {
                        s.select(indices).map_err(|e| DataError::Dataset { path: self.path.clone(), message: format!("array '{k}': reading rows: {e}") })?
                    }
                };
                Ok((k.clone(), rows))
            })
            .collect()
    }

    /// True token counts per row when the inputs are right-padded sequences: an integer
    /// `attention_mask` `[N, L]` whose rows are 1…1 0…0 (at least one token), and every input
    /// `[N, L]`. `None` for anything else (images, left padding, no mask).
    pub fn sequence_lengths(&self) -> Result<Option<Vec<usize>>> {
        let Some(mask) = self.inputs.get(ATTENTION_MASK) else { return Ok(None) };
        let shape = mask.shape().to_vec();
        if shape.len() != 2 || self.inputs.values().any(|c| c.shape() != shape.as_slice()) {
            return Ok(None);
        }
        let all: Vec<usize> = (0..self.rows).collect();
        let mask = match mask {
            Column::Memory(t) => t.clone(),
            Column::Stored(s) => {
                s.select(&all).map_err(|e| DataError::Dataset { path: self.path.clone(), message: format!("array '{ATTENTION_MASK}': {e}") })?
            }
        };
        let rows: Vec<Vec<i64>> = match &mask {
            TensorValue::I64(a) => a.outer_iter().map(|r| r.iter().copied().collect()).collect(),
            TensorValue::I32(a) => a.outer_iter().map(|r| r.iter().map(|&v| i64::from(v)).collect()).collect(),
            TensorValue::I8(a) => a.outer_iter().map(|r| r.iter().map(|&v| i64::from(v)).collect()).collect(),
            TensorValue::U8(a) => a.outer_iter().map(|r| r.iter().map(|&v| i64::from(v)).collect()).collect(),
            TensorValue::Bool(a) => a.outer_iter().map(|r| r.iter().map(|&v| i64::from(v)).collect()).collect(),
            _ => return Ok(None),
        };
        let mut lengths = Vec::with_capacity(rows.len());
        for r in rows {
            let n = r.iter().take_while(|&&v| v == 1).count();
            if n == 0 || r[n..].iter().any(|&v| v != 0) {
                return Ok(None);
            }
            lengths.push(n);
        }
        Ok(Some(lengths))
    }

    /// The rows at `indices` with every input cut to its first `len` positions (axis 1).
    pub fn select_trimmed(&self, indices: &[usize], len: usize) -> Result<BTreeMap<String, TensorValue>> {
        let mut batch = self.select(indices)?;
        for v in batch.values_mut() {
            macro_rules! cut {
                ($a:expr, $variant:ident) => {
                    TensorValue::$variant($a.slice_axis(Axis(1), ndarray::Slice::from(..len)).to_owned())
                };
            }
            *v = match &*v {
                TensorValue::F32(a) => cut!(a, F32),
                TensorValue::F64(a) => cut!(a, F64),
                TensorValue::I64(a) => cut!(a, I64),
                TensorValue::I32(a) => cut!(a, I32),
                TensorValue::I8(a) => cut!(a, I8),
                TensorValue::U8(a) => cut!(a, U8),
                TensorValue::Bool(a) => cut!(a, Bool),
            };
        }
        Ok(batch)
    }

    /// The input arrays' names.
    pub fn input_names(&self) -> impl Iterator<Item = &str> {
        self.inputs.keys().map(String::as_str)
    }

    /// Names of the inputs read from the file batch by batch instead of held in memory.
    pub fn streamed_inputs(&self) -> Vec<&str> {
        self.inputs.iter().filter(|(_, c)| matches!(c, Column::Stored(_))).map(|(k, _)| k.as_str()).collect()
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

/// Most bytes of arrays a dataset holds in memory (compressed members decompressed, small
/// stored ones read), unless `TAMP_MAX_NPZ_BYTES` sets another limit. Streamed inputs do
/// not count. A 1.2 MB zip bomb once inflated to 1.25 GB and a worker to 2.5 GB.
pub const DEFAULT_MAX_DECODED_BYTES: u64 = 1 << 30;

/// The in-memory dataset limit in force (`TAMP_MAX_NPZ_BYTES`, else the default).
pub fn max_decoded_bytes() -> u64 {
    std::env::var("TAMP_MAX_NPZ_BYTES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_DECODED_BYTES)
}

/// Reads an npy member's header (magic, version, length, the Python dict) and checks that
/// the product of its nonzero dims fits in 64 bits (npyz multiplies them unchecked, in both
/// orders: `(0, 2^63, 2^63)` panicked in its stride computation); returns the bytes read,
/// to be replayed.
fn checked_npy_header<R: Read>(mut r: R) -> std::result::Result<(Vec<u8>, R), String> {
    let mut head = vec![0u8; 10];
    r.read_exact(&mut head).map_err(|e| format!("not an npy array ({e})"))?;
    if &head[..6] != b"\x93NUMPY" {
        return Err("not an npy array (bad magic); write it with numpy.save/savez".into());
    }
    let len = match head[6] {
        1 => u16::from_le_bytes([head[8], head[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            r.read_exact(&mut more).map_err(|e| format!("truncated npy header ({e})"))?;
            head.extend_from_slice(&more);
            u32::from_le_bytes([head[8], head[9], more[0], more[1]]) as usize
        }
        v => return Err(format!("npy format version {v} is not supported")),
    };
    if len > 1 << 20 {
        return Err(format!("npy header of {len} bytes (numpy writes < 64 KiB)"));
    }
    let start = head.len();
    head.resize(start + len, 0);
    r.read_exact(&mut head[start..]).map_err(|e| format!("truncated npy header ({e})"))?;
    let text = String::from_utf8_lossy(&head[start..]);
    flat_header(&text)?;
    if let Some(i) = text.find("'shape'") {
        let rest = &text[i..];
        let (open, close) = (rest.find('(').unwrap_or(0), rest.find(')').unwrap_or(0));
        if close > open {
            let mut n: u64 = 1;
            for d in rest[open + 1..close].split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let d: u64 = d.trim_end_matches('L').parse().map_err(|_| format!("shape entry '{d}' is not a size"))?;
                // Zero dims are skipped: npyz's stride products run over every other dim.
                n = n.checked_mul(d.max(1)).ok_or_else(|| format!("its shape {} describes more elements than any machine holds", &rest[open..=close]))?;
            }
        }
    }
    Ok((head, r))
}

/// numpy writes a flat dict (`{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2), }`);
/// npyz's Python-literal grammar backtracks exponentially in nesting depth (a header of 60
/// `{` ran for hours), so anything nested deeper than the shape tuple is refused before it
/// is parsed. Lists only come with structured dtypes, which Tamp does not read.
fn flat_header(text: &str) -> std::result::Result<(), String> {
    let (mut depth, mut quote) = (0usize, None);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => return Err("structured arrays are not supported; store one plain array per input".into()),
            (None, '{' | '(') => {
                depth += 1;
                if depth > 2 {
                    return Err("the npy header is not numpy's flat dict (nested brackets); write the array with numpy.save/savez".into());
                }
            }
            (None, '}' | ')') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Bytes an npy member's header says its data takes; `None` when that overflows.
fn array_bytes<R: Read>(npy: &NpyFile<R>) -> Option<u64> {
    let elem = match npy.dtype() {
        DType::Plain(ts) => ts.size_field(),
        _ => 1,
    };
    npy.shape().iter().try_fold(elem, |n, &d| n.checked_mul(d))
}

/// Inputs at least this large (bytes) that the archive stores uncompressed are streamed.
pub const STREAM_MIN_BYTES: u64 = 64 << 20;

/// One input array: decoded in memory, or rows read from the file on demand.
#[derive(Debug, Clone)]
enum Column {
    Memory(TensorValue),
    Stored(Stored),
}

impl Column {
    fn data_type(&self) -> DataType {
        match self {
            Self::Memory(t) => t.data_type(),
            Self::Stored(s) => s.dtype,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Self::Memory(t) => t.shape(),
            Self::Stored(s) => &s.shape,
        }
    }
}

/// A C-order little-endian array stored uncompressed in the archive: `offset` is where its
/// first element lies in the file.
#[derive(Debug, Clone)]
struct Stored {
    file: Arc<File>,
    offset: u64,
    dtype: DataType,
    elem: usize,
    shape: Vec<usize>,
}

impl Stored {
    /// The streamed form of a member, when it qualifies (large, stored, C order, plain
    /// little-endian numbers).
    fn of<R: Read>(npy: &NpyFile<R>, member_size: u64, data_start: u64, file: Arc<File>, min_bytes: u64) -> Option<Self> {
        let DType::Plain(ts) = npy.dtype() else { return None };
        if npy.order() != Order::C || matches!(ts.endianness(), Endianness::Big) {
            return None;
        }
        let dtype = match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, 4) => DataType::Float,
            (TypeChar::Float, 8) => DataType::Double,
            (TypeChar::Int, 8) => DataType::Int64,
            (TypeChar::Int, 4) => DataType::Int32,
            (TypeChar::Int, 1) => DataType::Int8,
            (TypeChar::Uint, 1) => DataType::Uint8,
            (TypeChar::Bool, 1) => DataType::Bool,
            _ => return None,
        };
        let shape: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
        let elem = ts.size_field() as usize;
        let bytes = shape.iter().try_fold(elem, |n, &d| n.checked_mul(d))? as u64;
        if shape.is_empty() || bytes == 0 || bytes < min_bytes || bytes > member_size {
            return None;
        }
        // The npy data is the member's tail, after its header.
        Some(Self { file, offset: data_start + member_size - bytes, dtype, elem, shape })
    }

    fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.elem) as u64
    }

    fn row_bytes(&self) -> usize {
        self.shape[1..].iter().product::<usize>() * self.elem
    }

    /// Reads rows `indices` (runs of consecutive rows in one read) into one buffer.
    fn read(&self, indices: &[usize]) -> std::io::Result<Vec<u8>> {
        let row = self.row_bytes();
        let mut buf = vec![0u8; indices.len() * row];
        let mut i = 0;
        while i < indices.len() {
            let mut j = i + 1;
            while j < indices.len() && indices[j] == indices[j - 1] + 1 {
                j += 1;
            }
            // A run ascends, so its last row is its largest.
            if indices[j - 1] >= self.shape[0] {
                return Err(std::io::Error::other(format!("row {} of {}", indices[j - 1], self.shape[0])));
            }
            self.file.read_exact_at(&mut buf[i * row..j * row], self.offset + (indices[i] * row) as u64)?;
            i = j;
        }
        Ok(buf)
    }

    fn select(&self, indices: &[usize]) -> std::io::Result<TensorValue> {
        let bytes = self.read(indices)?;
        let mut shape = self.shape.clone();
        shape[0] = indices.len();
        let shape = IxDyn(&shape);
        let bad = |e: ndarray::ShapeError| std::io::Error::other(e.to_string());
        macro_rules! decode {
            ($t:ty, $n:literal, $variant:ident) => {
                TensorValue::$variant(
                    ArrayD::from_shape_vec(shape, bytes.chunks_exact($n).map(|b| <$t>::from_le_bytes(b.try_into().expect("chunk"))).collect()).map_err(bad)?,
                )
            };
        }
        Ok(match self.dtype {
            DataType::Float => decode!(f32, 4, F32),
            DataType::Double => decode!(f64, 8, F64),
            DataType::Int64 => decode!(i64, 8, I64),
            DataType::Int32 => decode!(i32, 4, I32),
            DataType::Int8 => decode!(i8, 1, I8),
            DataType::Uint8 => TensorValue::U8(ArrayD::from_shape_vec(shape, bytes).map_err(bad)?),
            _ => TensorValue::Bool(ArrayD::from_shape_vec(shape, bytes.into_iter().map(|b| b != 0).collect()).map_err(bad)?),
        })
    }

    /// NaN/Inf check over the whole array, a few thousand rows at a time.
    fn check_finite(&self) -> std::result::Result<(), String> {
        if !matches!(self.dtype, DataType::Float | DataType::Double) {
            return Ok(());
        }
        let per_chunk = ((8usize << 20) / self.row_bytes().max(1)).max(1);
        let (mut nan, mut inf, mut first) = (0usize, 0usize, None);
        let mut seen = 0usize;
        for start in (0..self.shape[0]).step_by(per_chunk) {
            let rows: Vec<usize> = (start..(start + per_chunk).min(self.shape[0])).collect();
            let chunk = self.select(&rows).map_err(|e| e.to_string())?;
            if let Err(Bad { nan: n, inf: i, first: f }) = scan_finite(&chunk) {
                nan += n;
                inf += i;
                first = first.or(Some(seen + f));
            }
            seen += chunk.shape().iter().product::<usize>();
        }
        if nan + inf > 0 {
            return Err(non_finite_message(nan, inf, first));
        }
        Ok(())
    }
}

/// An array of `shape` for a model input declared `declared` carries its rows on an axis of
/// its own: it has one axis more, and the input has no batch axis to stack rows on (a scalar,
/// or a fixed first dimension such as a recurrent state's `[4, 1, 64]` or `[2, B, 128]`). A
/// dynamic first dimension is a batch axis, where rows stack.
pub fn own_row_axis(declared: &[i64], shape: &[usize]) -> bool {
    shape.len() == declared.len() + 1 && declared.first().is_none_or(|&d| d > 0)
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

fn read_array<R: Read>(file: NpyFile<R>) -> std::result::Result<TensorValue, String> {
    let shape: Vec<usize> =
        file.shape().iter().map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is too large"))).collect::<std::result::Result<_, _>>()?;
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none() {
        return Err(format!("shape {shape:?} describes more elements than any machine holds"));
    }
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
    let io = |e: std::io::Error| DataError::io(path, e);
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
        npz.zip_writer().finish().map_err(|e| DataError::io(path, std::io::Error::other(e)))?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}
