#!/usr/bin/env bash
# Packs what scripts/gpu_bench.sh needs on the lent GPU machine into .gpu/ (ignored; carried
# by the `device` tool, 64 MiB a call): `make build-gpu`'s binaries and ONNX Runtime's CPU
# library xz-compressed (the lent machine has Python's lzma, not zstd), MiniLM with int8-packed
# weights (scripts/gpu_pack.py), the
# Fashion-MNIST rows, and the recipes. The CPU side of each comparison runs here on the same
# restored model (`tamp compress` with the same recipe).
#   scripts/gpu_carry.sh minilm|resnet|all   (all: both sets in one call, the Fashion-MNIST
#   rows cut to 8,000 training and 5,000 evaluation images so that it fits)
set -euo pipefail
what=${1:?minilm, resnet or all}
PY=${PY:-.venv/bin/python}
[ "${KEEP:-}" = 1 ] || { rm -rf .gpu && mkdir -p .gpu; }
z() { xz -T2 -9 -k -c "$1" > ".gpu/$(basename "$1").xz"; }
z dist/gpu/tamp
z .deps/ort/libonnxruntime.so.1.31.1
[ "$what" = all ] && { KEEP=1 "$0" minilm; KEEP=1 ROWS=8000 EVAL_ROWS=5000 exec "$0" resnet; }
case $what in
minilm)
  z dist/gpu/tamp-train-bench
  $PY scripts/gpu_pack.py pack models/all-minilm-l6-v2/model.onnx /tmp/minilm-pack
  cp /tmp/minilm-pack/graph.onnx .gpu/minilm-graph.onnx
  z /tmp/minilm-pack/weights16.npz
  cp models/all-minilm-l6-v2/train.npz /tmp/minilm-train.npz && z /tmp/minilm-train.npz
  cp models/all-minilm-l6-v2/eval.npz /tmp/minilm-eval.npz && z /tmp/minilm-eval.npz
  cat > .gpu/distill_epoch.yaml <<'Y'
policy:
  name: distill-epoch
  stages:
    - distill:
        teacher: input
        student: {layers: {keep_every: 2}}
        untrained_candidate: false
        fine_tune: {epochs: 1, lr: 0.0005, batch_size: 32, seed: 1}
constraints:
  max_metric_drop_pct: 6
objective: latency
Y
  ;;
resnet)
  cp models/fmnist-resnet8/model.onnx .gpu/resnet8.onnx
  cp models/fmnist-resnet8/calib.npz /tmp/fmnist-calib.npz && z /tmp/fmnist-calib.npz
  # The first ROWS training and EVAL_ROWS evaluation images (64 MiB a call): the CPU and GPU
  # runs train and score on the same.
  cut() { $PY -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k][:int(sys.argv[3])] for k in d.files})" "$@"; }
  cut models/fmnist-resnet8/train.npz /tmp/fmnist-train.npz "${ROWS:-12000}" && z /tmp/fmnist-train.npz
  cut models/fmnist-resnet8/eval.npz /tmp/fmnist-eval.npz "${EVAL_ROWS:-10000}" && z /tmp/fmnist-eval.npz
  for d in gpu cpu; do cat > .gpu/qat_$d.yaml <<Y
policy:
  name: qat-$d
  stages:
    - qat:
        mode: static
        bits: {weights: [8], activations: [8]}
        fine_tune: {epochs: 1, lr: 0.0001, batch_size: 64, seed: 1, device: $d}
constraints:
  max_metric_drop_pct: 0.5
objective: latency
Y
  done
  ;;
esac
du -sh .gpu; du -cb .gpu/* | tail -1
