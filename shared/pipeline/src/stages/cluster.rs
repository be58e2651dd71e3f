//! Weight clustering: one candidate whose weights take `clusters` shared values (a Gather of
//! centroids by uint8 indices); details carry per-layer entropy and the coded (deflated)
//! sizes of the artifact and of the baseline.

use tamp_domain::recipe::{ClusterStage, Stage};
use tamp_domain::results::{Candidate, ClusterDetails, Details};
use tamp_engine::passes::cluster::deflated_size;
use tamp_engine::passes::{ClusterWeights, FoldBatchNorm};
use tamp_onnx::{Model, Pass};

use super::Technique;
use crate::{Context, Result, io_err};

/// k-means weight clustering.
pub struct Cluster;

impl Technique for Cluster {
    type Settings = ClusterStage;
    const NAME: &'static str = "clustering";

    fn settings(stage: &Stage) -> Option<&ClusterStage> {
        match stage {
            Stage::Clustering(c) => Some(c),
            _ => None,
        }
    }

    fn candidates(&self, cx: &mut Context<'_, '_>, stage: usize, cfg: &ClusterStage, model: &Model) -> Result<Vec<Candidate>> {
        cx.obs.begin(&format!("cluster weights ({} clusters, {:?})", cfg.clusters, cfg.granularity), 0);
        let started = std::time::Instant::now();
        let pass = ClusterWeights { config: cfg.clone() };
        let folded = if cfg.fold_batch_norm { tamp_onnx::patch::run_to_fixpoint(model, &[&FoldBatchNorm], 4)? } else { model.clone() };
        let Some((clustered, layers)) = pass.apply(&folded)? else {
            return cx.not_applied("no layer to cluster");
        };
        let pass_seconds = started.elapsed().as_secs_f64();
        cx.obs.end(&format!("{} layers clustered", layers.len()));
        let mut c = cx.judge(&clustered, format!("s{stage}-cluster-k{}", cfg.clusters), stage, "clustering")?;
        let coded = c.coded_size_bytes;
        // One read of the input model: its length and its deflated size.
        let base = std::fs::read(cx.job.model_path).map_err(io_err(cx.job.model_path))?;
        let (base_bytes, base_coded) = (base.len(), deflated_size(&base));
        let weights: usize = layers.iter().map(|l| l.elements).sum();
        let entropy = layers.iter().map(|l| l.index_entropy_bits * l.elements as f64).sum::<f64>() / weights.max(1) as f64;
        c.mode = format!("{:?}", cfg.granularity).to_lowercase();
        c.details = Some(Details::Cluster(ClusterDetails {
            clusters: cfg.clusters,
            layers,
            index_entropy_bits_per_weight: entropy,
            coded_size_bytes: coded,
            baseline_coded_size_bytes: base_coded,
            coded_compression_ratio: base_bytes as f64 / coded.max(1) as f64,
            coding: "deflate (level 6) of the ONNX file".into(),
            pass_seconds,
        }));
        Ok(vec![c])
    }
}
