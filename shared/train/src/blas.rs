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
//!
//! One thread pool: OpenBLAS runs single-threaded and the work is split over candle's own
//! pool ([`parallel`]), which candle's element-wise ops already use. Two pools that spin while
//! they wait (OpenBLAS's and candle's) fought over the cores: on 2 cores a ResNet-8 step was
//! faster with either one alone than with both.

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
        let threads = std::env::var("TAMP_BLAS_THREADS").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(1);
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
        // Tasks: (batch index, block of output rows); each writes its own rows of `out`.
        let rows = m.div_ceil(threads() * 4).max(32).min(m.max(1));
        let blocks = m.div_ceil(rows);
        let slots: Vec<std::sync::Mutex<&mut [f32]>> = out.chunks_mut(m * n).flat_map(|o| o.chunks_mut(rows * n)).map(std::sync::Mutex::new).collect();
        parallel(
            count * blocks,
            || (),
            |(), t| {
                let (i, blk) = (t / blocks, t % blocks);
                // The batch index's offset in each operand (any batch strides).
                let (mut oa, mut ob, mut rest) = (l1.start_offset(), l2.start_offset(), i);
                for d in (0..r - 2).rev() {
                    let idx = rest % batch[d];
                    rest /= batch[d];
                    oa += idx * sa[d];
                    ob += idx * sb[d];
                }
                let r0 = blk * rows;
                let mr = rows.min(m - r0);
                // Row r0 of op(A): a row of A, or a column of a column-major A.
                oa += if ta { r0 } else { r0 * lda };
                let mut c = slots[i * blocks + blk].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                gemm_with(blas, ta, tb, (mr, n, k), 1.0, &a[oa..], lda, &b[ob..], ldb, 0.0, &mut c, n);
            },
        );
        drop(slots);
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

/// Rows (or, transposed, columns) × leading dimension: the slice length a row-major
/// `rows × cols` operand with leading dimension `ld` needs.
fn needed(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols }
}

/// `C = α·op(A)·op(B) + β·C` on row-major slices, `(m, n, k)` the product's sizes; `op` is a
/// transpose where `ta`/`tb` is set. OpenBLAS where loaded (single-threaded: callers split
/// work with [`parallel`]), ndarray's matrixmultiply otherwise.
///
/// # Panics
/// When a slice is shorter than its sizes and leading dimension need.
#[allow(clippy::too_many_arguments)] // BLAS's own signature
pub fn sgemm(ta: bool, tb: bool, mnk: (usize, usize, usize), alpha: f32, a: &[f32], lda: usize, b: &[f32], ldb: usize, beta: f32, c: &mut [f32], ldc: usize) {
    match blas() {
        Some(blas) => gemm_with(blas, ta, tb, mnk, alpha, a, lda, b, ldb, beta, c, ldc),
        None => {
            use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
            let (m, n, k) = mnk;
            fn view<'a>(s: &str, t: bool, r: usize, cl: usize, ld: usize, v: &'a [f32]) -> ArrayView2<'a, f32> {
                let strides = if t { (1, ld) } else { (ld, 1) };
                let len = if t { needed(cl, r, ld) } else { needed(r, cl, ld) };
                ArrayView2::from_shape((r, cl).strides(strides), &v[..len]).unwrap_or_else(|e| panic!("sgemm: operand {s}: {e}"))
            }
            let (av, bv) = (view("A", ta, m, k, lda, a), view("B", tb, k, n, ldb, b));
            let mut cv = ArrayViewMut2::from_shape((m, n).strides((ldc, 1)), &mut c[..needed(m, n, ldc)]).unwrap_or_else(|e| panic!("sgemm: C: {e}"));
            ndarray::linalg::general_mat_mul(alpha, &av, &bv, beta, &mut cv);
        }
    }
}

#[allow(clippy::too_many_arguments)] // BLAS's own signature
fn gemm_with(
    blas: &Blas,
    ta: bool,
    tb: bool,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (ar, ac) = if ta { (k, m) } else { (m, k) };
    let (br, bc) = if tb { (n, k) } else { (k, n) };
    assert!(lda >= ac.max(1) && ldb >= bc.max(1) && ldc >= n, "sgemm: a leading dimension is shorter than its row");
    assert!(a.len() >= needed(ar, ac, lda) && b.len() >= needed(br, bc, ldb) && c.len() >= needed(m, n, ldc), "sgemm: an operand is shorter than its sizes");
    // SAFETY: the assertions above bound every element BLAS reads in `a`, `b` and writes in
    // `c` (row-major, the given leading dimensions); `c` is exclusively borrowed.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
            if ta { TRANS } else { NO_TRANS },
            if tb { TRANS } else { NO_TRANS },
            m as i32,
            n as i32,
            k as i32,
            alpha,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            beta,
            c.as_mut_ptr(),
            ldc as i32,
        );
    }
}

/// Threads in candle's pool, the calling thread included.
pub fn threads() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// Runs `work(state, task)` for every task in `0..n` on candle's thread pool (the caller's
/// thread included), tasks taken in order from a shared cursor; each thread starts from
/// `init()`, and the states come back, one a thread that ran at least one task.
pub fn parallel<S: Send>(n: usize, init: impl Fn() -> S + Sync, work: impl Fn(&mut S, usize) + Sync) -> Vec<S> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if n <= 1 || threads() == 1 {
        let mut s = init();
        (0..n).for_each(|t| work(&mut s, t));
        return vec![s];
    }
    let cursor = AtomicUsize::new(0);
    let states = Mutex::new(Vec::new());
    candle_core::utils::barrier_pool().execute(|_| {
        let mut s = None;
        loop {
            let t = cursor.fetch_add(1, Ordering::Relaxed);
            if t >= n {
                break;
            }
            work(s.get_or_insert_with(&init), t);
        }
        if let Some(s) = s {
            states.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(s);
        }
    });
    states.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f(i, chunk)` for the `i`-th `len`-long chunk of `out` on candle's pool; every chunk
/// is written by one task, so the result does not depend on the thread count.
pub fn for_chunks<T: Send>(out: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    use std::sync::{Mutex, PoisonError};
    let slots: Vec<Mutex<&mut [T]>> = out.chunks_mut(len.max(1)).map(Mutex::new).collect();
    parallel(slots.len(), || (), |(), t| f(t, &mut slots[t].lock().unwrap_or_else(PoisonError::into_inner)));
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
