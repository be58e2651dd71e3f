//! Training on candle, free of the engine (ONNX Runtime is never needed to train):
//! - [`graph`]: any supported ONNX graph as a candle module, weights written back after;
//! - [`blas`]: f32 products through OpenBLAS when the machine has it;
//! - [`device`]: the CPU or, with the `cuda` feature, a GPU, chosen per stage;
//! - [`finetune`]: fine-tuning (and QAT on Tamp's QDQ graphs) with losses, optimizers,
//!   schedules and the constraints a compression stage imposes;
//! - the reference CNN: a small ResNet trained, seeded, on Fashion-MNIST and exported to
//!   ONNX through Tamp's own IR builder (no torch needed).

#[cfg(feature = "cuda")]
mod adamw_cuda;
mod alloc;
pub mod blas;
mod bn;
mod conv;
pub mod device;
pub mod finetune;
pub mod fmnist;
pub mod graph;
mod losses;
pub mod resnet;
