//! Where training runs. A stage's [`Resources`] (the planner's record: GPU for training unless
//! the recipe says `device: cpu`) are turned into a candle device once per stage by
//! [`choose`], which every graph built after it by [`use_device`] lives on. A GPU stage on a
//! machine without one (or a build without the `cuda` feature) trains on the CPU with a
//! warning the job's record keeps; a recipe that demanded a GPU fails in one line instead.
//!
//! One device per process: a worker runs one stage, and `tamp compress` runs its stages one
//! after the other, each choosing again.

use std::sync::RwLock;

use candle_core::Device;
use tamp_domain::recipe::{Device as Class, Resources};

static CURRENT: RwLock<Option<Device>> = RwLock::new(None);

/// The device chosen for a stage, and what to tell the user about it.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub device: Device,
    /// `cuda:0` or `cpu`: what the training record shows.
    pub label: String,
    /// Set when a GPU stage fell back to the CPU.
    pub warning: Option<String>,
}

/// The device for a stage with these needs. `Err` (one line) only where the recipe demanded
/// a GPU and there is none.
pub fn choose(needs: Resources) -> Result<Chosen, String> {
    let cpu = |warning| Chosen { device: Device::Cpu, label: "cpu".into(), warning };
    if needs.device == Class::Cpu {
        return Ok(cpu(None));
    }
    match gpu() {
        Ok(device) => Ok(Chosen { device, label: "cuda:0".into(), warning: None }),
        Err(why) if needs.required => {
            Err(format!("the recipe asks for a GPU (`device: gpu`) and there is none: {why}; use `device: auto` to train on the CPU instead"))
        }
        Err(why) => Ok(cpu(Some(format!("trained on the CPU: no GPU ({why})")))),
    }
}

#[cfg(feature = "cuda")]
fn gpu() -> Result<Device, String> {
    if std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.trim().is_empty()) {
        return Err("CUDA_VISIBLE_DEVICES is empty: this run holds no GPU slot".into());
    }
    // A driver library that is a stub, or absent devices, must not take the process down.
    match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(d)) => Ok(d),
        // candle appends a backtrace where RUST_BACKTRACE is set: the first line says it.
        Ok(Err(e)) => Err(format!("CUDA device 0: {}", e.to_string().lines().next().unwrap_or_default().trim())),
        Err(_) => Err("CUDA device 0: initialisation panicked".into()),
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu() -> Result<Device, String> {
    Err("this build of Tamp has no CUDA support; the GPU worker image's has (`make build-gpu`)".into())
}

/// Graphs built from now on live on `device`.
pub fn use_device(device: Device) {
    if let Ok(mut d) = CURRENT.write() {
        *d = Some(device);
    }
}

/// The device graphs are built on (the CPU until [`use_device`] says otherwise).
pub fn current() -> Device {
    CURRENT.read().ok().and_then(|d| d.clone()).unwrap_or(Device::Cpu)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cpu_stages_never_warn_and_a_demanded_gpu_without_one_fails_in_one_line() {
        let c = choose(Resources { device: Class::Cpu, required: false }).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.device.is_cpu() && c.warning.is_none());
        if gpu().is_ok() {
            return; // a machine with a GPU: the fallback cannot be shown here
        }
        let auto = choose(Resources { device: Class::Gpu, required: false }).unwrap_or_else(|e| panic!("{e}"));
        assert!(auto.device.is_cpu() && auto.label == "cpu");
        assert!(auto.warning.as_deref().is_some_and(|w| w.starts_with("trained on the CPU: no GPU")), "{:?}", auto.warning);
        let err = choose(Resources { device: Class::Gpu, required: true }).map(|c| c.label).unwrap_err();
        assert!(err.contains("`device: gpu`") && !err.contains('\n'), "{err}");
    }
}
