//! Low-rank factorisation of MatMul weights by truncated SVD (faer): `y = x·W` with a
//! constant `W[m, n]` becomes `y = (x·A)·B`, `A = U_r·√Σ_r [m, r]`, `B = √Σ_r·V_rᵀ [r, n]`.
//! The rank keeps `target_ratio` of the layer's parameters (`r = ⌊ratio·m·n / (m + n)⌋`) or,
//! with `energy`, the smallest `r` holding that fraction of Σσ². A layer is factorised only
//! when the two factors are smaller than `W`.

use ndarray::{Array2, ArrayD, IxDyn};
use serde::{Deserialize, Serialize};
use tamp_domain::recipe::LowrankStage;
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::node_key;

/// What factorising one layer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorisedLayer {
    pub node: String,
    pub shape: [usize; 2],
    pub rank: usize,
    pub params_before: usize,
    pub params_after: usize,
    /// Fraction of Σσ² the kept rank holds.
    pub energy_kept: f64,
    /// ‖W − A·B‖_F / ‖W‖_F.
    pub relative_error: f64,
}

#[derive(Debug, Clone)]
pub struct LowRank {
    pub config: LowrankStage,
}

/// `(A, B, rank, energy kept, relative error)`.
pub type Factors = (Array2<f32>, Array2<f32>, usize, f64, f64);

/// Thin SVD of `w` truncated to the rank the config asks for: (A, B, layer report).
pub fn factorise(w: &Array2<f32>, cfg: &LowrankStage) -> Result<Option<Factors>, OnnxError> {
    let (m, n) = w.dim();
    let mat = faer::Mat::<f64>::from_fn(m, n, |i, j| f64::from(w[[i, j]]));
    let svd = mat.thin_svd().map_err(|e| OnnxError::Graph(format!("SVD did not converge: {e:?}")))?;
    let s: Vec<f64> = (0..m.min(n)).map(|i| svd.S().column_vector()[i]).collect();
    let total: f64 = s.iter().map(|x| x * x).sum();
    let rank = match cfg.energy {
        Some(e) => {
            let mut acc = 0.0;
            s.iter().position(|x| {
                acc += x * x;
                acc >= e * total
            }).map_or(s.len(), |p| p + 1)
        }
        None => ((cfg.target_ratio * (m * n) as f64) / (m + n) as f64).floor() as usize,
    }
    .max(1);
    if rank * (m + n) >= m * n {
        return Ok(None);
    }
    let (u, v) = (svd.U(), svd.V());
    let a = Array2::from_shape_fn((m, rank), |(i, k)| (u[(i, k)] * s[k].sqrt()) as f32);
    let b = Array2::from_shape_fn((rank, n), |(k, j)| (s[k].sqrt() * v[(j, k)]) as f32);
    let kept: f64 = s[..rank].iter().map(|x| x * x).sum();
    let err = (total - kept).max(0.0).sqrt() / total.sqrt().max(1e-30);
    Ok(Some((a, b, rank, kept / total.max(1e-30), err)))
}

impl Pass for LowRank {
    fn name(&self) -> &str {
        "lowrank-svd"
    }

    fn run(&self, model: &Model) -> Result<Option<Patch>, OnnxError> {
        Ok(self.build(model)?.map(|(p, _)| p))
    }
}

impl LowRank {
    pub fn build(&self, model: &Model) -> Result<Option<(Patch, Vec<FactorisedLayer>)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut layers = Vec::new();
        for (i, node) in g.node.iter().enumerate() {
            if node.op_type.as_deref() != Some("MatMul") || (!self.config.layers.is_empty() && !self.config.layers.iter().any(|l| l == node_key(node))) {
                continue;
            }
            let (Some(x), Some(wname), Some(y)) = (node.input.first(), node.input.get(1), node.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.ndim() != 2 || view.constant(x).is_some() || w.shape()[0].min(w.shape()[1]) < self.config.min_dim || w.len() < self.config.min_params {
                continue;
            }
            let w2 = w.into_dimensionality::<ndarray::Ix2>().map_err(|e| OnnxError::Graph(e.to_string()))?;
            let (m, n) = w2.dim();
            let Some((a, b, rank, energy, err)) = factorise(&w2, &self.config)? else { continue };
            let key = format!("{y}.lr");
            let (an, bn, mid) = (format!("{key}.A"), format!("{key}.B"), format!("{key}.mid"));
            patch.add_initializers.push(from_array(&an, &ArrayD::from_shape_vec(IxDyn(&[m, rank]), a.into_raw_vec_and_offset().0).map_err(|e| OnnxError::Graph(e.to_string()))?));
            patch.add_initializers.push(from_array(&bn, &ArrayD::from_shape_vec(IxDyn(&[rank, n]), b.into_raw_vec_and_offset().0).map_err(|e| OnnxError::Graph(e.to_string()))?));
            patch.add_nodes.push(NodeProto { op_type: Some("MatMul".into()), name: Some(format!("{key}.1")), input: vec![x.clone(), an], output: vec![mid.clone()], ..Default::default() });
            patch.add_nodes.push(NodeProto { op_type: Some("MatMul".into()), name: Some(format!("{key}.2")), input: vec![mid, bn], output: vec![y.clone()], ..Default::default() });
            patch.remove_nodes.insert(i);
            if view.consumers(wname).len() == 1 {
                patch.remove_initializers.insert(wname.clone());
            }
            layers.push(FactorisedLayer { node: node_key(node).to_owned(), shape: [m, n], rank, params_before: m * n, params_after: rank * (m + n), energy_kept: energy, relative_error: err });
        }
        Ok((!patch.is_empty()).then_some((patch, layers)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_rank_two_matrix_is_recovered_exactly() {
        let w = Array2::from_shape_fn((80, 96), |(i, j)| ((i as f32) * 0.3).sin() * ((j as f32) * 0.2).cos() + ((i as f32) * 0.11).cos() * ((j as f32) * 0.05 - 2.0));
        let cfg = LowrankStage { energy: Some(1.0 - 1e-9), ..LowrankStage::default() };
        let (a, b, rank, energy, err) = factorise(&w, &cfg).unwrap().unwrap();
        assert_eq!(rank, 2, "energy {energy}");
        let back = a.dot(&b);
        let worst = back.iter().zip(w.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4 && err < 1e-3, "{worst} {err}");
    }

    #[test]
    fn target_ratio_sets_the_rank() {
        let w = Array2::from_shape_fn((64, 192), |(i, j)| ((i * 7 + j * 13) % 17) as f32 - 8.0);
        let (_, _, rank, _, _) = factorise(&w, &LowrankStage { target_ratio: 0.5, ..LowrankStage::default() }).unwrap().unwrap();
        assert_eq!(rank, (0.5 * 64.0 * 192.0 / 256.0) as usize);
    }
}
