//! AdamW as one CUDA kernel per weight: Tamp's optimizer step written with candle's ops is
//! ~16 kernel launches per weight (a MiniLM step ran ~1,600 of them), which on a GPU costs
//! more than the arithmetic. The kernel does exactly what the op-by-op step does (decoupled
//! weight decay, bias-corrected moments); masks are applied to the gradient before it, so
//! pruned zeros stay zero (their moments stay 0, so their update is 0). Compiled once per
//! process with NVRTC. The weight is updated in place; the two moments live in one `(2, n)`
//! tensor the kernel writes through its device pointer.

// The workspace denies `unsafe`; launching a kernel is unsafe by nature (one launch, with its
// SAFETY argument), as calling OpenBLAS is in `blas.rs`.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CpuStorage, CudaStorage, InplaceOp3, Layout, Result, Tensor};

const SRC: &str = r#"
extern "C" __global__ void tamp_adamw(float* w, float* mv, const float* g, unsigned int n,
    float b1, float b2, float step_size, float bc2_sqrt, float eps, float decay) {
  unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float gi = g[i];
  float m = b1 * mv[i] + (1.0f - b1) * gi;
  float v = b2 * mv[n + i] + (1.0f - b2) * gi * gi;
  mv[i] = m;
  mv[n + i] = v;
  w[i] = w[i] * decay - step_size * m / (sqrtf(v) / bc2_sqrt + eps);
}
"#;

static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();

/// One AdamW step's scalars.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub b1: f32,
    pub b2: f32,
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
    /// `√(1 − β2ᵗ)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// `1 − lr · weight_decay` (1 where the weight takes no decay).
    pub decay: f32,
}

impl InplaceOp3 for Step {
    fn name(&self) -> &'static str {
        "tamp-adamw"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("tamp-adamw is the GPU path; the CPU steps op by op")
    }

    fn cuda_fwd(&self, dst: &mut CudaStorage, dst_l: &Layout, mv: &CudaStorage, mv_l: &Layout, g: &CudaStorage, g_l: &Layout) -> Result<()> {
        let whole = |l: &Layout, n: usize| l.contiguous_offsets().filter(|&(a, b)| b - a == n);
        let n = dst_l.shape().elem_count();
        let (Some((w0, w1)), Some((m0, m1)), Some((g0, g1))) = (whole(dst_l, n), whole(mv_l, 2 * n), whole(g_l, n)) else {
            candle_core::bail!("tamp-adamw: contiguous weight, moments (2, n) and gradient expected")
        };
        let ptx = PTX.get_or_init(|| candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SRC).map(|p| p.to_src()).map_err(|e| e.to_string()));
        let ptx = ptx.as_ref().map_err(|e| candle_core::Error::Msg(format!("tamp-adamw: NVRTC: {e}")))?;
        let dev = dst.device().clone();
        let func = dev.get_or_load_custom_func("tamp_adamw", "tamp_adamw", ptx)?;
        let (mv, g) = (mv.as_cuda_slice::<f32>()?.slice(m0..m1), g.as_cuda_slice::<f32>()?.slice(g0..g1));
        let mut w = dst.as_cuda_slice_mut::<f32>()?.slice_mut(w0..w1);
        let n32 = u32::try_from(n).map_err(|_| candle_core::Error::Msg("tamp-adamw: weight too large".into()))?;
        let mut b = func.builder();
        b.arg(&mut w).arg(&mv).arg(&g).arg(&n32).arg(&self.b1).arg(&self.b2).arg(&self.step_size).arg(&self.bc2_sqrt).arg(&self.eps).arg(&self.decay);
        // SAFETY: the kernel reads n gradient values and writes n weights and 2n moments, the
        // sizes checked above.
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }.map_err(|e| candle_core::Error::Msg(format!("tamp-adamw: {e}")))?;
        Ok(())
    }
}

/// Applies one step to `w` (a weight on the GPU) with moments `mv` (`(2, n)`) and gradient
/// `g`.
pub fn step(w: &Tensor, mv: &Tensor, g: &Tensor, s: Step) -> Result<()> {
    w.inplace_op3(mv, &g.contiguous()?, &s)
}
