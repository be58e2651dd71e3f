//! Low-rank factorisation of MatMul weights by truncated SVD (faer): `y = x·W` with a
//! constant `W[m, n]` becomes `y = (x·A)·B`, `A = U_r·√Σ_r [m, r]`, `B = √Σ_r·V_rᵀ [r, n]`.
//! The rank keeps `target_ratio` of the layer's parameters (`r = ⌊ratio·m·n / (m + n)⌋`) or,
//! with `energy`, the smallest `r` holding that fraction of Σσ². A layer is factorised only
//! when the two factors are smaller than `W`.
//!
//! Tucker-2 (`method: tucker`) does the same for a convolution `W[Cout, Cin, kh, kw]`: the
//! leading singular vectors of its mode-0 and mode-1 unfoldings (HOSVD) give `U_out[Cout, R1]`
//! and `U_in[Cin, R2]`, the core is `W ×₀ U_outᵀ ×₁ U_inᵀ [R1, R2, kh, kw]`, and the conv
//! becomes 1×1 (`U_inᵀ`) → kh×kw core (the original strides, pads, dilations) → 1×1
//! (`U_out`, the original bias). Ranks scale both sides by one factor `s` (`R1 = s·Cout`,
//! `R2 = s·Cin`) solved so the three convs hold `target_ratio` of the parameters, or, with
//! `energy`, each mode keeps that fraction of its unfolding's Σσ².
//!
//! CP (`method: cp`, `passes/cp.rs`) factorises the same convolutions further, into
//! 1×1 → kh×1 depthwise → 1×kw depthwise → 1×1, at the rank that keeps `target_ratio` of the
//! parameters; it wants a `fine_tune` after it.

use ndarray::{Array2, ArrayD, IxDyn};

use tamp_domain::recipe::{LowrankMethod, LowrankStage};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

use super::quantize::node_key;

pub use tamp_domain::results::FactorisedLayer;

#[derive(Debug, Clone)]
pub struct LowRank {
    pub config: LowrankStage,
    /// Per-layer parameter ratios (by node key) instead of `config.target_ratio`; a ratio of
    /// 1 or more leaves the layer as it is.
    pub ratios: std::collections::BTreeMap<String, f64>,
}

impl LowRank {
    pub fn new(config: LowrankStage) -> Self {
        Self { config, ratios: Default::default() }
    }

    /// A node of `op` that `layers` (empty: all) names.
    fn selected(&self, node: &NodeProto, op: &str) -> bool {
        node.op_type.as_deref() == Some(op) && (self.config.layers.is_empty() || self.config.layers.iter().any(|l| l == node_key(node)))
    }

    /// The config for one layer (its own ratio when one is set), or `None` to skip it.
    fn layer_config(&self, key: &str) -> Option<LowrankStage> {
        match self.ratios.get(key) {
            Some(&r) if r >= 1.0 => None,
            Some(&r) => Some(LowrankStage { target_ratio: r, ..self.config.clone() }),
            None => Some(self.config.clone()),
        }
    }

    /// The layers this pass would factorise, with their parameter counts.
    pub fn eligible(&self, model: &Model) -> Result<Vec<(String, usize)>, OnnxError> {
        let probe = Self { config: LowrankStage { target_ratio: 0.5, energy: None, ..self.config.clone() }, ratios: Default::default() };
        Ok(probe.build(model)?.map(|(_, l)| l.into_iter().map(|l| (l.node, l.params_before)).collect()).unwrap_or_default())
    }
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
            s.iter()
                .position(|x| {
                    acc += x * x;
                    acc >= e * total
                })
                .map_or(s.len(), |p| p + 1)
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

/// Left singular vectors and singular values of `m` (rows × cols), descending.
fn left_svd(m: &faer::Mat<f64>) -> Result<(faer::Mat<f64>, Vec<f64>), OnnxError> {
    let svd = m.thin_svd().map_err(|e| OnnxError::Graph(format!("SVD did not converge: {e:?}")))?;
    let s = (0..m.nrows().min(m.ncols())).map(|i| svd.S().column_vector()[i]).collect();
    Ok((svd.U().to_owned(), s))
}

fn energy_rank(s: &[f64], e: f64) -> usize {
    let total: f64 = s.iter().map(|x| x * x).sum();
    let mut acc = 0.0;
    s.iter()
        .position(|x| {
            acc += x * x;
            acc >= e * total
        })
        .map_or(s.len(), |p| p + 1)
}

/// Tucker-2 factors of a conv weight `[co, ci, kh, kw]`.
#[derive(Debug, Clone)]
pub struct Tucker2 {
    /// `[r2, ci, 1, 1]`: projects the input channels.
    pub first: ArrayD<f32>,
    /// `[r1, r2, kh, kw]`.
    pub core: ArrayD<f32>,
    /// `[co, r1, 1, 1]`: restores the output channels.
    pub last: ArrayD<f32>,
    pub ranks: [usize; 2],
    /// ‖W − Ŵ‖_F / ‖W‖_F.
    pub relative_error: f64,
}

/// Tucker-2 (HOSVD) of a conv weight, or `None` when the factors would not be smaller.
pub fn tucker2(w: &ArrayD<f32>, cfg: &LowrankStage) -> Result<Option<Tucker2>, OnnxError> {
    let &[co, ci, kh, kw] = w.shape() else { return Err(OnnxError::Graph(format!("Tucker-2 needs a 4-D conv weight, got {:?}", w.shape()))) };
    let k = kh * kw;
    let m0 = faer::Mat::<f64>::from_fn(co, ci * k, |o, j| f64::from(w[[o, j / k, (j % k) / kw, j % kw]]));
    let m1 = faer::Mat::<f64>::from_fn(ci, co * k, |i, j| f64::from(w[[j / k, i, (j % k) / kw, j % kw]]));
    let (u0, s0) = left_svd(&m0)?;
    let (u1, s1) = left_svd(&m1)?;
    let (r1, r2) = match cfg.energy {
        Some(e) => (energy_rank(&s0, e), energy_rank(&s1, e)),
        None => {
            // s²·(co·ci·k) + s·(ci² + co²) − ratio·co·ci·k = 0
            let (a, b, c) = ((co * ci * k) as f64, (ci * ci + co * co) as f64, cfg.target_ratio * (co * ci * k) as f64);
            let s = (-b + (b * b + 4.0 * a * c).sqrt()) / (2.0 * a);
            (((s * co as f64).floor() as usize).max(1), ((s * ci as f64).floor() as usize).max(1))
        }
    };
    let (r1, r2) = (r1.min(s0.len()), r2.min(s1.len()));
    if r2 * ci + r1 * r2 * k + co * r1 >= co * ci * k {
        return Ok(None);
    }
    // core[a, b, h, x] = Σ_o Σ_i U0[o, a] · U1[i, b] · W[o, i, h, x]
    let mut tmp = vec![0f64; r1 * ci * k]; // [a, i, hk]
    for a in 0..r1 {
        for o in 0..co {
            let u = u0[(o, a)];
            if u == 0.0 {
                continue;
            }
            for i in 0..ci {
                for j in 0..k {
                    tmp[(a * ci + i) * k + j] += u * f64::from(w[[o, i, j / kw, j % kw]]);
                }
            }
        }
    }
    let mut core = ArrayD::<f32>::zeros(IxDyn(&[r1, r2, kh, kw]));
    let mut core64 = vec![0f64; r1 * r2 * k];
    for a in 0..r1 {
        for b in 0..r2 {
            for j in 0..k {
                let v: f64 = (0..ci).map(|i| u1[(i, b)] * tmp[(a * ci + i) * k + j]).sum();
                core64[(a * r2 + b) * k + j] = v;
                core[[a, b, j / kw, j % kw]] = v as f32;
            }
        }
    }
    let first = ArrayD::from_shape_fn(IxDyn(&[r2, ci, 1, 1]), |d| u1[(d[1], d[0])] as f32);
    let last = ArrayD::from_shape_fn(IxDyn(&[co, r1, 1, 1]), |d| u0[(d[0], d[1])] as f32);
    // Reconstruction error, exactly.
    let (mut err, mut norm) = (0f64, 0f64);
    for o in 0..co {
        for i in 0..ci {
            for j in 0..k {
                let mut v = 0.0;
                for a in 0..r1 {
                    let ua = u0[(o, a)];
                    for b in 0..r2 {
                        v += ua * core64[(a * r2 + b) * k + j] * u1[(i, b)];
                    }
                }
                let x = f64::from(w[[o, i, j / kw, j % kw]]);
                err += (x - v) * (x - v);
                norm += x * x;
            }
        }
    }
    Ok(Some(Tucker2 { first, core, last, ranks: [r1, r2], relative_error: err.sqrt() / norm.sqrt().max(1e-30) }))
}

impl Pass for LowRank {
    type Report = Vec<FactorisedLayer>;

    fn name(&self) -> &str {
        "lowrank-svd"
    }

    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        match self.config.method {
            LowrankMethod::Tucker => self.build_tucker(model),
            LowrankMethod::Cp => self.build_cp(model),
            LowrankMethod::Svd => self.build_svd(model),
        }
    }
}

impl LowRank {
    /// Tucker-2 of every eligible Conv (group 1, kernel larger than 1×1, constant weight used
    /// once, both channel counts ≥ `min_dim`).
    fn build_tucker(&self, model: &Model) -> Result<Option<(Patch, Vec<FactorisedLayer>)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut layers = Vec::new();
        for (i, node) in g.node.iter().enumerate() {
            if !self.selected(node, "Conv") {
                continue;
            }
            let group = node.attribute.iter().find(|a| a.name.as_deref() == Some("group")).and_then(|a| a.i).unwrap_or(1);
            let (Some(x), Some(wname), Some(y)) = (node.input.first(), node.input.get(1), node.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            let &[co, ci, kh, kw] = w.shape() else { continue };
            if group != 1 || kh * kw < 2 || co.min(ci) < self.config.min_dim || w.len() < self.config.min_params || view.consumers(wname).len() != 1 {
                continue;
            }
            let Some(cfg) = self.layer_config(node_key(node)) else { continue };
            let Some(t) = tucker2(&w, &cfg)? else { continue };
            let key = format!("{y}.tk");
            let (fname, cname, lname, m1, m2) =
                (format!("{key}.first"), format!("{key}.core"), format!("{key}.last"), format!("{key}.mid1"), format!("{key}.mid2"));
            patch.add_initializers.push(from_array(&fname, &t.first));
            patch.add_initializers.push(from_array(&cname, &t.core));
            patch.add_initializers.push(from_array(&lname, &t.last));
            patch.add_nodes.push(NodeProto {
                op_type: Some("Conv".into()),
                name: Some(format!("{key}.1")),
                input: vec![x.clone(), fname],
                output: vec![m1.clone()],
                ..Default::default()
            });
            let mut core = node.clone();
            core.name = Some(format!("{key}.2"));
            core.input = vec![m1, cname];
            core.output = vec![m2.clone()];
            core.attribute.retain(|a| a.name.as_deref() != Some("kernel_shape"));
            patch.add_nodes.push(core);
            let mut last_in = vec![m2, lname];
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                last_in.push(b.clone());
            }
            patch.add_nodes.push(NodeProto {
                op_type: Some("Conv".into()),
                name: Some(format!("{key}.3")),
                input: last_in,
                output: vec![y.clone()],
                ..Default::default()
            });
            patch.remove_nodes.insert(i);
            patch.remove_initializers.insert(wname.clone());
            let [r1, r2] = t.ranks;
            layers.push(FactorisedLayer {
                node: node_key(node).to_owned(),
                shape: [co, ci * kh * kw],
                rank: r1,
                ranks: Some([r1, r2]),
                params_before: w.len(),
                params_after: r2 * ci + r1 * r2 * kh * kw + co * r1,
                energy_kept: 1.0 - t.relative_error * t.relative_error,
                relative_error: t.relative_error,
            });
        }
        Ok((!patch.is_empty()).then_some((patch, layers)))
    }

    /// CP of every eligible Conv (as Tucker-2's, with explicit pads: `auto_pad` cannot be
    /// split between the two depthwise convs): 1×1 → kh×1 → 1×kw → 1×1 (`passes/cp.rs`), at
    /// the rank that keeps `target_ratio` of the parameters.
    fn build_cp(&self, model: &Model) -> Result<Option<(Patch, Vec<FactorisedLayer>)>, OnnxError> {
        use tamp_onnx::builder::{Attr, attribute};
        use tamp_onnx::graph::{attr, attr_int, attr_ints};
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut layers = Vec::new();
        for (i, node) in g.node.iter().enumerate() {
            if !self.selected(node, "Conv") {
                continue;
            }
            let (Some(x), Some(wname), Some(y)) = (node.input.first(), node.input.get(1), node.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            let &[co, ci, kh, kw] = w.shape() else { continue };
            let auto_pad = attr(node, "auto_pad").and_then(|a| a.s.as_deref()).is_some_and(|s| s != b"NOTSET");
            if attr_int(node, "group", 1) != 1
                || auto_pad
                || kh * kw < 2
                || co.min(ci) < self.config.min_dim
                || w.len() < self.config.min_params
                || view.consumers(wname).len() != 1
            {
                continue;
            }
            let Some(cfg) = self.layer_config(node_key(node)) else { continue };
            let per_rank = co + ci + kh + kw;
            let rank = ((cfg.target_ratio * w.len() as f64) / per_rank as f64).floor() as usize;
            if rank == 0 || rank * per_rank >= w.len() {
                continue;
            }
            let c = super::cp::cp(&w, rank, cfg.seed)?;
            let pads = match attr_ints(node, "pads") {
                [t, l, b, r] => [*t, *l, *b, *r],
                _ => [0; 4],
            };
            let two = |name: &str| match attr_ints(node, name) {
                [h, w] => [*h, *w],
                _ => [1, 1],
            };
            let (strides, dilations) = (two("strides"), two("dilations"));
            let key = format!("{y}.cp");
            let names: Vec<String> = ["first", "vertical", "horizontal", "last"].iter().map(|n| format!("{key}.{n}")).collect();
            for (n, t) in names.iter().zip([&c.first, &c.vertical, &c.horizontal, &c.last]) {
                patch.add_initializers.push(from_array(n, t));
            }
            let mids: Vec<String> = (1..=3).map(|k| format!("{key}.mid{k}")).collect();
            let r = rank as i64;
            let conv = |n: usize, input: Vec<String>, output: &str, attrs: Vec<tamp_onnx::proto::AttributeProto>| NodeProto {
                op_type: Some("Conv".into()),
                name: Some(format!("{key}.{n}")),
                input,
                output: vec![output.to_owned()],
                attribute: attrs,
                ..Default::default()
            };
            patch.add_nodes.push(conv(1, vec![x.clone(), names[0].clone()], &mids[0], Vec::new()));
            patch.add_nodes.push(conv(
                2,
                vec![mids[0].clone(), names[1].clone()],
                &mids[1],
                vec![
                    attribute("group", Attr::Int(r)),
                    attribute("kernel_shape", Attr::Ints(vec![kh as i64, 1])),
                    attribute("pads", Attr::Ints(vec![pads[0], 0, pads[2], 0])),
                    attribute("strides", Attr::Ints(vec![strides[0], 1])),
                    attribute("dilations", Attr::Ints(vec![dilations[0], 1])),
                ],
            ));
            patch.add_nodes.push(conv(
                3,
                vec![mids[1].clone(), names[2].clone()],
                &mids[2],
                vec![
                    attribute("group", Attr::Int(r)),
                    attribute("kernel_shape", Attr::Ints(vec![1, kw as i64])),
                    attribute("pads", Attr::Ints(vec![0, pads[1], 0, pads[3]])),
                    attribute("strides", Attr::Ints(vec![1, strides[1]])),
                    attribute("dilations", Attr::Ints(vec![1, dilations[1]])),
                ],
            ));
            let mut last_in = vec![mids[2].clone(), names[3].clone()];
            if let Some(b) = node.input.get(2).filter(|b| !b.is_empty()) {
                last_in.push(b.clone());
            }
            patch.add_nodes.push(conv(4, last_in, y, Vec::new()));
            patch.remove_nodes.insert(i);
            patch.remove_initializers.insert(wname.clone());
            layers.push(FactorisedLayer {
                node: node_key(node).to_owned(),
                shape: [co, ci * kh * kw],
                rank,
                ranks: None,
                params_before: w.len(),
                params_after: rank * per_rank,
                energy_kept: 1.0 - c.relative_error * c.relative_error,
                relative_error: c.relative_error,
            });
        }
        Ok((!patch.is_empty()).then_some((patch, layers)))
    }

    fn build_svd(&self, model: &Model) -> Result<Option<(Patch, Vec<FactorisedLayer>)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut layers = Vec::new();
        for (i, node) in g.node.iter().enumerate() {
            if !self.selected(node, "MatMul") {
                continue;
            }
            let (Some(x), Some(wname), Some(y)) = (node.input.first(), node.input.get(1), node.output.first()) else { continue };
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.ndim() != 2 || view.constant(x).is_some() || w.shape()[0].min(w.shape()[1]) < self.config.min_dim || w.len() < self.config.min_params {
                continue;
            }
            let w2 = w.into_dimensionality::<ndarray::Ix2>()?;
            let (m, n) = w2.dim();
            let Some(cfg) = self.layer_config(node_key(node)) else { continue };
            let Some((a, b, rank, energy, err)) = factorise(&w2, &cfg)? else { continue };
            let key = format!("{y}.lr");
            let (an, bn, mid) = (format!("{key}.A"), format!("{key}.B"), format!("{key}.mid"));
            patch.add_initializers.push(from_array(&an, &ArrayD::from_shape_vec(IxDyn(&[m, rank]), a.into_raw_vec_and_offset().0)?));
            patch.add_initializers.push(from_array(&bn, &ArrayD::from_shape_vec(IxDyn(&[rank, n]), b.into_raw_vec_and_offset().0)?));
            patch.add_nodes.push(NodeProto {
                op_type: Some("MatMul".into()),
                name: Some(format!("{key}.1")),
                input: vec![x.clone(), an],
                output: vec![mid.clone()],
                ..Default::default()
            });
            patch.add_nodes.push(NodeProto {
                op_type: Some("MatMul".into()),
                name: Some(format!("{key}.2")),
                input: vec![mid, bn],
                output: vec![y.clone()],
                ..Default::default()
            });
            patch.remove_nodes.insert(i);
            if view.consumers(wname).len() == 1 {
                patch.remove_initializers.insert(wname.clone());
            }
            layers.push(FactorisedLayer {
                node: node_key(node).to_owned(),
                shape: [m, n],
                rank,
                ranks: None,
                params_before: m * n,
                params_after: rank * (m + n),
                energy_kept: energy,
                relative_error: err,
            });
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
        let w = Array2::from_shape_fn((80, 96), |(i, j)| {
            ((i as f32) * 0.3).sin() * ((j as f32) * 0.2).cos() + ((i as f32) * 0.11).cos() * ((j as f32) * 0.05 - 2.0)
        });
        let cfg = LowrankStage { energy: Some(1.0 - 1e-9), ..LowrankStage::default() };
        let (a, b, rank, energy, err) = factorise(&w, &cfg).unwrap().unwrap();
        assert_eq!(rank, 2, "energy {energy}");
        let back = a.dot(&b);
        let worst = back.iter().zip(w.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4 && err < 1e-3, "{worst} {err}");
    }

    #[test]
    fn tucker2_of_a_low_multilinear_rank_conv_is_exact() {
        // W = core ×0 A ×1 B with ranks (3, 2): HOSVD at those ranks recovers it.
        let (co, ci, r1, r2) = (24, 20, 3, 2);
        let a = Array2::from_shape_fn((co, r1), |(i, j)| (((i * 31 + j * 7 + 1) * 2_654_435_761) % 997) as f32 / 997.0 - 0.5);
        let b = Array2::from_shape_fn((ci, r2), |(i, j)| (((i * 13 + j * 57 + 3) * 2_654_435_761) % 991) as f32 / 991.0 - 0.5);
        // Pseudo-random entries (a sine of a sum would itself be rank 2).
        let core = ArrayD::from_shape_fn(IxDyn(&[r1, r2, 3, 3]), |d| (((d[0] * 17 + d[1] * 5 + d[2] * 3 + d[3]) * 2_654_435_761) % 1009) as f32 / 1009.0 - 0.5);
        let w = ArrayD::from_shape_fn(IxDyn(&[co, ci, 3, 3]), |d| {
            let mut v = 0.0;
            for p in 0..r1 {
                for q in 0..r2 {
                    v += a[[d[0], p]] * b[[d[1], q]] * core[[p, q, d[2], d[3]]];
                }
            }
            v
        });
        let t = tucker2(&w, &LowrankStage { method: LowrankMethod::Tucker, energy: Some(1.0 - 1e-9), ..LowrankStage::default() }).unwrap().unwrap();
        assert_eq!(t.ranks, [r1, r2]);
        assert!(t.relative_error < 1e-4, "{}", t.relative_error);
        assert_eq!(t.first.shape(), &[r2, ci, 1, 1]);
        assert_eq!(t.core.shape(), &[r1, r2, 3, 3]);
        assert_eq!(t.last.shape(), &[co, r1, 1, 1]);
        // A target ratio keeps about that share of the parameters.
        let t = tucker2(&w, &LowrankStage { method: LowrankMethod::Tucker, target_ratio: 0.3, ..LowrankStage::default() }).unwrap().unwrap();
        let [r1, r2] = t.ranks;
        let kept = (r2 * ci + r1 * r2 * 9 + co * r1) as f64 / (co * ci * 9) as f64;
        assert!(kept <= 0.3 && kept > 0.15, "{kept} {:?}", t.ranks);
    }

    /// A one-Conv model (16 → 16 channels, 3×3, with bias) on `hw` inputs, and a function
    /// running any model on one fixed input batch (ONNX Runtime).
    fn conv_model(w: ArrayD<f32>, pads: [i64; 4], strides: [i64; 2], hw: usize, out: [i64; 2]) -> (Model, impl Fn(&Model) -> ArrayD<f32>) {
        use crate::runtime::{Session, SessionConfig};
        use tamp_onnx::TensorValue;
        use tamp_onnx::builder::{Attr, GraphBuilder};
        let mut gb = GraphBuilder::new("conv", 17);
        let x = gb.input_f32("x", &[None, Some(16), Some(hw as i64), Some(hw as i64)]);
        let wn = gb.init_f32("w", w);
        let bn = gb.init_f32("b", ArrayD::from_shape_fn(IxDyn(&[16]), |d| d[0] as f32 * 0.1));
        let y = gb.op(
            "Conv",
            &[&x, &wn, &bn],
            &[("pads", Attr::Ints(pads.to_vec())), ("strides", Attr::Ints(strides.to_vec())), ("kernel_shape", Attr::Ints(vec![3, 3]))],
        );
        gb.output_f32(&y, &[None, Some(16), Some(out[0]), Some(out[1])]);
        let input = TensorValue::F32(ArrayD::from_shape_fn(IxDyn(&[2, 16, hw, hw]), |d| ((d[1] * 13 + d[2] * 5 + d[3]) as f32 * 0.07).cos()));
        let run = move |m: &Model| match Session::from_model(m, &SessionConfig::default()).unwrap().run(&[("x", &input)]).unwrap().remove(0).1 {
            TensorValue::F32(a) => a,
            _ => panic!(),
        };
        (gb.build(), run)
    }

    fn relative_change(after: ArrayD<f32>, before: &ArrayD<f32>) -> f32 {
        (after - before).mapv(|v| v * v).sum().sqrt() / before.mapv(|v| v * v).sum().sqrt()
    }

    #[test]
    fn tucker_graph_runs_and_matches_the_conv_at_full_rank() {
        let w = ArrayD::from_shape_fn(IxDyn(&[16, 16, 3, 3]), |d| ((d[0] * 31 + d[1] * 7 + d[2] * 3 + d[3]) as f32 * 0.13).sin());
        let (m, run) = conv_model(w, [1, 1, 1, 1], [2, 2], 6, [3, 3]);
        let before = run(&m);
        // Energy 1 keeps full ranks, which are not smaller: nothing to do.
        let full = LowRank::new(LowrankStage { method: LowrankMethod::Tucker, energy: Some(1.0), min_dim: 4, ..LowrankStage::default() });
        assert!(full.build(&m).unwrap().is_none());
        let half = LowRank::new(LowrankStage { method: LowrankMethod::Tucker, energy: Some(0.999), min_dim: 4, ..LowrankStage::default() });
        let (patch, layers) = half.build(&m).unwrap().unwrap();
        let t = patch.apply(&m, "tucker").unwrap();
        assert_eq!(t.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("Conv")).count(), 3);
        let after = run(&t);
        assert_eq!(after.shape(), before.shape());
        let rel = relative_change(after, &before);
        assert!(rel < 0.1 && layers[0].params_after < layers[0].params_before, "{rel} {layers:?}");
    }

    #[test]
    fn cp_graph_runs_and_tracks_the_conv() {
        // An exact rank-4 weight: CP at rank ≥ 4 reproduces the conv.
        let f = |n: usize, i: usize, k: usize| ((n * 17 + i * 5 + k * 11) as f32 * 0.37).sin();
        let w = ArrayD::from_shape_fn(IxDyn(&[16, 16, 3, 3]), |d| (0..4).map(|k| f(0, d[0], k) * f(1, d[1], k) * f(2, d[2], k) * f(3, d[3], k)).sum());
        let (m, run) = conv_model(w, [1, 0, 2, 1], [2, 1], 7, [4, 6]);
        let before = run(&m);
        // ratio 0.15 of 2304 parameters at 38 per rank: rank 9.
        let pass = LowRank::new(LowrankStage { method: LowrankMethod::Cp, target_ratio: 0.15, min_dim: 4, ..LowrankStage::default() });
        let (patch, layers) = pass.build(&m).unwrap().unwrap();
        assert_eq!((layers[0].rank, layers[0].params_after), (9, 9 * 38));
        let t = patch.apply(&m, "cp").unwrap();
        assert_eq!(t.graph().node.iter().filter(|n| n.op_type.as_deref() == Some("Conv")).count(), 4);
        let after = run(&t);
        assert_eq!(after.shape(), before.shape());
        let rel = relative_change(after, &before);
        assert!(rel < 1e-3 && layers[0].relative_error < 1e-3, "{rel} {layers:?}");
    }

    #[test]
    fn target_ratio_sets_the_rank() {
        let w = Array2::from_shape_fn((64, 192), |(i, j)| ((i * 7 + j * 13) % 17) as f32 - 8.0);
        let (_, _, rank, _, _) = factorise(&w, &LowrankStage { target_ratio: 0.5, ..LowrankStage::default() }).unwrap().unwrap();
        assert_eq!(rank, (0.5 * 64.0 * 192.0 / 256.0) as usize);
    }
}
