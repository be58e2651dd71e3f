//! The x86 instruction set ONNX Runtime's integer kernels will use, and what it means for
//! int8 quality. Without VNNI (AVX2 and plain AVX-512 CPUs) the u8×s8 kernels multiply with
//! `vpmaddubsw`, which adds two u8·s8 products into a saturating int16: 255·127·2 = 64,770
//! overflows 32,767, so large activations times large weights clip. ONNX Runtime's quantizer
//! offers `reduce_range` (7-bit weights) for that; Tamp picks it itself from the ISA it
//! quantizes for — detected, or the recipe's `target_isa` — and records the choice in the
//! artifact. With 7-bit weights (|w| ≤ 63) the pair sum stays ≤ 32,130: no saturation.

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

/// Whether u8×s8 dot products saturate on `isa` (no VNNI), so weights need 7 bits.
pub fn needs_reduced_range(isa: TargetIsa) -> bool {
    matches!(isa, TargetIsa::Avx2 | TargetIsa::Avx512)
}

/// The ISA decision recorded with a quantized artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsaChoice {
    pub target: TargetIsa,
    /// Weights use 7 bits (|q| ≤ 63) so the int16 pair sums cannot saturate.
    pub reduced_range_weights: bool,
}

/// The choice for a requested ISA.
pub fn choose(requested: TargetIsa) -> IsaChoice {
    let target = resolve(requested);
    IsaChoice { target, reduced_range_weights: needs_reduced_range(target) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cpus_without_vnni_get_seven_bit_weights() {
        assert!(choose(TargetIsa::Avx2).reduced_range_weights);
        assert!(choose(TargetIsa::Avx512).reduced_range_weights);
        assert!(!choose(TargetIsa::Vnni).reduced_range_weights);
        assert!(!choose(TargetIsa::Amx).reduced_range_weights);
        assert_ne!(resolve(TargetIsa::Auto), TargetIsa::Auto);
    }
}
