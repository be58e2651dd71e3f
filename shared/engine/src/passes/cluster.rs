//! Weight clustering: each eligible weight tensor (a constant float input 1 of Conv, Gemm
//! or MatMul with at least `min_elements` values) becomes `k` shared values. 1-D k-means
//! with k-means++ initialisation from a seeded ChaCha RNG, Lloyd iterations on the sorted
//! values (nearest centroid by binary search over midpoints).
//!
//! Stored as uint8 indices plus a float codebook and rebuilt with standard ops, so any ONNX
//! runtime loads it and ONNX Runtime constant-folds it at session creation:
//! per layer `W = Gather(codebook[k], Cast(indices, int64))`; per channel (axis 0)
//! `W = Reshape(GatherElements(codebook[C, k], Cast(indices[C, R], int64), axis=1), shape)`.
//! The indices are what a general-purpose coder (deflate here) shrinks: their entropy is
//! ≤ log2(k) bits per weight, so the coded artifact is what the report compares.

use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use tamp_domain::recipe::{ClusterGranularity, ClusterStage};
use tamp_onnx::builder::{Attr, attribute};
use tamp_onnx::proto::NodeProto;
use tamp_onnx::tensor::{from_array, to_array};
use tamp_onnx::{GraphView, Model, OnnxError, Pass, Patch};

pub use tamp_domain::results::ClusteredLayer;

#[derive(Debug, Clone)]
pub struct ClusterWeights {
    pub config: ClusterStage,
}

/// 1-D k-means: returns (sorted centroids, index of each value's centroid).
pub fn kmeans_1d(values: &[f32], k: usize, iterations: u32, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let k = k.clamp(1, 256).min(values.len().max(1));
    let mut sorted: Vec<f32> = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    // k-means++ on a sample of at most 20k sorted values (the distribution is 1-D).
    let stride = (sorted.len() / 20_000).max(1);
    let sample: Vec<f32> = sorted.iter().step_by(stride).copied().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centroids = vec![sample[rng.random_range(0..sample.len())]];
    let mut d2: Vec<f64> = sample.iter().map(|&v| f64::from(v - centroids[0]).powi(2)).collect();
    while centroids.len() < k {
        let total: f64 = d2.iter().sum();
        let next = if total <= 0.0 {
            sample[rng.random_range(0..sample.len())]
        } else {
            let mut target = rng.random::<f64>() * total;
            let mut pick = sample.len() - 1;
            for (i, d) in d2.iter().enumerate() {
                target -= d;
                if target <= 0.0 {
                    pick = i;
                    break;
                }
            }
            sample[pick]
        };
        centroids.push(next);
        for (d, &v) in d2.iter_mut().zip(&sample) {
            *d = d.min(f64::from(v - next).powi(2));
        }
    }
    centroids.sort_by(f32::total_cmp);
    centroids.dedup();
    // Lloyd on the sorted values: each centroid owns a contiguous run between midpoints.
    for _ in 0..iterations {
        let mids: Vec<f32> = centroids.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        let (mut sum, mut count) = (vec![0f64; centroids.len()], vec![0usize; centroids.len()]);
        for &v in &sorted {
            let c = mids.partition_point(|&m| m < v);
            sum[c] += f64::from(v);
            count[c] += 1;
        }
        let next: Vec<f32> = centroids.iter().enumerate().map(|(i, &c)| if count[i] > 0 { (sum[i] / count[i] as f64) as f32 } else { c }).collect();
        let moved = next.iter().zip(&centroids).any(|(a, b)| (a - b).abs() > f32::EPSILON * a.abs().max(1e-12));
        centroids = next;
        centroids.sort_by(f32::total_cmp);
        if !moved {
            break;
        }
    }
    let mids: Vec<f32> = centroids.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let idx = values.iter().map(|&v| mids.partition_point(|&m| m < v) as u8).collect();
    (centroids, idx)
}

fn entropy_bits(idx: &[u8]) -> f64 {
    let mut hist = [0usize; 256];
    for &i in idx {
        hist[i as usize] += 1;
    }
    let n = idx.len() as f64;
    hist.iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum()
}

impl Pass for ClusterWeights {
    type Report = Vec<ClusteredLayer>;

    fn name(&self) -> &str {
        "cluster-weights"
    }

    /// The patch and what it did per layer. Weights shared by several nodes are clustered
    /// once; already-clustered graphs (weights produced by a Gather) have nothing to do.
    fn build(&self, model: &Model) -> Result<Option<(Patch, Self::Report)>, OnnxError> {
        let g = model.graph();
        let view = GraphView::new(g);
        let mut patch = Patch::default();
        let mut layers = Vec::new();
        let mut done = std::collections::BTreeSet::new();
        for node in &g.node {
            let op = node.op_type.as_deref().unwrap_or_default();
            if !matches!(op, "Conv" | "Gemm" | "MatMul") {
                continue;
            }
            let Some(wname) = node.input.get(1) else { continue };
            if done.contains(wname) || !g.initializer.iter().any(|t| t.name.as_deref() == Some(wname.as_str())) {
                continue;
            }
            let Some(w) = view.constant(wname).and_then(|t| to_array::<f32>(t).ok()) else { continue };
            if w.len() < self.config.min_elements || w.ndim() < 2 {
                continue;
            }
            done.insert(wname.clone());
            let k = self.config.clusters as usize;
            let shape: Vec<usize> = w.shape().to_vec();
            let flat: Vec<f32> = w.iter().copied().collect();
            let seed = self.config.seed ^ name_hash(wname);
            let (cname, iname, cast) = (format!("{wname}.codebook"), format!("{wname}.idx"), format!("{wname}.idx64"));
            let (indices, mse, used) = match self.config.granularity {
                ClusterGranularity::PerLayer => {
                    let (cb, idx) = kmeans_1d(&flat, k, self.config.iterations, seed);
                    let mse = flat.iter().zip(&idx).map(|(v, &i)| f64::from(v - cb[i as usize]).powi(2)).sum::<f64>() / flat.len() as f64;
                    patch.add_initializers.push(from_array(&cname, &ArrayD::from_shape_vec(IxDyn(&[cb.len()]), cb.clone())?));
                    patch.add_initializers.push(from_array(&iname, &ArrayD::from_shape_vec(IxDyn(&shape), idx.clone())?));
                    patch.add_nodes.push(NodeProto {
                        op_type: Some("Cast".into()),
                        name: Some(cast.clone()),
                        input: vec![iname.clone()],
                        output: vec![cast.clone()],
                        attribute: vec![attribute("to", Attr::Int(7))],
                        ..Default::default()
                    });
                    patch.add_nodes.push(NodeProto {
                        op_type: Some("Gather".into()),
                        name: Some(format!("{wname}.gather")),
                        input: vec![cname, cast],
                        output: vec![wname.clone()],
                        ..Default::default()
                    });
                    (idx, mse, cb.len())
                }
                ClusterGranularity::PerChannel => {
                    // Output channels: axis 0 for Conv and Gemm(transB=1), axis 1 for MatMul/Gemm.
                    let trans_b = node.attribute.iter().any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1));
                    let axis = if op == "Conv" || trans_b { 0 } else { 1 };
                    let wt = if axis == 0 { w.clone() } else { w.clone().reversed_axes().as_standard_layout().to_owned().into_dyn() };
                    let (c, r) = (wt.shape()[0], wt.len() / wt.shape()[0]);
                    let rows: Vec<f32> = wt.iter().copied().collect();
                    let (mut cb_all, mut idx_all, mut err) = (vec![0f32; c * k], Vec::with_capacity(rows.len()), 0f64);
                    for ch in 0..c {
                        let vals = &rows[ch * r..(ch + 1) * r];
                        let (cb, idx) = kmeans_1d(vals, k, self.config.iterations, seed.wrapping_add(ch as u64));
                        err += vals.iter().zip(&idx).map(|(v, &i)| f64::from(v - cb[i as usize]).powi(2)).sum::<f64>();
                        for (j, v) in cb.iter().enumerate() {
                            cb_all[ch * k + j] = *v;
                        }
                        idx_all.extend(idx);
                    }
                    let gathered = format!("{wname}.rows");
                    let shape_name = format!("{wname}.shape");
                    let target: Vec<i64> = wt.shape().iter().map(|&d| d as i64).collect();
                    patch.add_initializers.push(from_array(&cname, &ArrayD::from_shape_vec(IxDyn(&[c, k]), cb_all)?));
                    patch.add_initializers.push(from_array(&iname, &ArrayD::from_shape_vec(IxDyn(&[c, r]), idx_all.clone())?));
                    patch.add_initializers.push(from_array(&shape_name, &ArrayD::from_shape_vec(IxDyn(&[target.len()]), target)?));
                    patch.add_nodes.push(NodeProto {
                        op_type: Some("Cast".into()),
                        name: Some(cast.clone()),
                        input: vec![iname.clone()],
                        output: vec![cast.clone()],
                        attribute: vec![attribute("to", Attr::Int(7))],
                        ..Default::default()
                    });
                    patch.add_nodes.push(NodeProto {
                        op_type: Some("GatherElements".into()),
                        name: Some(gathered.clone()),
                        input: vec![cname, cast],
                        output: vec![gathered.clone()],
                        attribute: vec![attribute("axis", Attr::Int(1))],
                        ..Default::default()
                    });
                    let reshaped = if axis == 0 { wname.clone() } else { format!("{wname}.t") };
                    patch.add_nodes.push(NodeProto {
                        op_type: Some("Reshape".into()),
                        name: Some(format!("{wname}.reshape")),
                        input: vec![gathered, shape_name],
                        output: vec![reshaped.clone()],
                        ..Default::default()
                    });
                    if axis == 1 {
                        patch.add_nodes.push(NodeProto {
                            op_type: Some("Transpose".into()),
                            name: Some(format!("{wname}.transpose")),
                            input: vec![reshaped],
                            output: vec![wname.clone()],
                            attribute: vec![attribute("perm", Attr::Ints(vec![1, 0]))],
                            ..Default::default()
                        });
                    }
                    (idx_all, err / rows.len() as f64, k)
                }
            };
            patch.remove_initializers.insert(wname.clone());
            layers.push(ClusteredLayer { weight: wname.clone(), elements: flat.len(), clusters: used, index_entropy_bits: entropy_bits(&indices), mse });
        }
        Ok((!patch.is_empty()).then_some((patch, layers)))
    }
}

/// The inverse of the pass, for passes that need plain weight initializers (PTQ after
/// clustering): every clustered weight is rebuilt as an initializer from its codebook and
/// indices, and the rebuilding nodes are dropped. The values are exactly the codebook's, so
/// an int8 quantizer then sees at most `k` distinct values per group.
pub fn materialize(model: &Model) -> Result<Model, OnnxError> {
    let g = model.graph();
    let view = GraphView::new(g);
    let mut patch = Patch::default();
    for t in &g.initializer {
        let Some(w) = t.name.as_deref().and_then(|n| n.strip_suffix(".codebook")) else { continue };
        let (Some(cb), Some(idx)) = (
            view.constant(&format!("{w}.codebook")).and_then(|t| to_array::<f32>(t).ok()),
            view.constant(&format!("{w}.idx")).and_then(|t| to_array::<u8>(t).ok()),
        ) else {
            continue;
        };
        let mut values: ArrayD<f32> = if cb.ndim() == 1 {
            idx.mapv(|i| cb[[i as usize]])
        } else {
            let c = idx.shape()[0];
            let r = idx.len() / c.max(1);
            let shape: Vec<usize> = view
                .constant(&format!("{w}.shape"))
                .and_then(|t| to_array::<i64>(t).ok())
                .map(|s| s.iter().map(|&d| d as usize).collect())
                .unwrap_or_else(|| vec![c, r]);
            let flat: Vec<f32> = idx.indexed_iter().map(|(ix, &i)| cb[[ix[0], i as usize]]).collect();
            ArrayD::from_shape_vec(IxDyn(&shape), flat)?
        };
        for (i, n) in g.node.iter().enumerate() {
            if n.name
                .as_deref()
                .is_some_and(|name| name.strip_prefix(w).is_some_and(|rest| [".idx64", ".gather", ".rows", ".reshape", ".transpose"].contains(&rest)))
            {
                patch.remove_nodes.insert(i);
                if n.op_type.as_deref() == Some("Transpose") {
                    values = values.reversed_axes().as_standard_layout().to_owned();
                }
            }
        }
        for suffix in [".codebook", ".idx", ".shape"] {
            patch.remove_initializers.insert(format!("{w}{suffix}"));
        }
        patch.add_initializers.push(from_array(w, &values));
    }
    if patch.is_empty() {
        return Ok(model.clone());
    }
    patch.apply(model, "materialize-clusters").map_err(OnnxError::from)
}

/// A stable per-name seed offset (FNV-1a), so layers get different but reproducible draws.
pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Size of `bytes` after deflate (level 6): the coded size of an artifact.
pub fn deflated_size(bytes: &[u8]) -> u64 {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(bytes);
    enc.finish().map_or(bytes.len() as u64, |v| v.len() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kmeans_finds_well_separated_clusters_and_is_seeded() {
        let mut v = Vec::new();
        for (i, c) in [-2.0f32, 0.0, 3.0].iter().enumerate() {
            v.extend((0..100).map(|j| c + (j as f32 - 50.0) * 1e-3 * (i as f32 + 1.0)));
        }
        let (cb, idx) = kmeans_1d(&v, 3, 50, 7);
        assert_eq!(cb.len(), 3);
        for (c, want) in cb.iter().zip([-2.0f32, 0.0, 3.0]) {
            assert!((c - want).abs() < 0.01, "{cb:?}");
        }
        assert!(idx[..100].iter().all(|&i| i == 0) && idx[200..].iter().all(|&i| i == 2));
        assert_eq!(kmeans_1d(&v, 3, 50, 7), (cb, idx), "same seed, same answer");
    }

    #[test]
    fn entropy_of_uniform_indices_is_log2_k() {
        let idx: Vec<u8> = (0..1600).map(|i| (i % 16) as u8).collect();
        assert!((entropy_bits(&idx) - 4.0).abs() < 1e-9);
    }
}
