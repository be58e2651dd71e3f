//! f32 matrix products through the system's OpenBLAS (`cblas_sgemm`, loaded at run time with
//! `libloading`), as a candle custom op with its backward; candle's own matmul where OpenBLAS
//! is absent (`TAMP_BLAS=off` forces that), the dtype is not f32, or batch dimensions
//! broadcast.
//!
//! Why: candle's CPU matmul (the `gemm` crate) is the larger part of the gap to PyTorch's
//! training step on the same graph (PyTorch calls OpenBLAS or oneDNN). Loading the library at
//! run time keeps the build free of a system dependency: a machine without it trains exactly
//! as before, only slower. Both operands are read in place when their last two dimensions are
//! row- or column-major (a transposed weight needs no copy: BLAS's transpose flags).

// The workspace denies `unsafe`; this module is its one exception: calling a C library is
// unsafe by nature. Two calls, each with its SAFETY argument.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

type Sgemm = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

struct Blas {
    sgemm: Sgemm,
    _lib: libloading::Library,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

fn blas() -> Option<&'static Blas> {
    BLAS.get_or_init(|| {
        if std::env::var("TAMP_BLAS").is_ok_and(|v| v == "off") {
            return None;
        }
        let threads = std::env::var("TAMP_BLAS_THREADS")
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as i32);
        ["libopenblas.so.0", "libopenblas.so"].iter().find_map(|name| {
            // SAFETY: loading OpenBLAS runs no initialiser with preconditions, and the two
            // symbols are read with the signatures its cblas.h declares.
            unsafe {
                let lib = libloading::Library::new(*name).ok()?;
                let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
                if let Ok(set) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
                    set(threads);
                }
                Some(Blas { sgemm, _lib: lib })
            }
        })
    })
    .as_ref()
}

/// Whether products go through OpenBLAS (for reports and benchmarks).
pub fn available() -> bool {
    blas().is_some()
}

/// How the last two dimensions of `l` are stored: (transposed, leading dimension), or `None`
/// when neither row- nor column-major.
fn matrix(l: &Layout) -> Option<(bool, usize)> {
    let (d, s) = (l.dims(), l.stride());
    let r = d.len();
    let (rows, cols) = (d[r - 2], d[r - 1]);
    if s[r - 1] == 1 && s[r - 2] >= cols.max(1) {
        Some((false, s[r - 2]))
    } else if s[r - 2] == 1 && s[r - 1] >= rows.max(1) {
        Some((true, s[r - 1]))
    } else {
        None
    }
}

/// `a · b` for f32 tensors of the same rank ≥ 2 with equal batch dimensions.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let r = a.rank();
    let plain = blas().is_some()
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32
        && a.device().is_cpu()
        && r >= 2
        && b.rank() == r
        && a.dims()[..r - 2] == b.dims()[..r - 2]
        && a.dims()[r - 1] == b.dims()[r - 2]
        && a.elem_count() > 0
        && b.elem_count() > 0;
    if !plain {
        return a.contiguous()?.matmul(&b.contiguous()?);
    }
    let a = if matrix(a.layout()).is_some() { a.clone() } else { a.contiguous()? };
    let b = if matrix(b.layout()).is_some() { b.clone() } else { b.contiguous()? };
    a.apply_op2(&b, BlasMatMul)
}

struct BlasMatMul;

impl CustomOp2 for BlasMatMul {
    fn name(&self) -> &'static str {
        "blas-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else { candle_core::bail!("blas-matmul: float32 only") };
        let Some(blas) = blas() else { candle_core::bail!("blas-matmul: OpenBLAS is not loaded") };
        let (Some((ta, lda)), Some((tb, ldb))) = (matrix(l1), matrix(l2)) else { candle_core::bail!("blas-matmul: strided operands") };
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
        let batch: Vec<usize> = da[..r - 2].to_vec();
        let count: usize = batch.iter().product();
        let mut out = vec![0f32; count * m * n];
        let (sa, sb) = (l1.stride(), l2.stride());
        for i in 0..count {
            // The batch index's offset in each operand (any batch strides).
            let (mut oa, mut ob, mut rest) = (l1.start_offset(), l2.start_offset(), i);
            for d in (0..r - 2).rev() {
                let idx = rest % batch[d];
                rest /= batch[d];
                oa += idx * sa[d];
                ob += idx * sb[d];
            }
            let c = &mut out[i * m * n..(i + 1) * m * n];
            // SAFETY: the offsets and leading dimensions describe sub-slices of `a` and `b`
            // that the layouts guarantee are in bounds; `c` holds m·n values.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    if ta { TRANS } else { NO_TRANS },
                    if tb { TRANS } else { NO_TRANS },
                    m as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    a[oa..].as_ptr(),
                    lda as i32,
                    b[ob..].as_ptr(),
                    ldb as i32,
                    0.0,
                    c.as_mut_ptr(),
                    n as i32,
                );
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ga = matmul(grad, &b.t()?)?;
        let gb = matmul(&a.t()?, grad)?;
        Ok((Some(ga), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Products and gradients match candle's own, for plain, transposed and batched operands.
    #[test]
    fn products_and_gradients_match_candle() {
        if !available() {
            eprintln!("OpenBLAS not installed: nothing to compare");
            return;
        }
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::arange(0f32, 2.0 * 3.0 * 5.0, &dev).unwrap().reshape((2, 3, 5)).unwrap().affine(0.1, -1.0).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::arange(0f32, 2.0 * 4.0 * 5.0, &dev).unwrap().reshape((2, 4, 5)).unwrap().affine(0.05, 0.3).unwrap()).unwrap();
        let bt = b.as_tensor().transpose(1, 2).unwrap();
        let ours = matmul(a.as_tensor(), &bt).unwrap();
        let theirs = a.as_tensor().matmul(&bt.contiguous().unwrap()).unwrap();
        let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{diff}");
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            let d = (g1.get(v.as_tensor()).unwrap() - g2.get(v.as_tensor()).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-3, "{d}");
        }
    }
}
