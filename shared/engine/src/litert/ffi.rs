//! LiteRT (TFLite's runtime) loaded at run time from the `ai-edge-litert` wheel's
//! `libLiteRt.so` (what `make litert` extracts; `LITERT_LIB_PATH` overrides), through its C
//! API: compile a `.tflite` for the CPU (XNNPACK), run float32 inputs, read float32 outputs.
//! The exporters' artifacts are measured in the runtime they are for with this.
//!
//! Declarations mirror `litert/c/*.h` of google-ai-edge/LiteRT at the 2.3.0 release (the
//! struct sizes and offsets the headers `static_assert` are asserted here too). The crate's
//! only `unsafe` code is here, each block with its reason.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::Path;
use std::ptr::null_mut;
use std::sync::Arc;

type Status = c_int; // LiteRtStatus, 0 = kLiteRtStatusOk
type Handle = *mut c_void; // every LiteRt* handle is an opaque pointer

const MAX_RANK: usize = 8; // LITERT_TENSOR_MAX_RANK
const ELEM_FLOAT32: c_int = 1; // kLiteRtElementTypeFloat32
const HW_CPU: c_int = 1; // kLiteRtHwAcceleratorCpu
const LOCK_READ: c_int = 0; // kLiteRtTensorBufferLockModeRead
const LOCK_WRITE: c_int = 1; // kLiteRtTensorBufferLockModeWrite
const ENV_TAG_AUTO_REGISTER_ACCELERATORS: c_int = 24; // kLiteRtEnvOptionTagAutoRegisterAccelerators
const ENV_TAG_MIN_LOGGER_SEVERITY: c_int = 25; // kLiteRtEnvOptionTagMinLoggerSeverity
const ANY_TYPE_INT: c_int = 2; // kLiteRtAnyTypeInt

/// `LiteRtLayout` (litert_layout.h). `bits` holds the C bit-fields
/// `unsigned rank : 7; unsigned has_strides : 1;` (GCC/Clang x86-64: rank = low 7 bits).
#[repr(C)]
#[derive(Clone, Copy)]
struct Layout {
    bits: u32,
    dims: [i32; MAX_RANK],
    strides: [u32; MAX_RANK],
}

/// `LiteRtRankedTensorType` (litert_model_types.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct RankedTensorType {
    element_type: c_int, // LiteRtElementType
    layout: Layout,
}

/// `LiteRtEnvOption` (litert_environment_options.h) = `{ LiteRtEnvOptionTag tag; LiteRtAny value; }`,
/// with `LiteRtAny` (litert_any.h) = `{ LiteRtAnyType type; union { ..., int64_t int_value, ... }; }`.
#[repr(C)]
struct EnvOption {
    tag: c_int,
    value: AnyInt,
}
#[repr(C)]
struct AnyInt {
    ty: c_int,
    int_value: i64,
}

// The same sizes/offsets the C headers static_assert on 64-bit targets.
const _: () = assert!(size_of::<Layout>() == 68 && std::mem::offset_of!(Layout, strides) == 36);
const _: () = assert!(size_of::<RankedTensorType>() == 72 && std::mem::offset_of!(RankedTensorType, layout) == 4);
const _: () = assert!(size_of::<EnvOption>() == 24 && std::mem::offset_of!(EnvOption, value) == 8);

/// `LiteRtElementType` (values are the TfLiteType codes).
#[rustfmt::skip]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    Float32, Int32, UInt8, Int64, Bool, Int16, Int8, Float16, Float64, Other(i32),
}

impl ElementType {
    #[rustfmt::skip]
    fn from_c(v: c_int) -> Self {
        use ElementType::*;
        match v {
            1 => Float32, 2 => Int32, 3 => UInt8, 4 => Int64, 6 => Bool,
            7 => Int16, 9 => Int8, 10 => Float16, 11 => Float64, o => Other(o),
        }
    }
}

/// What went wrong in LiteRT, in one line.
#[derive(Debug)]
pub enum Error {
    Load(libloading::Error),
    Status { call: &'static str, code: i32, msg: &'static str },
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Load(e) => write!(f, "loading libLiteRt: {e}"),
            Error::Status { call, code, msg } => write!(f, "{call} failed: {msg} (status {code})"),
            Error::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::EngineError {
    fn from(e: Error) -> Self {
        crate::EngineError::Config(format!("LiteRT: {e}"))
    }
}

/// Declares the function-pointer table and its loader.
macro_rules! api {
    ($($f:ident($($a:ty),*) $(-> $r:ty)?;)*) => {
        #[allow(non_snake_case)]
        struct Api { $($f: unsafe extern "C" fn($($a),*) $(-> $r)?,)* _lib: libloading::Library }
        impl Api {
            fn load(path: &Path) -> Result<Api, Error> {
                // SAFETY: dlopen runs the library's initialisers; libLiteRt.so depends only on
                // libc/libm/libdl/libpthread/librt/libstdc++/libgcc_s (ldd), nothing unsound.
                let lib = unsafe { libloading::Library::new(path) }.map_err(Error::Load)?;
                Ok(Api {
                    // SAFETY: each symbol is typed exactly as declared in the LiteRT C headers;
                    // the Library lives in the same struct, so the copied pointers never dangle.
                    $($f: *unsafe { lib.get::<unsafe extern "C" fn($($a),*) $(-> $r)?>(stringify!($f)) }
                        .map_err(Error::Load)?,)*
                    _lib: lib,
                })
            }
        }
    };
}

api! {
    LiteRtCreateEnvironment(c_int, *const EnvOption, *mut Handle) -> Status;
    LiteRtDestroyEnvironment(Handle);
    LiteRtCreateModelFromFile(Handle, *const c_char, *mut Handle) -> Status;
    LiteRtDestroyModel(Handle);
    LiteRtGetModelSignature(Handle, usize, *mut Handle) -> Status;
    LiteRtGetNumSignatureInputs(Handle, *mut usize) -> Status;
    LiteRtGetNumSignatureOutputs(Handle, *mut usize) -> Status;
    LiteRtGetSignatureInputName(Handle, usize, *mut *const c_char) -> Status;
    LiteRtGetSignatureOutputName(Handle, usize, *mut *const c_char) -> Status;
    LiteRtGetSignatureInputTensorByIndex(Handle, usize, *mut Handle) -> Status;
    LiteRtGetSignatureOutputTensorByIndex(Handle, usize, *mut Handle) -> Status;
    LiteRtGetRankedTensorType(Handle, *mut RankedTensorType) -> Status;
    LiteRtCreateOptions(*mut Handle) -> Status;
    LiteRtDestroyOptions(Handle);
    LiteRtSetOptionsHardwareAccelerators(Handle, c_int) -> Status;
    LiteRtCreateOpaqueOptions(*const c_char, *mut c_void, Option<unsafe extern "C" fn(*mut c_void)>, *mut Handle)
        -> Status;
    LiteRtDestroyOpaqueOptions(Handle);
    LiteRtAddOpaqueOptions(Handle, Handle) -> Status;
    LiteRtCreateCompiledModel(Handle, Handle, Handle, *mut Handle) -> Status;
    LiteRtDestroyCompiledModel(Handle);
    LiteRtGetCompiledModelInputBufferRequirements(Handle, usize, usize, *mut Handle) -> Status;
    LiteRtGetCompiledModelOutputBufferRequirements(Handle, usize, usize, *mut Handle) -> Status;
    LiteRtCreateManagedTensorBufferFromRequirements(Handle, *const RankedTensorType, Handle, *mut Handle) -> Status;
    LiteRtDestroyTensorBuffer(Handle);
    LiteRtLockTensorBuffer(Handle, *mut *mut c_void, c_int) -> Status;
    LiteRtUnlockTensorBuffer(Handle) -> Status;
    LiteRtRunCompiledModel(Handle, usize, usize, *mut Handle, usize, *mut Handle) -> Status;
}

/// `call!(api.LiteRtFoo(args..))` calls through the table and maps the status to `Result`.
macro_rules! call {
    ($a:ident . $f:ident ( $($x:expr),* $(,)? )) => { check(stringify!($f), ($a.$f)($($x),*)) };
}

#[rustfmt::skip]
fn check(call: &'static str, code: Status) -> Result<(), Error> {
    // (LiteRtGetStatusString is not exported by the wheel's libLiteRt.so.)
    let msg = match code {
        0 => return Ok(()),
        1 => "invalid argument", 2 => "memory allocation failure", 3 => "runtime failure",
        4 => "missing input tensor", 5 => "unsupported", 6 => "not found", 7 => "timeout",
        8 => "wrong version", 10 => "already exists", 500 => "file I/O error",
        501 => "invalid flatbuffer", 502 => "dynamic loading error", 504 => "compilation error",
        1000 => "index out of bounds", _ => "LiteRT error",
    };
    Err(Error::Status { call, code, msg })
}

/// The loaded `libLiteRt.so` and its function pointers. Cheap to clone; Send + Sync.
#[derive(Clone)]
pub struct LiteRt {
    api: Arc<Api>,
    min_log_severity: i64,
}

impl LiteRt {
    pub fn load(path: &Path) -> Result<Self, Error> {
        Ok(LiteRt { api: Arc::new(Api::load(path)?), min_log_severity: 3 })
    }

    /// LiteRT's process-global log threshold, applied whenever a Runner creates its
    /// environment: -1 debug, 0 verbose, 1 info, 2 warning, 3 error (default here), 4 silent.
    pub fn set_min_log_severity(&mut self, severity: i64) {
        self.min_log_severity = severity;
    }
}

struct Tensor {
    name: String,
    ty: RankedTensorType,
    shape: Vec<i32>,
    numel: usize,
}

/// One model compiled for the CPU, with its own environment and pre-allocated
/// managed I/O buffers; reusable across any number of `run` calls.
pub struct Runner {
    api: Arc<Api>,
    env: Handle,
    model: Handle,
    options: Handle,
    compiled: Handle,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    in_bufs: Vec<Handle>,
    out_bufs: Vec<Handle>,
}

// SAFETY: every handle is exclusively owned by this Runner (own environment, model,
// options, compiled model and buffers) and LiteRT objects are not bound to the thread
// that created them; `run` takes `&mut self`, so a Runner is never used concurrently.
unsafe impl Send for Runner {}

/// Payload destructor handed to LiteRtCreateOpaqueOptions.
extern "C" fn drop_cstring(p: *mut c_void) {
    // SAFETY: LiteRT calls this exactly once, on the pointer we made with CString::into_raw.
    drop(unsafe { CString::from_raw(p.cast()) });
}

impl Runner {
    /// Loads and compiles `tflite_path` for the CPU. `threads == 0` keeps LiteRT's
    /// default (1 XNNPACK thread); N > 0 sets XNNPACK's `num_threads`.
    pub fn new(rt: &LiteRt, tflite_path: &Path, threads: usize) -> Result<Self, Error> {
        let path = CString::new(tflite_path.to_string_lossy().as_bytes()).map_err(|_| Error::Invalid("path contains NUL".into()))?;
        let a = rt.api.clone();
        let mut r = Runner {
            api: a.clone(),
            env: null_mut(),
            model: null_mut(),
            options: null_mut(),
            compiled: null_mut(),
            inputs: vec![],
            outputs: vec![],
            in_bufs: vec![],
            out_bufs: vec![],
        };
        // Register only the CPU accelerator (skips GPU/NPU library probing) and set the log level.
        let env_opts = [
            EnvOption { tag: ENV_TAG_AUTO_REGISTER_ACCELERATORS, value: AnyInt { ty: ANY_TYPE_INT, int_value: 1 } },
            EnvOption { tag: ENV_TAG_MIN_LOGGER_SEVERITY, value: AnyInt { ty: ANY_TYPE_INT, int_value: rt.min_log_severity } },
        ];
        // SAFETY: every call matches its C declaration; out-pointers point to live locals or
        // fields; handles passed in come from earlier successful calls; names returned by
        // LiteRT are NUL-terminated and owned by the model, which is still alive when copied.
        // On any early return `r` is dropped and Drop frees whatever was created so far.
        unsafe {
            call!(a.LiteRtCreateEnvironment(2, env_opts.as_ptr(), &mut r.env))?;
            call!(a.LiteRtCreateModelFromFile(r.env, path.as_ptr(), &mut r.model))?;
            let mut sig: Handle = null_mut();
            call!(a.LiteRtGetModelSignature(r.model, 0, &mut sig))?; // models without one get a default
            let (mut n_in, mut n_out) = (0usize, 0usize);
            call!(a.LiteRtGetNumSignatureInputs(sig, &mut n_in))?;
            call!(a.LiteRtGetNumSignatureOutputs(sig, &mut n_out))?;
            for (is_in, i) in (0..n_in).map(|i| (true, i)).chain((0..n_out).map(|i| (false, i))) {
                let (mut name, mut t, mut ty): (*const c_char, Handle, RankedTensorType) = (std::ptr::null(), null_mut(), std::mem::zeroed());
                if is_in {
                    call!(a.LiteRtGetSignatureInputName(sig, i, &mut name))?;
                    call!(a.LiteRtGetSignatureInputTensorByIndex(sig, i, &mut t))?;
                } else {
                    call!(a.LiteRtGetSignatureOutputName(sig, i, &mut name))?;
                    call!(a.LiteRtGetSignatureOutputTensorByIndex(sig, i, &mut t))?;
                }
                call!(a.LiteRtGetRankedTensorType(t, &mut ty))?;
                let name = if name.is_null() { String::new() } else { CStr::from_ptr(name).to_string_lossy().into() };
                let rank = (ty.layout.bits & 0x7f) as usize;
                if rank > MAX_RANK || ty.layout.dims[..rank].iter().any(|&d| d < 0) {
                    return Err(Error::Invalid(format!("tensor {name}: unsupported (dynamic?) shape")));
                }
                let shape = ty.layout.dims[..rank].to_vec();
                let numel = shape.iter().map(|&d| d as usize).product();
                let v = if is_in { &mut r.inputs } else { &mut r.outputs };
                v.push(Tensor { name, ty, shape, numel });
            }

            call!(a.LiteRtCreateOptions(&mut r.options))?;
            call!(a.LiteRtSetOptionsHardwareAccelerators(r.options, HW_CPU))?;
            if threads > 0 {
                // CPU options are opaque options with identifier "xnnpack" and a TOML C-string
                // payload (what LrtGetOpaqueCpuOptionsData builds; the Lrt* helpers are not exported).
                let payload = CString::new(format!("num_threads = {threads}\n")).map_err(|_| Error::Invalid("thread option".into()))?.into_raw();
                let mut opq: Handle = null_mut();
                let st = (a.LiteRtCreateOpaqueOptions)(c"xnnpack".as_ptr(), payload.cast(), Some(drop_cstring), &mut opq);
                if st != 0 {
                    drop(CString::from_raw(payload));
                    check("LiteRtCreateOpaqueOptions", st)?;
                }
                let st = (a.LiteRtAddOpaqueOptions)(r.options, opq); // on success r.options owns opq
                if st != 0 {
                    (a.LiteRtDestroyOpaqueOptions)(opq); // also runs drop_cstring
                    check("LiteRtAddOpaqueOptions", st)?;
                }
            }
            call!(a.LiteRtCreateCompiledModel(r.env, r.model, r.options, &mut r.compiled))?;

            for (is_in, i) in (0..n_in).map(|i| (true, i)).chain((0..n_out).map(|i| (false, i))) {
                let (mut req, mut buf): (Handle, Handle) = (null_mut(), null_mut()); // req: owned by `compiled`
                if is_in {
                    call!(a.LiteRtGetCompiledModelInputBufferRequirements(r.compiled, 0, i, &mut req))?;
                } else {
                    call!(a.LiteRtGetCompiledModelOutputBufferRequirements(r.compiled, 0, i, &mut req))?;
                }
                let ty = if is_in { &r.inputs[i].ty } else { &r.outputs[i].ty };
                call!(a.LiteRtCreateManagedTensorBufferFromRequirements(r.env, ty, req, &mut buf))?;
                if is_in { r.in_bufs.push(buf) } else { r.out_bufs.push(buf) }
            }
        }
        Ok(r)
    }

    fn describe(ts: &[Tensor]) -> Vec<(String, Vec<i32>, ElementType)> {
        ts.iter().map(|t| (t.name.clone(), t.shape.clone(), ElementType::from_c(t.ty.element_type))).collect()
    }

    /// (signature name, shape, element type) of each input of signature 0.
    pub fn inputs(&self) -> Vec<(String, Vec<i32>, ElementType)> {
        Self::describe(&self.inputs)
    }

    /// (signature name, shape, element type) of each output of signature 0.
    pub fn outputs(&self) -> Vec<(String, Vec<i32>, ElementType)> {
        Self::describe(&self.outputs)
    }

    /// One inference; every input and output must be float32.
    pub fn run(&mut self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, Error> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Invalid(format!("expected {} inputs, got {}", self.inputs.len(), inputs.len())));
        }
        for t in self.inputs.iter().chain(&self.outputs) {
            if t.ty.element_type != ELEM_FLOAT32 {
                let ty = ElementType::from_c(t.ty.element_type);
                return Err(Error::Invalid(format!("tensor {}: {ty:?} is not float32", t.name)));
            }
        }
        for (t, x) in self.inputs.iter().zip(inputs) {
            if x.len() != t.numel {
                return Err(Error::Invalid(format!("input {}: expected {} values, got {}", t.name, t.numel, x.len())));
            }
        }
        let a = &*self.api;
        let mut out = Vec::with_capacity(self.outputs.len());
        // SAFETY: each buffer was created for its float32 tensor type, so while locked it
        // exposes at least `numel` f32 at a 64-byte-aligned host address; every successful
        // lock is paired with an unlock before the pointer goes out of scope, and the buffer
        // arrays have exactly the signature's input/output counts.
        unsafe {
            for ((&buf, x), t) in self.in_bufs.iter().zip(inputs).zip(&self.inputs) {
                let mut p: *mut c_void = null_mut();
                call!(a.LiteRtLockTensorBuffer(buf, &mut p, LOCK_WRITE))?;
                std::ptr::copy_nonoverlapping(x.as_ptr(), p.cast::<f32>(), t.numel);
                call!(a.LiteRtUnlockTensorBuffer(buf))?;
            }
            let (ni, no) = (self.in_bufs.len(), self.out_bufs.len());
            let (ib, ob) = (self.in_bufs.as_mut_ptr(), self.out_bufs.as_mut_ptr());
            call!(a.LiteRtRunCompiledModel(self.compiled, 0, ni, ib, no, ob))?;
            for (&buf, t) in self.out_bufs.iter().zip(&self.outputs) {
                let mut p: *mut c_void = null_mut();
                call!(a.LiteRtLockTensorBuffer(buf, &mut p, LOCK_READ))?;
                out.push(std::slice::from_raw_parts(p.cast::<f32>(), t.numel).to_vec());
                call!(a.LiteRtUnlockTensorBuffer(buf))?;
            }
        }
        Ok(out)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let a = &*self.api;
        // SAFETY: each handle is null (skipped) or came from its LiteRtCreate* call, and is
        // destroyed exactly once, dependents first: buffers, compiled model, options, model, env.
        unsafe {
            for b in self.in_bufs.drain(..).chain(self.out_bufs.drain(..)) {
                (a.LiteRtDestroyTensorBuffer)(b);
            }
            if !self.compiled.is_null() {
                (a.LiteRtDestroyCompiledModel)(self.compiled);
            }
            if !self.options.is_null() {
                (a.LiteRtDestroyOptions)(self.options);
            }
            if !self.model.is_null() {
                (a.LiteRtDestroyModel)(self.model);
            }
            if !self.env.is_null() {
                (a.LiteRtDestroyEnvironment)(self.env);
            }
        }
    }
}
