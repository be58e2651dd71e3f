//! Loading and saving models. External-data tensors are read into memory on load (their
//! paths confined to the model's folder) and written back out on save when asked or when
//! the model would exceed protobuf's 2 GiB limit. Saves are atomic: a temp file is renamed
//! over the target, so a failed save never leaves a half-written model behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::OnnxError;
use crate::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use crate::tensor::tensor_name;

/// Protobuf cannot encode a message of 2 GiB or more; ONNX Runtime refuses them too.
pub const PROTOBUF_LIMIT: usize = (1 << 31) - 1;

/// An ONNX model held in memory with all tensor data resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub proto: ModelProto,
}

/// Where tensor payloads go on save.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Inline everything unless the model would exceed the 2 GiB limit, in which case
    /// tensors of 1 KiB or more go to `<file name>.data` beside the model.
    #[default]
    Auto,
    /// Always inline; saving a model over 2 GiB is an error.
    Never,
    /// Tensors of at least `threshold` bytes go to `location` (relative to the model).
    Always { location: String, threshold: usize },
}

/// A model file as it lies on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// sha256 of the `.onnx` file itself.
    pub sha256: String,
    /// The `.onnx` file plus its external data files.
    pub size_bytes: u64,
    pub external_files: Vec<PathBuf>,
}

/// Options for [`Model::save`].
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    pub external_data: ExternalData,
}

impl Model {
    /// Wraps a protobuf model.
    pub fn new(proto: ModelProto) -> Self {
        Self { proto }
    }

    /// Reads a model file, resolving external data relative to its folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, OnnxError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| OnnxError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(Self::decode(&bytes, Some(base), path)?.0)
    }

    /// The external data files `bytes` (a model file) names, relative to its folder and
    /// checked to stay inside it, without reading them: what a worker fetches beside the
    /// model. `origin` names the source in errors.
    pub fn external_locations(bytes: &[u8], origin: &Path) -> Result<Vec<String>, OnnxError> {
        let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode { path: origin.to_owned(), source })?;
        let mut model = Self { proto };
        let mut found = std::collections::BTreeSet::new();
        let mut bad = None;
        model.for_each_tensor_mut(&mut |t| {
            if t.data_location != Some(1) || bad.is_some() {
                return;
            }
            let name = tensor_name(t).to_owned();
            match t.external_data.iter().find(|e| e.key.as_deref() == Some("location")).and_then(|e| e.value.clone()) {
                None => bad = Some(OnnxError::ExternalData { tensor: name, reason: "no 'location' entry".into() }),
                Some(l) => match check_relative(&l) {
                    Ok(()) => {
                        found.insert(l);
                    }
                    Err(reason) => bad = Some(OnnxError::ExternalData { tensor: name, reason }),
                },
            }
        });
        match bad {
            Some(e) => Err(e),
            None => Ok(found.into_iter().collect()),
        }
    }

    /// Like [`Model::load`], also describing the files on disk (hash, size, external files)
    /// from the same single read.
    pub fn load_with_info(path: impl AsRef<Path>) -> Result<(Self, FileInfo), OnnxError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| OnnxError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (model, locations) = Self::decode(&bytes, Some(base), path)?;
        let external_files: Vec<PathBuf> = locations.into_iter().map(|l| base.join(l)).collect();
        let mut size_bytes = bytes.len() as u64;
        for f in &external_files {
            size_bytes += std::fs::metadata(f).map_err(|e| OnnxError::io(f, e))?.len();
        }
        let info = FileInfo { sha256: hex::encode(Sha256::digest(&bytes)), size_bytes, external_files };
        Ok((model, info))
    }

    /// Decodes a model from bytes; `base_dir` resolves external data (None forbids it).
    /// `origin` names the source in error messages.
    pub fn from_bytes(bytes: &[u8], base_dir: Option<&Path>, origin: &Path) -> Result<Self, OnnxError> {
        Ok(Self::decode(bytes, base_dir, origin)?.0)
    }

    /// Decodes and resolves external data; also returns the external locations read.
    fn decode(bytes: &[u8], base_dir: Option<&Path>, origin: &Path) -> Result<(Self, Vec<String>), OnnxError> {
        let proto = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode { path: origin.to_owned(), source })?;
        let invalid = |reason: &str| OnnxError::Invalid { path: origin.to_owned(), reason: reason.to_owned() };
        let Some(graph) = &proto.graph else {
            return Err(invalid("it has no graph (is this really an .onnx file?)"));
        };
        if proto.ir_version.is_none() {
            return Err(invalid("ir_version is missing (is this really an .onnx file?)"));
        }
        if graph.node.is_empty() && graph.output.is_empty() {
            return Err(invalid("its graph has neither nodes nor outputs"));
        }
        let mut model = Self { proto };
        let mut reader = ExternalReader { base: base_dir.map(Path::to_path_buf), files: HashMap::new() };
        let mut result = Ok(());
        model.for_each_tensor_mut(&mut |t| {
            if result.is_ok() && t.data_location == Some(1) {
                result = reader.resolve(t);
            }
        });
        result?;
        let mut locations: Vec<String> = reader.files.into_keys().collect();
        locations.sort();
        Ok((model, locations))
    }

    /// The main graph.
    pub fn graph(&self) -> &GraphProto {
        // `from_bytes` rejects models without a graph; builders always set one.
        self.proto.graph.as_ref().unwrap_or_else(|| empty_graph())
    }

    /// The main graph, mutably (used by the patch driver on its own copy).
    pub(crate) fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.get_or_insert_with(GraphProto::default)
    }

    /// Opset version imported for `domain` ("" or "ai.onnx" is the default domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let want = if domain == "ai.onnx" { "" } else { domain };
        self.proto.opset_import.iter().find_map(|o| {
            let d = o.domain.as_deref().unwrap_or("");
            let d = if d == "ai.onnx" { "" } else { d };
            (d == want).then_some(o.version.unwrap_or(0))
        })
    }

    /// Encodes the model with all data inline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, OnnxError> {
        let len = self.proto.encoded_len();
        if len > PROTOBUF_LIMIT {
            return Err(OnnxError::TooLarge { bytes: len });
        }
        Ok(self.proto.encode_to_vec())
    }

    /// sha256 of the inline encoding (stable for a given model).
    pub fn sha256(&self) -> Result<String, OnnxError> {
        Ok(hex::encode(Sha256::digest(self.to_bytes()?)))
    }

    /// Saves the model atomically, writing external data as `opts` says.
    pub fn save(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<(), OnnxError> {
        let path = path.as_ref();
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.onnx");
        let external = match &opts.external_data {
            ExternalData::Never => None,
            ExternalData::Always { location, threshold } => Some((location.clone(), *threshold)),
            ExternalData::Auto => (self.proto.encoded_len() > PROTOBUF_LIMIT).then(|| (format!("{file_name}.data"), 1024)),
        };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        match external {
            None => atomic_write(path, &self.to_bytes()?),
            Some((location, threshold)) => {
                check_relative(&location).map_err(|reason| OnnxError::ExternalData { tensor: String::new(), reason })?;
                let mut copy = self.clone();
                let data_path = dir.join(&location);
                let tmp_data = tmp_path(&data_path);
                let mut out = std::io::BufWriter::new(File::create(&tmp_data).map_err(|e| OnnxError::io(&tmp_data, e))?);
                let mut offset = 0usize;
                let mut result = Ok(());
                copy.for_each_tensor_mut(&mut |t| {
                    let Some(raw) = &t.raw_data else { return };
                    if raw.len() < threshold || result.is_err() {
                        return;
                    }
                    // Align each tensor to 4 KiB, as onnx's own writer does, for mmap.
                    let pad = (4096 - offset % 4096) % 4096;
                    result = out.write_all(&vec![0u8; pad]).and_then(|()| out.write_all(raw)).map_err(|e| OnnxError::io(&tmp_data, e));
                    offset += pad;
                    t.external_data = vec![kv("location", &location), kv("offset", &offset.to_string()), kv("length", &raw.len().to_string())];
                    offset += raw.len();
                    t.raw_data = None;
                    t.data_location = Some(1);
                });
                result?;
                out.flush().map_err(|e| OnnxError::io(&tmp_data, e))?;
                drop(out);
                // Both temp files are complete before either replaces an existing file.
                let tmp_model = tmp_path(path);
                std::fs::write(&tmp_model, copy.to_bytes()?).map_err(|e| OnnxError::io(&tmp_model, e))?;
                std::fs::rename(&tmp_data, &data_path).map_err(|e| OnnxError::io(&data_path, e))?;
                std::fs::rename(&tmp_model, path).map_err(|e| OnnxError::io(path, e))
            }
        }
    }

    /// Calls `f` on every tensor in the model: initializers, `Constant` node values and
    /// tensor attributes, in the main graph and every subgraph.
    pub fn for_each_tensor_mut(&mut self, f: &mut dyn FnMut(&mut TensorProto)) {
        if let Some(g) = self.proto.graph.as_mut() {
            graph_tensors_mut(g, f);
        }
        for func in &mut self.proto.functions {
            for node in &mut func.node {
                for attr in &mut node.attribute {
                    if let Some(t) = attr.t.as_mut() {
                        f(t);
                    }
                }
            }
        }
    }
}

fn empty_graph() -> &'static GraphProto {
    static EMPTY: std::sync::OnceLock<GraphProto> = std::sync::OnceLock::new();
    EMPTY.get_or_init(GraphProto::default)
}

fn graph_tensors_mut(g: &mut GraphProto, f: &mut dyn FnMut(&mut TensorProto)) {
    for t in &mut g.initializer {
        f(t);
    }
    for s in &mut g.sparse_initializer {
        if let Some(v) = s.values.as_mut() {
            f(v);
        }
        if let Some(i) = s.indices.as_mut() {
            f(i);
        }
    }
    for node in &mut g.node {
        for attr in &mut node.attribute {
            if let Some(t) = attr.t.as_mut() {
                f(t);
            }
            for t in &mut attr.tensors {
                f(t);
            }
            if let Some(sub) = attr.g.as_mut() {
                graph_tensors_mut(sub, f);
            }
            for sub in &mut attr.graphs {
                graph_tensors_mut(sub, f);
            }
        }
    }
}

fn kv(k: &str, v: &str) -> StringStringEntryProto {
    StringStringEntryProto { key: Some(k.to_owned()), value: Some(v.to_owned()) }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| OnnxError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| OnnxError::io(path, e))
}

/// External data locations must stay inside the model's folder.
fn check_relative(location: &str) -> Result<(), String> {
    let p = Path::new(location);
    if location.is_empty() || p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("location '{location}' must be a relative path inside the model's folder"));
    }
    Ok(())
}

struct ExternalReader {
    base: Option<PathBuf>,
    files: HashMap<String, File>,
}

impl ExternalReader {
    fn resolve(&mut self, t: &mut TensorProto) -> Result<(), OnnxError> {
        let name = tensor_name(t).to_owned();
        let err = |reason: String| OnnxError::ExternalData { tensor: name.clone(), reason };
        let field = |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
        let location = field("location").ok_or_else(|| err("no 'location' entry".into()))?;
        let offset: u64 = field("offset").map_or(Ok(0), |v| v.parse()).map_err(|_| err("bad 'offset'".into()))?;
        let length: Option<u64> = field("length").map(|v| v.parse()).transpose().map_err(|_| err("bad 'length'".into()))?;
        check_relative(&location).map_err(err)?;
        let base = self.base.as_ref().ok_or_else(|| err("model was loaded from bytes; external data needs its folder".into()))?;
        let full = base.join(&location);
        if !self.files.contains_key(&location) {
            let file = File::open(&full).map_err(|e| err(format!("cannot open {}: {e}", full.display())))?;
            self.files.insert(location.clone(), file);
        }
        let file = self.files.get_mut(&location).ok_or_else(|| err("file vanished".into()))?;
        let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        let length = length.unwrap_or(file_len.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(err(format!("{} is {file_len} bytes but the tensor needs bytes {offset}..{}", full.display(), offset.saturating_add(length))));
        }
        let mut buf = vec![0u8; length as usize];
        file.seek(SeekFrom::Start(offset)).map_err(|e| err(e.to_string()))?;
        file.read_exact(&mut buf).map_err(|e| err(e.to_string()))?;
        t.raw_data = Some(buf);
        t.external_data.clear();
        t.data_location = None;
        Ok(())
    }
}
