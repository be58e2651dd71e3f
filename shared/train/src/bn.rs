//! BatchNormalization as one candle custom op with its analytic backward. Written with
//! candle's broadcasting ops it took ten reductions over the non-contiguous (N, H, W) axes
//! per layer and step, each through candle's strided path (a quarter of a ResNet-8 step).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `y = γ·(x − μ)/√(σ² + ε) + β` over `[N, C, …]`, per channel `C`. In training μ and σ² are
/// the batch's (biased) statistics and the gradient flows through them; otherwise they are
/// the running statistics given here.
pub struct BatchNorm {
    pub eps: f64,
    /// `None`: batch statistics (training).
    pub running: Option<(Vec<f32>, Vec<f32>)>,
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

/// Per-channel mean and biased variance, in f64.
pub fn batch_stats(x: &[f32], dims: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let (n, c, inner) = geometry(dims);
    let count = (n * inner).max(1) as f64;
    let mut mean = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for b in 0..n {
        for ch in 0..c {
            let plane = &x[(b * c + ch) * inner..][..inner];
            let (s, q) = plane.iter().fold((0f64, 0f64), |(s, q), &v| (s + f64::from(v), q + f64::from(v) * f64::from(v)));
            mean[ch] += s;
            sq[ch] += q;
        }
    }
    let var = mean.iter_mut().zip(&sq).map(|(m, q)| {
        *m /= count;
        (q / count - *m * *m).max(0.0)
    });
    let var: Vec<f64> = var.collect();
    (mean, var)
}

impl BatchNorm {
    fn stats(&self, x: &[f32], dims: &[usize]) -> (Vec<f64>, Vec<f64>) {
        match &self.running {
            Some((m, v)) => (m.iter().map(|&a| f64::from(a)).collect(), v.iter().map(|&a| f64::from(a)).collect()),
            None => batch_stats(x, dims),
        }
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
        let mut out = vec![0f32; x.len()];
        for b in 0..n {
            for ch in 0..c {
                let inv = 1.0 / (var[ch] + self.eps).sqrt();
                let (scale, shift) = (f64::from(gamma[ch]) * inv, f64::from(beta[ch]) - f64::from(gamma[ch]) * inv * mean[ch]);
                let at = (b * c + ch) * inner;
                for (o, &v) in out[at..at + inner].iter_mut().zip(&x[at..at + inner]) {
                    *o = (f64::from(v) * scale + shift) as f32;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, gamma: &Tensor, _beta: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims().to_vec();
        let (n, c, inner) = geometry(&dims);
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gamma_v = gamma.flatten_all()?.to_vec1::<f32>()?;
        let (mean, var) = self.stats(&xs, &dims);
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        // Σ dy and Σ dy·x̂ per channel.
        let (mut sum_dy, mut sum_dy_xhat) = (vec![0f64; c], vec![0f64; c]);
        for b in 0..n {
            for ch in 0..c {
                let at = (b * c + ch) * inner;
                for (&dy, &v) in gs[at..at + inner].iter().zip(&xs[at..at + inner]) {
                    sum_dy[ch] += f64::from(dy);
                    sum_dy_xhat[ch] += f64::from(dy) * (f64::from(v) - mean[ch]) * inv[ch];
                }
            }
        }
        let count = (n * inner) as f64;
        let mut dx = vec![0f32; xs.len()];
        for b in 0..n {
            for ch in 0..c {
                let at = (b * c + ch) * inner;
                let g = f64::from(gamma_v[ch]) * inv[ch];
                for ((o, &dy), &v) in dx[at..at + inner].iter_mut().zip(&gs[at..at + inner]).zip(&xs[at..at + inner]) {
                    let xhat = (f64::from(v) - mean[ch]) * inv[ch];
                    *o = match self.running {
                        Some(_) => (g * f64::from(dy)) as f32,
                        None => (g * (f64::from(dy) - sum_dy[ch] / count - xhat * sum_dy_xhat[ch] / count)) as f32,
                    };
                }
            }
        }
        let dev = x.device();
        let dx = Tensor::from_vec(dx, dims, dev)?;
        let dgamma = Tensor::from_vec(sum_dy_xhat.iter().map(|&v| v as f32).collect::<Vec<f32>>(), gamma.shape(), dev)?;
        let dbeta = Tensor::from_vec(sum_dy.iter().map(|&v| v as f32).collect::<Vec<f32>>(), gamma.shape(), dev)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}
