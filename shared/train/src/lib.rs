//! Training on candle. Today it holds the reference CNN: a small ResNet trained, seeded, on
//! Fashion-MNIST and exported to ONNX through Tamp's own IR builder (no torch needed).
//! Fine-tuning, QAT and distillation arrive here later (see docs/architecture.md).

pub mod fmnist;
pub mod resnet;
