//! Graph passes. Each takes `&Model`, returns a `Patch` (see `tamp_onnx::patch`), never
//! mutates its input and never writes files; the driver applies and checks the patch.
//! Adding a pass: its own file, one line here, its tests.

pub mod bias_correct;
pub mod cluster;
pub mod conv4;
pub mod cp;
pub mod depthwise;
pub mod dynamic;
pub mod equalize;
pub mod exits;
pub mod fold_bn;
pub mod hardswish;
pub mod heads;
pub mod layers;
pub mod lowrank;
pub mod nbits;
pub mod opset;
pub mod pad_channels;
pub mod prune;
pub mod quantize;
pub mod sparsity;
pub mod square;
pub mod subgraph;

pub use cluster::{ClusterWeights, ClusteredLayer};
pub use conv4::QuantizeConv4;
pub use dynamic::{DynamicConfig, QuantizeDynamic};
pub use fold_bn::FoldBatchNorm;
pub use lowrank::{FactorisedLayer, LowRank};
pub use nbits::{NBitsConfig, QuantizeNBits};
pub use quantize::{QuantizeConfig, QuantizeQdq};
pub use subgraph::QuantizeSubgraphWeights;
