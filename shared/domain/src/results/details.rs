//! What each technique did to a candidate, typed: one variant per technique, each with its
//! per-layer (or per-group) record. Serialized untagged, so `candidates.json` carries the
//! same objects it always has; every struct denies unknown fields so reading one back picks
//! the right variant.

use serde::{Deserialize, Serialize};

/// Technique-specific facts about one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Details {
    Ptq(PtqDetails),
    IterativePruning(IterativePruning),
    ChannelPruning(ChannelPruning),
    HeadPruning(HeadPruning),
    Sparsity(SparsityDetails),
    Cluster(ClusterDetails),
    Lowrank(LowrankDetails),
    EarlyExit(EarlyExitDetails),
}

impl Details {
    /// Wall time of the pass (evaluation excluded), when the technique records it.
    pub fn pass_seconds(&self) -> Option<f64> {
        match self {
            Details::Ptq(_) => None,
            Details::IterativePruning(d) => Some(d.pass_seconds),
            Details::ChannelPruning(d) => Some(d.pass_seconds),
            Details::HeadPruning(d) => Some(d.pass_seconds),
            Details::Sparsity(d) => Some(d.pass_seconds),
            Details::Cluster(d) => Some(d.pass_seconds),
            Details::Lowrank(d) => Some(d.pass_seconds),
            Details::EarlyExit(_) => None,
        }
    }
}

/// PTQ: what the passes before quantization did (8-bit static candidates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtqDetails {
    pub pre_passes: PrePasses,
}

/// The passes that run before quantization, and what each changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrePasses {
    /// BatchNormalization nodes folded into the convolution before them.
    pub fold_batch_norm: usize,
    pub cross_layer_equalization: Vec<EqualizedPair>,
    pub bias_correction: Vec<CorrectedLayer>,
    pub symmetric_weights: bool,
    /// Layers kept in float because they are slower in int8 on this runtime.
    pub float_for_speed: Vec<String>,
    /// Why, per layer: the measured int8 and fp32 kernel times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub float_for_speed_reasons: Vec<String>,
    /// Dynamic int8 with `smooth_activations`: the MatMul inputs smoothed, each with its
    /// strength and measured error ratio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smoothed_activations: Vec<SmoothedSite>,
}

/// One activation smoothed before dynamic int8 (SmoothQuant, strength chosen per site).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothedSite {
    /// The activation divided per channel.
    pub value: String,
    /// The MatMuls reading it (node names), whose weight rows took the scales.
    pub layers: Vec<String>,
    pub alpha: f32,
    /// Measured quantization error of the site's product after smoothing, as a share of the
    /// error before.
    pub error_ratio: f64,
}

/// One equalized pair of layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EqualizedPair {
    pub first: String,
    pub second: String,
    pub channels: usize,
    /// max/min of the per-channel weight ranges of the first layer, before and after.
    pub spread_before: f64,
    pub spread_after: f64,
}

/// What correcting one layer's bias did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorrectedLayer {
    pub node: String,
    /// Mean |Δb| relative to the mean |b| (0 when the layer had no bias).
    pub mean_abs_shift: f64,
}

/// Structured channel pruning, uniform or sensitivity-allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPruning {
    pub groups: Vec<ChannelGroupLevel>,
    pub removed_channels: usize,
    pub prunable_channels: usize,
    pub achieved_sparsity: f64,
    pub params_before: u64,
    pub params_after: u64,
    pub pass_seconds: f64,
    /// The per-group curves the allocation came from (sensitivity candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Vec<GroupCurve>>,
}

/// One channel group and the level it was pruned at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelGroupLevel {
    pub group: String,
    pub channels: usize,
    pub level: f64,
    pub removed: usize,
}

/// A channel group's measured metric drop at each level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCurve {
    pub group: String,
    pub levels: Vec<f64>,
    pub metric_drop_pct: Vec<f64>,
}

/// Iterative structured pruning: the trajectory of its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IterativePruning {
    pub steps: usize,
    pub trajectory: Vec<TrajectoryStep>,
    pub trajectory_rows: usize,
    pub fine_tuning: String,
    pub groups: Vec<IterativeGroup>,
    pub removed_channels: usize,
    pub prunable_channels: usize,
    pub achieved_sparsity: f64,
    pub params_before: u64,
    pub params_after: u64,
    pub pass_seconds: f64,
}

/// The metric and size after one pruning step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrajectoryStep {
    pub step: usize,
    pub level: f64,
    pub metric: f64,
    pub params: u64,
}

/// A channel group before and after iterative pruning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IterativeGroup {
    pub group: String,
    pub channels: usize,
    pub kept: usize,
}

/// Attention-head pruning, uniform or sensitivity-allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadPruning {
    pub blocks: Vec<HeadBlockLevel>,
    pub removed_heads: usize,
    pub heads: usize,
    pub params_before: u64,
    pub params_after: u64,
    pub pass_seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Vec<BlockCurve>>,
}

/// One attention block and the heads it lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadBlockLevel {
    pub block: String,
    pub heads: usize,
    pub head_dim: usize,
    pub removed: usize,
}

/// An attention block's measured metric drop at each level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockCurve {
    pub block: String,
    pub levels: Vec<f64>,
    pub metric_drop_pct: Vec<f64>,
}

/// Unstructured, block or N:M sparsity (zeros in dense weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparsityDetails {
    pub pattern: String,
    pub layers: Vec<SparseLayer>,
    pub zeros: usize,
    pub weights: usize,
    pub achieved_sparsity: f64,
    pub coded_size_bytes: u64,
    pub baseline_coded_size_bytes: u64,
    pub coded_compression_ratio: f64,
    pub coding: String,
    pub pass_seconds: f64,
    /// Time to measure the curves and allocate (sensitivity candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Vec<LayerCurve>>,
}

/// What zeroing did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseLayer {
    pub node: String,
    pub elements: usize,
    pub zeros: usize,
    pub sparsity: f64,
}

/// A layer's measured metric drop at each level, and the level it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerCurve {
    pub layer: String,
    pub levels: Vec<f64>,
    pub metric_drop_pct: Vec<f64>,
    pub chosen: f64,
}

/// Weight clustering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterDetails {
    pub clusters: u32,
    pub layers: Vec<ClusteredLayer>,
    pub index_entropy_bits_per_weight: f64,
    pub coded_size_bytes: u64,
    pub baseline_coded_size_bytes: u64,
    pub coded_compression_ratio: f64,
    pub coding: String,
    pub pass_seconds: f64,
}

/// What clustering did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusteredLayer {
    pub weight: String,
    pub elements: usize,
    pub clusters: usize,
    /// Shannon entropy of the indices, bits per weight.
    pub index_entropy_bits: f64,
    /// Mean squared error of the clustered weights.
    pub mse: f64,
}

/// Low-rank factorisation (SVD or Tucker-2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowrankDetails {
    pub layers: Vec<FactorisedLayer>,
    pub params_before: usize,
    pub params_after: usize,
    pub pass_seconds: f64,
    pub output_agreement: Agreement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Vec<LayerCurve>>,
}

/// What factorising one layer did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactorisedLayer {
    pub node: String,
    pub shape: [usize; 2],
    pub rank: usize,
    /// Tucker-2: (R1 output side, R2 input side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<[usize; 2]>,
    pub params_before: usize,
    pub params_after: usize,
    /// Fraction of Σσ² the kept rank holds.
    pub energy_kept: f64,
    /// ‖W − A·B‖_F / ‖W‖_F.
    pub relative_error: f64,
}

/// How closely a candidate's first output follows the input model's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agreement {
    pub rows: usize,
    pub mean_cosine: f64,
    pub top1_agreement: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Details {
        Details::Cluster(ClusterDetails {
            clusters: 16,
            layers: vec![ClusteredLayer { weight: "w".into(), elements: 4, clusters: 2, index_entropy_bits: 1.0, mse: 0.0 }],
            index_entropy_bits_per_weight: 1.0,
            coded_size_bytes: 10,
            baseline_coded_size_bytes: 20,
            coded_compression_ratio: 2.0,
            coding: "deflate".into(),
            pass_seconds: 0.5,
        })
    }

    #[test]
    fn every_variant_reads_back_as_itself() {
        let channels = Details::ChannelPruning(ChannelPruning {
            groups: vec![ChannelGroupLevel { group: "g".into(), channels: 8, level: 0.5, removed: 4 }],
            removed_channels: 4,
            prunable_channels: 8,
            achieved_sparsity: 0.5,
            params_before: 10,
            params_after: 5,
            pass_seconds: 0.1,
            sensitivity: Some(vec![GroupCurve { group: "g".into(), levels: vec![0.5], metric_drop_pct: vec![1.0] }]),
        });
        let iterative = Details::IterativePruning(IterativePruning {
            steps: 2,
            trajectory: vec![TrajectoryStep { step: 0, level: 0.0, metric: 1.0, params: 10 }],
            trajectory_rows: 8,
            fine_tuning: "none".into(),
            groups: vec![IterativeGroup { group: "g".into(), channels: 8, kept: 4 }],
            removed_channels: 4,
            prunable_channels: 8,
            achieved_sparsity: 0.5,
            params_before: 10,
            params_after: 5,
            pass_seconds: 0.1,
        });
        let ptq = Details::Ptq(PtqDetails {
            pre_passes: PrePasses {
                fold_batch_norm: 2,
                cross_layer_equalization: vec![],
                bias_correction: vec![CorrectedLayer { node: "c".into(), mean_abs_shift: 0.1 }],
                symmetric_weights: true,
                float_for_speed: vec![],
                float_for_speed_reasons: vec![],
                smoothed_activations: vec![SmoothedSite { value: "ln".into(), layers: vec!["MatMul_1".into()], alpha: 0.5, error_ratio: 0.2 }],
            },
        });
        for d in [channels, iterative, ptq, cluster()] {
            let text = serde_json::to_string(&d).unwrap();
            assert_eq!(serde_json::from_str::<Details>(&text).unwrap(), d, "{text}");
        }
    }

    #[test]
    fn the_json_has_no_tag_and_unknown_fields_are_refused() {
        let v = serde_json::to_value(cluster()).unwrap();
        assert_eq!(v["clusters"], 16);
        assert!(v.get("Cluster").is_none());
        let mut extra = v.clone();
        extra["colour"] = serde_json::json!("blue");
        assert!(serde_json::from_value::<Details>(extra).is_err());
        assert_eq!(cluster().pass_seconds(), Some(0.5));
    }
}

/// Early exits: the heads, each exit's measured batch-1 latency, and the accuracy against
/// average latency over thresholds on the evaluation rows (per row: the first exit whose
/// top softmax probability reaches the threshold answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyExitDetails {
    /// The values the heads read, in order.
    pub exits: Vec<String>,
    /// Top-1 of each head alone, then of the full model.
    pub exit_top1: Vec<f64>,
    /// P50 at batch 1 of the model up to each exit (its earlier heads included), then of the
    /// full model with every head.
    pub latency_ms: Vec<f64>,
    /// The full model without heads (the baseline the ratios use).
    pub baseline_latency_ms: f64,
    pub curve: Vec<ExitCurvePoint>,
    /// The threshold the cascade uses: the fastest point within the metric constraint.
    pub threshold: f64,
    /// How the cascade decides with a batch: the early answer needs every row confident.
    pub batching: String,
    /// The cascade file itself, timed row by row against the model (the curve's latencies
    /// are estimates from the paths' P50s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<CascadeTiming>,
}

/// The emitted cascade run at batch 1 on evaluation rows, each row taking the path its own
/// confidence picks, interleaved with the model it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeTiming {
    /// Rows timed (a seeded sample of the evaluation rows).
    pub rows: usize,
    /// Rounds over those rows; the figures are the median round's.
    pub rounds: usize,
    /// Mean batch-1 latency per row of the cascade and of the model without heads.
    pub average_latency_ms: f64,
    pub baseline_average_latency_ms: f64,
    /// `average_latency_ms` over `baseline_average_latency_ms`.
    pub latency_ratio: f64,
    /// Top-1 of the cascade's own answers on those rows, and what the curve's per-exit
    /// predictions give at the chosen threshold on the same rows (they agree unless a row's
    /// confidence sits on the threshold within float rounding).
    pub top1: f64,
    pub curve_top1: f64,
}

/// One threshold's outcome on the evaluation rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitCurvePoint {
    pub threshold: f64,
    pub top1: f64,
    /// Share of rows answered by each exit, then by the full model.
    pub answered: Vec<f64>,
    pub average_latency_ms: f64,
    /// `average_latency_ms` over the baseline's.
    pub latency_ratio: f64,
    pub meets_constraint: bool,
}
