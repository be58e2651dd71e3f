#!/usr/bin/env bash
# The GPU measurements of issue 19, run on the lent H200 (`device` tool) over what
# `scripts/gpu_carry.sh` packed into .gpu/ (the CUDA build of tamp and tamp-train-bench, ONNX
# Runtime's CPU library, models with float16-packed weights, data). The H200's own PyTorch
# (CUDA 13.0 wheels) provides cuBLAS, cuRAND, NVRTC and the runtime the CUDA build loads.
#   scripts/gpu_bench.sh minilm|resnet     (results under $OUT)
set -uo pipefail
what=${1:?minilm, resnet or all}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
G=/tmp/g; mkdir -p $G
# The machine has no zstd: the files travel xz-compressed (Python's lzma reads them).
for f in .gpu/*.xz; do python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "$G/$(basename "${f%.xz}")"; done
chmod +x $G/tamp $G/tamp-train-bench 2>/dev/null
lib=$(dirname "$(find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH=$lib:$(dirname "$(find / -name 'libcudart.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)"):$(dirname "$(find / -name 'libnvrtc.so.13' -not -path '*/proc/*' 2>/dev/null | head -1)"):$(dirname "$(find / -name 'libcurand.so.10' -not -path '*/proc/*' 2>/dev/null | head -1)")
export ORT_DYLIB_PATH=$G/libonnxruntime.so.1.31.1 RUST_LOG=warn
nvidia-smi -L | tee "$OUT/gpu.txt"; nproc >> "$OUT/gpu.txt"
# GPU utilisation, sampled every 100 ms while a phase runs: util.<phase>.csv
sample() { nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 > "$R/util.$1.csv" & echo $!; }
R=$G/results; mkdir -p $R
# PHASES="a b" runs only those phases.
phase() { local name=$1; shift; [ -n "${PHASES:-}" ] && [[ " $PHASES " != *" $name "* ]] && return 0; local s; s=$(sample "$name"); local t0; t0=$(date +%s%N); "$@" > "$R/$name.log" 2>&1; local rc=$?; kill "$s"; echo "$name rc=$rc $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$OUT/phases.txt"; tail -3 "$R/$name.log"; }
case $what in all) set -- minilm resnet ;; *) set -- "$what" ;; esac
for what in "$@"; do
case $what in
minilm)
  mkdir -p $G/pack && cp .gpu/minilm-graph.onnx $G/pack/graph.onnx && mv $G/weights16.npz $G/pack/
  python3 scripts/gpu_pack.py unpack $G/pack $G/minilm.onnx
  # Tamp's training step against PyTorch's (the same graph op by op, and Hugging Face's
  # BertModel), all on the same 64 rows: every step is the same batch, cut to the same length.
  python3 -c "import numpy as np, sys; d = np.load(sys.argv[1]); np.savez(sys.argv[2], **{k: d[k][:64] for k in d.files})" $G/minilm-train.npz $G/rows64.npz
  phase step_tamp $G/tamp-train-bench --model $G/minilm.onnx --data $G/rows64.npz --batch 64 --steps 30 --teacher --device cuda --export $G/graph
  TAMP_FUSED_ADAMW=0 phase step_tamp_opbyop $G/tamp-train-bench --model $G/minilm.onnx --data $G/rows64.npz --batch 64 --steps 30 --teacher --device cuda
  phase step_torch_graph python3 scripts/torch_step.py $G/graph $G/rows64.npz --batch 64 --steps 30 --teacher --device cuda
  phase step_torch_bert python3 scripts/torch_minilm_step.py $G/rows64.npz --batch 64 --steps 30 --device cuda
  # One epoch of MiniLM distillation (teacher forward, student forward/backward/AdamW) at
  # batch 64, training only: wall time and GPU utilisation.
  TAMP_FUSED_ADAMW=0 phase epoch_tamp_opbyop $G/tamp-train-bench --model $G/minilm.onnx --data $G/minilm-train.npz --batch 64 --teacher --epochs 1 --eval $G/minilm-eval.npz --device cuda
  phase epoch_tamp $G/tamp-train-bench --model $G/minilm.onnx --data $G/minilm-train.npz --batch 64 --teacher --epochs 1 --eval $G/minilm-eval.npz --device cuda
  # One epoch of the 3-layer distillation, end to end through `tamp compress`.
  phase distill_gpu $G/tamp compress $G/minilm.onnx --recipe .gpu/distill_epoch.yaml --train $G/minilm-train.npz --eval $G/minilm-eval.npz --out $G/out-gpu --no-analysis
  cp $G/out-gpu/candidates.json "$R/distill_gpu.candidates.json" 2>/dev/null
  ;;
resnet)
  phase qat_gpu $G/tamp compress .gpu/resnet8.onnx --recipe .gpu/qat_gpu.yaml --data $G/fmnist-calib.npz --train $G/fmnist-train.npz --eval $G/fmnist-eval.npz --out $G/qat-gpu --no-analysis
  phase qat_cpu $G/tamp compress .gpu/resnet8.onnx --recipe .gpu/qat_cpu.yaml --data $G/fmnist-calib.npz --train $G/fmnist-train.npz --eval $G/fmnist-eval.npz --out $G/qat-cpu --no-analysis
  cp $G/qat-gpu/candidates.json "$R/qat_gpu.candidates.json" 2>/dev/null; cp $G/qat-cpu/candidates.json "$R/qat_cpu.candidates.json" 2>/dev/null
  ;;
esac
done
# Mean utilisation per phase (samples while the phase ran), then everything in one archive.
for f in $R/util.*.csv; do python3 -c "import sys; v=[float(l.split(',')[1]) for l in open(sys.argv[1]) if l.count(',') >= 2]; print(sys.argv[1].rsplit('/',1)[-1], 'samples', len(v), 'mean util %', round(sum(v)/max(len(v),1),1), 'busy>=50% share', round(sum(x>=50 for x in v)/max(len(v),1),3))" "$f"; done | tee -a "$OUT/phases.txt"
tar czf "$OUT/results.tgz" -C $G results
