//! CP (CANDECOMP/PARAFAC) decomposition of a convolution weight `W[Cout, Cin, kh, kw]` by
//! alternating least squares: `W ≈ Σ_r λ_r · a_r ∘ b_r ∘ c_r ∘ d_r`, rank `R`. The conv then
//! runs as four: 1×1 (`b`: Cin → R), kh×1 depthwise (`c`), 1×kw depthwise (`d`), 1×1 (`λ·a`:
//! R → Cout, with the original bias) — the separable form of Lebedev et al. (2015), which a
//! depthwise replacement also gives. It keeps `R·(Cout + Cin + kh + kw)` of the
//! `Cout·Cin·kh·kw` parameters, far fewer than Tucker-2 at the same rank, and loses more, so
//! it wants fine-tuning after it (`fine_tune` on the `lowrank` stage).
//!
//! ALS: each mode's factor is the least-squares solution with the other three fixed,
//! `U_n = X_(n) · (⊙_{m≠n} U_m) · (∗_{m≠n} U_mᵀU_m)⁻¹` (the MTTKRP computed directly on the
//! tensor, the R×R system solved by faer's LU), starting from the leading left singular
//! vectors of each unfolding (seeded values where a mode has fewer than R), columns
//! normalised after each update, stopping when the fit changes by less than 1e-7.

use ndarray::{ArrayD, IxDyn};

use faer::linalg::solvers::Solve;
use tamp_onnx::OnnxError;

/// CP factors of a conv weight, as the four conv weights they become.
#[derive(Debug, Clone)]
pub struct Cp {
    /// `[R, Cin, 1, 1]`.
    pub first: ArrayD<f32>,
    /// `[R, 1, kh, 1]`, depthwise.
    pub vertical: ArrayD<f32>,
    /// `[R, 1, 1, kw]`, depthwise.
    pub horizontal: ArrayD<f32>,
    /// `[Cout, R, 1, 1]` (λ folded in).
    pub last: ArrayD<f32>,
    pub rank: usize,
    /// ‖W − Ŵ‖_F / ‖W‖_F.
    pub relative_error: f64,
}

const MAX_SWEEPS: usize = 300;

/// Rank-`rank` CP of a 4-D conv weight; `seed` fills the starting columns a mode's SVD cannot.
pub fn cp(w: &ArrayD<f32>, rank: usize, seed: u64) -> Result<Cp, OnnxError> {
    let &[co, ci, kh, kw] = w.shape() else { return Err(OnnxError::Graph(format!("CP needs a 4-D conv weight, got {:?}", w.shape()))) };
    let dims = [co, ci, kh, kw];
    let r = rank.max(1);
    let x: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let norm2: f64 = x.iter().map(|v| v * v).sum();
    // Start: leading left singular vectors of each unfolding; seeded values past its rank.
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let mut u: Vec<Vec<f64>> = Vec::with_capacity(4); // u[n][i * r + k]
    for (n, &dn) in dims.iter().enumerate() {
        let rest = x.len() / dn;
        let unfold = faer::Mat::<f64>::from_fn(dn, rest, |i, j| x[flat(&dims, n, i, j)]);
        let svd = unfold.thin_svd().map_err(|e| OnnxError::Graph(format!("CP: SVD did not converge: {e:?}")))?;
        let (left, have) = (svd.U(), dn.min(rest));
        u.push((0..dn * r).map(|idx| if idx % r < have { left[(idx / r, idx % r)] } else { next() }).collect());
    }
    let mut lambda = vec![1.0; r];
    let mut last_fit = f64::NEG_INFINITY;
    let mut relative_error = 1.0;
    for _ in 0..MAX_SWEEPS {
        for n in 0..4 {
            let m = mttkrp(&x, &dims, &u, n, r);
            let mut v = vec![1.0; r * r];
            for (k, f) in u.iter().enumerate() {
                if k != n {
                    let g = gram(f, dims[k], r);
                    v.iter_mut().zip(&g).for_each(|(a, b)| *a *= b);
                }
            }
            u[n] = solve(&v, &m, dims[n], r)?;
            for (c, l) in lambda.iter_mut().enumerate() {
                let s = (0..dims[n]).map(|i| u[n][i * r + c].powi(2)).sum::<f64>().sqrt().max(1e-30);
                (0..dims[n]).for_each(|i| u[n][i * r + c] /= s);
                *l = s;
            }
        }
        relative_error = error2(&x, &dims, &u, &lambda, r).sqrt() / norm2.sqrt().max(1e-30);
        let fit = 1.0 - relative_error;
        if (fit - last_fit).abs() < 1e-7 {
            break;
        }
        last_fit = fit;
    }
    Ok(Cp {
        first: ArrayD::from_shape_fn(IxDyn(&[r, ci, 1, 1]), |d| u[1][d[1] * r + d[0]] as f32),
        vertical: ArrayD::from_shape_fn(IxDyn(&[r, 1, kh, 1]), |d| u[2][d[2] * r + d[0]] as f32),
        horizontal: ArrayD::from_shape_fn(IxDyn(&[r, 1, 1, kw]), |d| u[3][d[3] * r + d[0]] as f32),
        last: ArrayD::from_shape_fn(IxDyn(&[co, r, 1, 1]), |d| (u[0][d[0] * r + d[1]] * lambda[d[1]]) as f32),
        rank: r,
        relative_error,
    })
}

/// The flat index of the element at row `i`, column `j` of the mode-`n` unfolding (columns
/// run over the other modes in order).
fn flat(dims: &[usize; 4], n: usize, i: usize, mut j: usize) -> usize {
    let mut idx = [0usize; 4];
    idx[n] = i;
    for m in (0..4).rev().filter(|&m| m != n) {
        idx[m] = j % dims[m];
        j /= dims[m];
    }
    ((idx[0] * dims[1] + idx[1]) * dims[2] + idx[2]) * dims[3] + idx[3]
}

/// `X_(n) · (⊙_{m≠n} U_m)`, `[dims[n], r]`, straight from the tensor.
fn mttkrp(x: &[f64], dims: &[usize; 4], u: &[Vec<f64>], n: usize, r: usize) -> Vec<f64> {
    let mut out = vec![0.0; dims[n] * r];
    let mut prod = vec![0.0; r];
    let mut e = 0;
    for i0 in 0..dims[0] {
        for i1 in 0..dims[1] {
            for i2 in 0..dims[2] {
                for i3 in 0..dims[3] {
                    let v = x[e];
                    e += 1;
                    if v == 0.0 {
                        continue;
                    }
                    let idx = [i0, i1, i2, i3];
                    prod.iter_mut().for_each(|p| *p = v);
                    for (m, f) in u.iter().enumerate().filter(|&(m, _)| m != n) {
                        let row = &f[idx[m] * r..(idx[m] + 1) * r];
                        prod.iter_mut().zip(row).for_each(|(p, a)| *p *= a);
                    }
                    out[idx[n] * r..(idx[n] + 1) * r].iter_mut().zip(&prod).for_each(|(o, p)| *o += p);
                }
            }
        }
    }
    out
}

fn gram(f: &[f64], rows: usize, r: usize) -> Vec<f64> {
    let mut g = vec![0.0; r * r];
    for i in 0..rows {
        let row = &f[i * r..(i + 1) * r];
        for a in 0..r {
            for b in 0..r {
                g[a * r + b] += row[a] * row[b];
            }
        }
    }
    g
}

/// `M · V⁻¹` for symmetric `V` (a ridge of 1e-10·trace keeps rank-deficient starts solvable).
fn solve(v: &[f64], m: &[f64], rows: usize, r: usize) -> Result<Vec<f64>, OnnxError> {
    let ridge = 1e-10 * (0..r).map(|k| v[k * r + k]).sum::<f64>().max(1e-30);
    let vm = faer::Mat::<f64>::from_fn(r, r, |a, b| v[a * r + b] + if a == b { ridge } else { 0.0 });
    let rhs = faer::Mat::<f64>::from_fn(r, rows, |a, i| m[i * r + a]);
    let sol = vm.partial_piv_lu().solve(&rhs);
    let out: Vec<f64> = (0..rows * r).map(|idx| sol[(idx % r, idx / r)]).collect();
    if out.iter().any(|v| !v.is_finite()) {
        return Err(OnnxError::Graph("CP: the least-squares update is not finite".into()));
    }
    Ok(out)
}

/// ‖X − Σ_r λ_r a_r ∘ b_r ∘ c_r ∘ d_r‖², exactly.
fn error2(x: &[f64], dims: &[usize; 4], u: &[Vec<f64>], lambda: &[f64], r: usize) -> f64 {
    let mut err = 0.0;
    let mut e = 0;
    for i0 in 0..dims[0] {
        for i1 in 0..dims[1] {
            for i2 in 0..dims[2] {
                for i3 in 0..dims[3] {
                    let v: f64 = (0..r).map(|k| lambda[k] * u[0][i0 * r + k] * u[1][i1 * r + k] * u[2][i2 * r + k] * u[3][i3 * r + k]).sum();
                    err += (x[e] - v).powi(2);
                    e += 1;
                }
            }
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_three_tensor_is_recovered() {
        let (co, ci, kh, kw, r) = (8, 6, 3, 3, 3);
        let f = |n: usize, i: usize, k: usize| ((n * 17 + i * 5 + k * 11) as f64 * 0.37).sin();
        let w = ArrayD::from_shape_fn(IxDyn(&[co, ci, kh, kw]), |d| {
            (0..r).map(|k| f(0, d[0], k) * f(1, d[1], k) * f(2, d[2], k) * f(3, d[3], k)).sum::<f64>() as f32
        });
        let c = cp(&w, r, 1).unwrap();
        assert!(c.relative_error < 1e-3, "{}", c.relative_error);
        assert_eq!(c.first.shape(), &[r, ci, 1, 1]);
        assert_eq!(c.vertical.shape(), &[r, 1, kh, 1]);
        assert_eq!(c.horizontal.shape(), &[r, 1, 1, kw]);
        assert_eq!(c.last.shape(), &[co, r, 1, 1]);
        // A lower rank cannot be exact; the same seed gives the same factors.
        let low = cp(&w, 1, 1).unwrap();
        assert!(low.relative_error > 0.05, "{}", low.relative_error);
        assert_eq!(cp(&w, 2, 4).unwrap().first, cp(&w, 2, 4).unwrap().first);
    }
}
