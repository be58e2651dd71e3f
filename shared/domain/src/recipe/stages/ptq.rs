//! The `ptq` stage: post-training quantization settings (bit-widths, static or dynamic,
//! calibration, pre-passes) and their validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{At, FineTune, StageSettings};
use crate::recipe::RecipeError;

/// Most calibration samples a recipe may ask for.
pub const MAX_CALIBRATION_SAMPLES: usize = 1_000_000;

/// Post-training quantization. Lists of bit-widths give one candidate per combination;
/// 4-bit weights are weight-only (MatMul layers as `MatMulNBits`, Conv weights as int4 behind
/// `DequantizeLinear`; activations float), so they make one candidate whatever `activations`
/// lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PtqStage {
    pub bits: Bits,
    pub mode: PtqMode,
    pub calibration: Calibration,
    /// One weight scale per output channel (else one per tensor).
    pub per_channel_weights: bool,
    /// Symmetric int8 weights (zero point 0); `false`: asymmetric uint8 with zero points
    /// (ONNX Runtime's QLinearConv takes one zero point for all channels, so per-channel
    /// asymmetric Conv weights run unfused and are flagged when not faster).
    pub symmetric: bool,
    pub fold_batch_norm: bool,
    /// Balance per-channel weight ranges of Conv → [Relu] → Conv pairs before calibrating.
    pub cross_layer_equalization: bool,
    /// Add each layer's expected weight-quantization error (from calibration input means)
    /// to its bias (on by default: EfficientNet-Lite0 int8 92.2 → 100 % top-1 agreement).
    pub bias_correction: bool,
    /// Node names kept in float whatever the sensitivity ranking says.
    pub keep_float: Vec<String>,
    /// Leave in float the layers ONNX Runtime runs slower in int8 than in fp32 (single-input-
    /// channel Convs; reported per candidate).
    pub float_slow_layers: bool,
    /// Element type of quantized activations (`uint8`, ONNX Runtime's x86 default, or `int8`).
    pub activation_type: ActivationType,
    /// int8 activations with zero point 0 (TensorRT-style); needs `activation_type: int8`.
    pub symmetric_activations: bool,
    /// The CPU instruction set the artifact is for (`auto`: the machine that quantizes).
    /// Without VNNI (`avx2`, `avx512`) ONNX Runtime's u8×s8 kernels saturate int16 sums,
    /// so weights are stored uint8 there (its U8U8 kernels); the choice is recorded with the
    /// artifact.
    pub target_isa: TargetIsa,
    /// Dynamic int8 only: before quantizing, divide each MatMul input's wide channels by a
    /// per-channel scale and multiply the weight rows by it (SmoothQuant), where the error
    /// measured on calibration rows at least halves (strength chosen per layer; one `Mul`
    /// in front of each smoothed layer). Needs calibration data.
    pub smooth_activations: bool,
    /// Quantization-aware training: each candidate trains with fake quantization
    /// (straight-through gradients) and keeps exactly the layout PTQ wrote: int8 as static QDQ
    /// (activation ranges from this stage's calibration; `mode: auto` means static here), 4-bit
    /// as `MatMulNBits` / int4 Conv weights with their block or channel scales. On by default
    /// in a `qat:` stage.
    #[serde(alias = "finetune", deserialize_with = "super::finetune::deserialize_opt", skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
    /// Per-layer precision (what a `search` stage writes): each listed layer (node name) at
    /// its precision, every other layer float, one candidate; `bits` is then not read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, Precision>,
}

/// One layer's precision in a mixed-precision config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Float,
    /// int8 weights (and int8 activations where the stage quantizes them: static mode).
    Int8,
    /// 4-bit weights, weight-only (`MatMulNBits`; int4 Conv weights behind DequantizeLinear).
    Int4,
}

impl Precision {
    pub fn label(self) -> &'static str {
        match self {
            Precision::Float => "float",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }
}

/// A CPU instruction-set class for int8 kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetIsa {
    /// The CPU of the machine that quantizes.
    #[default]
    Auto,
    /// AVX2 without VNNI (most pre-2019 x86 servers, many laptops).
    Avx2,
    /// AVX-512 without VNNI (Skylake-SP).
    Avx512,
    /// AVX-512 VNNI or AVX-VNNI (Cascade Lake and later, Zen 4 and later).
    Vnni,
    /// AMX int8 (Sapphire Rapids and later).
    Amx,
}

/// Element type of quantized activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    #[default]
    Uint8,
    Int8,
}

impl Default for PtqStage {
    fn default() -> Self {
        Self {
            bits: Bits::default(),
            mode: PtqMode::Auto,
            calibration: Calibration::default(),
            per_channel_weights: true,
            symmetric: true,
            fold_batch_norm: true,
            cross_layer_equalization: false,
            bias_correction: true,
            keep_float: Vec::new(),
            float_slow_layers: true,
            activation_type: ActivationType::Uint8,
            symmetric_activations: false,
            target_isa: TargetIsa::Auto,
            smooth_activations: false,
            fine_tune: None,
            layers: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bits {
    pub weights: Vec<u8>,
    pub activations: Vec<u8>,
}

impl Default for Bits {
    fn default() -> Self {
        Self { weights: vec![8], activations: vec![8] }
    }
}

/// How activations are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PtqMode {
    /// Static for convolutional graphs, dynamic for transformer-style graphs (MatMul by
    /// constant weights, no Conv).
    #[default]
    Auto,
    /// Calibrated activation ranges baked into the graph.
    Static,
    /// Activation ranges computed at run time; weights ahead of time.
    Dynamic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Calibration {
    pub method: CalibrationMethod,
    pub samples: usize,
    /// For `percentile`: the percentile of |x| kept.
    pub percentile: f64,
    pub seed: u64,
    pub bins: usize,
}

impl Default for Calibration {
    fn default() -> Self {
        Self { method: CalibrationMethod::Minmax, samples: 256, percentile: 99.99, seed: 0, bins: 2048 }
    }
}

/// How activation ranges are chosen (`--method` of `tamp quantize` parses the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    Minmax,
    /// KL divergence (TensorRT-style threshold search); `entropy` is an alias.
    #[serde(alias = "entropy")]
    Kl,
    Percentile,
    Mse,
    /// Try minmax, percentile 99.9 / 99.99 / 99.999 and kl on the calibration rows and keep
    /// the one whose int8 outputs are closest to fp32's (one calibration pass; each candidate
    /// is built and run on those rows).
    Auto,
}

impl StageSettings for PtqStage {
    fn validate(&self, at: &At<'_>) -> Result<(), RecipeError> {
        if let Some(ft) = &self.fine_tune {
            ft.validate(at)?;
            if self.mode == PtqMode::Dynamic {
                return Err(at.invalid(&["mode"], "quantization-aware training trains static QDQ graphs; use `mode: static` (or `auto`)"));
            }
            if !self.layers.is_empty() {
                return Err(at.invalid(&["layers"], "a per-layer precision config is post-training here; remove `fine_tune`, or `layers`"));
            }
        }
        for (key, list, allowed) in [("weights", &self.bits.weights, &[8u8, 4][..]), ("activations", &self.bits.activations, &[8u8][..])] {
            if list.is_empty() {
                return Err(at.invalid(&["bits", key], "list at least one bit-width, e.g. [8]"));
            }
            if let Some(b) = list.iter().find(|b| !allowed.contains(b)) {
                return Err(at.invalid(
                    &["bits", key],
                    format!("{b}-bit is not supported; supported: {allowed:?} (4-bit weights are weight-only: MatMul and Gemm layers as MatMulNBits, Conv weights as int4)"),
                ));
            }
        }
        if self.smooth_activations && (self.mode == PtqMode::Static || self.fine_tune.is_some()) {
            return Err(at.invalid(
                &["smooth_activations"],
                "smoothing is for dynamic int8 (activations quantized at run time, one range per tensor); static PTQ calibrates each activation's range: use `mode: dynamic` (or `auto` on a transformer), or drop `smooth_activations`",
            ));
        }
        if self.symmetric_activations && self.activation_type == ActivationType::Uint8 {
            return Err(at.invalid(&["symmetric_activations"], "symmetric activations need `activation_type: int8` (uint8 has no zero-centred range)"));
        }
        let c = &self.calibration;
        if c.samples == 0 || c.samples > MAX_CALIBRATION_SAMPLES {
            return Err(at.invalid(&["calibration", "samples"], format!("must be 1–{MAX_CALIBRATION_SAMPLES}")));
        }
        if !(c.percentile > 50.0 && c.percentile <= 100.0) {
            return Err(at.invalid(&["calibration", "percentile"], format!("{} is outside (50, 100]", c.percentile)));
        }
        if !(64..=1 << 16).contains(&c.bins) {
            return Err(at.invalid(&["calibration", "bins"], format!("{} is outside 64..=65536", c.bins)));
        }
        Ok(())
    }
}

impl std::str::FromStr for CalibrationMethod {
    type Err = String;

    /// The recipe's names: `minmax`, `kl` (or `entropy`), `percentile`, `mse`, `auto`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "minmax" => Ok(Self::Minmax),
            "kl" | "entropy" => Ok(Self::Kl),
            "percentile" => Ok(Self::Percentile),
            "mse" => Ok(Self::Mse),
            "auto" => Ok(Self::Auto),
            other => Err(format!("'{other}' is not a calibration method; use minmax, kl (entropy), percentile, mse or auto")),
        }
    }
}
