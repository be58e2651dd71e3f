// The tooltips: what each method and metric means, in a sentence a new user can act on.
export const HELP: Record<string, string> = {
  ptq: 'Post-training quantization: weights (and activations) stored as 8- or 4-bit integers, calibrated on sample rows. No training; minutes.',
  prune: 'Pruning removes whole channels, neurons or heads; fine-tuning on your training rows recovers the accuracy it costs.',
  distill: 'Knowledge distillation trains a smaller student to copy the original model (the teacher) on your data.',
  search: 'Mixed-precision search tries per-layer precisions under your constraints and keeps the Pareto front of accuracy, latency and size.',
  top1: 'Top-1 accuracy: the share of evaluation rows whose highest-scoring class is the label.',
  cosine: 'Cosine similarity between the compressed and the original model outputs (1.0 = identical direction).',
  latency: 'P50 latency: the median time of one inference (batch 1) on the target runtime, measured, not estimated.',
  ratio: 'Compression ratio: original file size divided by the compressed file size.',
  drop: 'Metric drop: how much the task metric fell, in percent of the original value. Negative means it rose.',
  eta: 'Estimated from the median measured time of earlier runs of the same stage kinds on this deployment.',
  health: 'ok: running as planned. retrying: a stage failed and waits for another attempt. failed/cancelled: the job ended.',
  max_metric_drop_pct: 'The largest metric drop (percent of the original) a candidate may have and still be chosen.',
  max_latency_ms_p50: 'The slowest P50 latency (milliseconds, batch 1) a candidate may have.',
  min_compression_ratio: 'The smallest size ratio (original / compressed) a candidate must reach.',
  onnxruntime: 'ONNX Runtime on CPU: the QDQ ONNX model, checked to load and to use integer kernels.',
  tflite: 'TensorFlow Lite / LiteRT: a .tflite file written from the compressed model and measured in LiteRT.',
};
