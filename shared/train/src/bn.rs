//! BatchNormalization as one candle custom op with its analytic backward. Written with
//! candle's broadcasting ops it took ten reductions over the non-contiguous (N, H, W) axes
//! per layer and step, each through candle's strided path (a quarter of a ResNet-8 step).
//! The batch statistics are computed once, in the forward pass, and kept for the backward
//! and the running-statistics update; every pass over the data is f32 in eight lanes (sums
//! per plane, then f64 across planes), which the compiler vectorises (no `mul_add`: on the
//! baseline x86-64 target it is a call to libm's `fmaf`).

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Per-channel mean and biased variance.
pub type Stats = (Vec<f64>, Vec<f64>);

/// `y = γ·(x − μ)/√(σ² + ε) + β` over `[N, C, …]`, per channel `C`. In training μ and σ² are
/// the batch's (biased) statistics and the gradient flows through them; otherwise they are
/// the running statistics given here.
pub struct BatchNorm {
    pub eps: f64,
    /// `None`: batch statistics (training).
    pub running: Option<(Vec<f32>, Vec<f32>)>,
    /// The batch statistics the forward pass computed (training), read by the backward pass
    /// and by the caller's running-statistics update.
    pub batch: Arc<Mutex<Option<Stats>>>,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("batch norm: float32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("batch norm: needs contiguous inputs") };
    Ok(&v[a..b])
}

/// (batch count, channels, inner size) of `[N, C, …]`.
fn geometry(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims.get(1).copied().unwrap_or(1), dims.iter().skip(2).product())
}

/// `(Σ a, Σ a·b)` over two equal-length slices, in eight f32 lanes.
fn dot_sums(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut s, mut d) = ([0f32; 8], [0f32; 8]);
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            s[i] += x[i];
            d[i] += x[i] * y[i];
        }
    }
    let tail = ra.iter().zip(rb).fold((0f64, 0f64), |(s, d), (&x, &y)| (s + f64::from(x), d + f64::from(x) * f64::from(y)));
    (s.iter().map(|&v| f64::from(v)).sum::<f64>() + tail.0, d.iter().map(|&v| f64::from(v)).sum::<f64>() + tail.1)
}

/// Planes of `inner` values a pool task takes: about 16k values.
fn planes_per_task(inner: usize) -> usize {
    (16_384 / inner.max(1)).max(1)
}

/// Per-plane `(Σ a, Σ a·b)` of two `[N, C, …]` buffers on the pool, in plane order.
fn plane_sums(a: &[f32], b: &[f32], planes: usize, inner: usize) -> Vec<(f64, f64)> {
    let per = planes_per_task(inner);
    let mut sums = vec![(0f64, 0f64); planes];
    crate::blas::for_chunks(&mut sums, per, |t, out| {
        for (j, o) in out.iter_mut().enumerate() {
            let at = (t * per + j) * inner;
            *o = dot_sums(&a[at..at + inner], &b[at..at + inner]);
        }
    });
    sums
}

/// Per-channel mean and biased variance of `[N, C, …]`.
pub fn batch_stats(x: &[f32], dims: &[usize]) -> Stats {
    let (n, c, inner) = geometry(dims);
    let count = (n * inner).max(1) as f64;
    let (mut mean, mut sq) = (vec![0f64; c], vec![0f64; c]);
    for (i, (s, q)) in plane_sums(x, x, n * c, inner).into_iter().enumerate() {
        mean[i % c] += s;
        sq[i % c] += q;
    }
    let var = mean
        .iter_mut()
        .zip(&sq)
        .map(|(m, q)| {
            *m /= count;
            (q / count - *m * *m).max(0.0)
        })
        .collect();
    (mean, var)
}

impl BatchNorm {
    fn stats(&self, x: &[f32], dims: &[usize]) -> Stats {
        match &self.running {
            Some((m, v)) => (m.iter().map(|&a| f64::from(a)).collect(), v.iter().map(|&a| f64::from(a)).collect()),
            None => {
                let mut kept = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
                kept.get_or_insert_with(|| batch_stats(x, dims)).clone()
            }
        }
    }
}

/// `out[i] = a·p[i] + b·q[i] + c` over one plane.
fn affine2(out: &mut [f32], p: &[f32], q: &[f32], (a, b, c): (f32, f32, f32)) {
    for ((o, &u), &v) in out.iter_mut().zip(p).zip(q) {
        *o = a * u + b * v + c;
    }
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "batch-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (contiguous(s1, l1)?, contiguous(s2, l2)?, contiguous(s3, l3)?);
        let dims = l1.dims();
        let (n, c, inner) = geometry(dims);
        let (mean, var) = self.stats(x, dims);
        let coef: Vec<(f32, f32)> = (0..c)
            .map(|ch| {
                let inv = 1.0 / (var[ch] + self.eps).sqrt();
                let scale = f64::from(gamma[ch]) * inv;
                (scale as f32, (f64::from(beta[ch]) - scale * mean[ch]) as f32)
            })
            .collect();
        let mut out = vec![0f32; x.len()];
        let (inner, per) = (inner.max(1), planes_per_task(inner));
        crate::blas::for_chunks(&mut out[..n * c * inner], per * inner, |t, o| {
            for (j, o) in o.chunks_exact_mut(inner).enumerate() {
                let plane = t * per + j;
                let (scale, shift) = coef[plane % c];
                for (o, &v) in o.iter_mut().zip(&x[plane * inner..(plane + 1) * inner]) {
                    *o = v * scale + shift;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims().to_vec();
        let (n, c, inner) = geometry(&dims);
        let inner = inner.max(1);
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gamma_v = gamma.flatten_all()?.to_vec1::<f32>()?;
        let (mean, var) = self.stats(&xs, &dims);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // Σ dy and Σ dy·x per channel; Σ dy·x̂ = inv·(Σ dy·x − μ·Σ dy).
        let (mut sum_dy, mut sum_dyx) = (vec![0f64; c], vec![0f64; c]);
        for (i, (s, d)) in plane_sums(&gs, &xs, n * c, inner).into_iter().enumerate() {
            sum_dy[i % c] += s;
            sum_dyx[i % c] += d;
        }
        let sum_dy_xhat: Vec<f64> = (0..c).map(|ch| inv[ch] * (sum_dyx[ch] - mean[ch] * sum_dy[ch])).collect();
        let count = (n * inner) as f64;
        // dx = G·dy + B·x + C per channel, G = γ·inv (with batch statistics, the terms through
        // μ and σ²: B = −G·inv·Σdy·x̂/count, C = G·(inv·μ·Σdy·x̂ − Σdy)/count).
        let coef: Vec<(f32, f32, f32)> = (0..c)
            .map(|ch| {
                let g = f64::from(gamma_v[ch]) * inv[ch];
                match self.running {
                    Some(_) => (g as f32, 0.0, 0.0),
                    None => {
                        let b = -g * inv[ch] * sum_dy_xhat[ch] / count;
                        (g as f32, b as f32, (g * (inv[ch] * mean[ch] * sum_dy_xhat[ch] - sum_dy[ch]) / count) as f32)
                    }
                }
            })
            .collect();
        let mut dx = vec![0f32; xs.len()];
        let per = planes_per_task(inner);
        crate::blas::for_chunks(&mut dx[..n * c * inner], per * inner, |t, o| {
            for (j, o) in o.chunks_exact_mut(inner).enumerate() {
                let plane = t * per + j;
                let at = plane * inner;
                affine2(o, &gs[at..at + inner], &xs[at..at + inner], coef[plane % c]);
            }
        });
        let dev = x.device();
        let dx = Tensor::from_vec(dx, dims, dev)?;
        let dgamma = Tensor::from_vec(sum_dy_xhat.iter().map(|&v| v as f32).collect::<Vec<f32>>(), gamma.shape(), dev)?;
        let dbeta = Tensor::from_vec(sum_dy.iter().map(|&v| v as f32).collect::<Vec<f32>>(), gamma.shape(), dev)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// `max(x, 0)` with a one-pass backward (the gradient where the output is positive). Candle's
/// own backward builds a zero tensor, a comparison, a cast and a product: four passes.
pub struct Relu;

impl candle_core::CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut y = vec![0f32; x.len()];
        crate::blas::for_chunks(&mut y, 1 << 14, |t, o| {
            for (o, &v) in o.iter_mut().zip(&x[t << 14..]) {
                *o = v.max(0.0);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(&res.contiguous()?, &ReluGrad)?))
    }
}

struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, y) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let mut d = vec![0f32; g.len()];
        crate::blas::for_chunks(&mut d, 1 << 14, |t, o| {
            for ((o, &g), &y) in o.iter_mut().zip(&g[t << 14..]).zip(&y[t << 14..]) {
                *o = if y > 0.0 { g } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}
