//! The x86 instruction set ONNX Runtime's integer kernels will use, and what it means for
//! int8 quality. Without VNNI (AVX2 and plain AVX-512 CPUs) the u8×s8 kernels multiply with
//! `vpmaddubsw`, which adds two u8·s8 products into a saturating int16: 255·127·2 = 64,770
//! overflows 32,767, so large activations times large weights clip. ONNX Runtime's quantizer
//! offers `reduce_range` (7-bit weights) for that, which avoids the clipping but halves the
//! weights' precision: EfficientNet-Lite0 kept 95.3 % top-1 agreement that way, as with
//! 7-bit activations. Tamp stores the same symmetric codes as uint8 with zero point 128
//! instead, so ONNX Runtime picks its U8U8 kernels, which widen to 16 bits before
//! multiplying and accumulate in int32: full 8-bit precision and no saturation (100 % on the
//! same images under `qemu-x86_64 -cpu Haswell`, against 84.4 % with int8 weights). The ISA
//! is detected, or the recipe's `target_isa`, and recorded with the artifact.

use serde::{Deserialize, Serialize};

pub use tamp_domain::recipe::TargetIsa;

/// What the CPU running this process offers, from CPUID (what ONNX Runtime's kernel
/// dispatch reads too; an emulator such as `qemu-x86_64 -cpu Haswell` is seen as the CPU it
/// emulates). AMX, which std cannot test on stable Rust, from `/proc/cpuinfo` on top of VNNI.
pub fn detect() -> TargetIsa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni") {
            let amx = crate::eval::cpu_info().features.iter().any(|f| f == "amx_int8");
            return if amx { TargetIsa::Amx } else { TargetIsa::Vnni };
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            return TargetIsa::Avx512;
        }
        TargetIsa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    TargetIsa::Vnni // ARM's int8 dot products (SDOT/UDOT) do not saturate in int16
}

/// The ISA a job quantizes for: the recipe's, else this machine's.
pub fn resolve(requested: TargetIsa) -> TargetIsa {
    match requested {
        TargetIsa::Auto => detect(),
        other => other,
    }
}

/// Whether u8×s8 dot products saturate on `isa` (no VNNI), so weights go to U8U8 kernels.
pub fn needs_u8_weights(isa: TargetIsa) -> bool {
    matches!(isa, TargetIsa::Avx2 | TargetIsa::Avx512)
}

/// The ISA decision recorded with a quantized artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsaChoice {
    pub target: TargetIsa,
    /// Weights stored uint8 (zero point 128) so ONNX Runtime runs its U8U8 kernels.
    pub u8_weights: bool,
}

/// The choice for a requested ISA.
pub fn choose(requested: TargetIsa) -> IsaChoice {
    let target = resolve(requested);
    IsaChoice { target, u8_weights: needs_u8_weights(target) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cpus_without_vnni_get_uint8_weights() {
        assert!(choose(TargetIsa::Avx2).u8_weights);
        assert!(choose(TargetIsa::Avx512).u8_weights);
        assert!(!choose(TargetIsa::Vnni).u8_weights);
        assert!(!choose(TargetIsa::Amx).u8_weights);
        assert_ne!(resolve(TargetIsa::Auto), TargetIsa::Auto);
    }
}
