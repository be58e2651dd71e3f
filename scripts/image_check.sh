#!/usr/bin/env bash
# Checks a worker image's root folder without Docker (`make worker-image`): every library the
# worker and ONNX Runtime need resolves inside the folder or is part of the base image's glibc
# (libcuda is the host driver's, for GPU images), and the worker starts there.
#   scripts/image_check.sh ROOTFS cpu|gpu
set -euo pipefail
root=$(cd "$1" && pwd); kind=$2
bin=$root/usr/local/bin/tamp-batch-worker
libs=$root/usr/local/lib:$root/opt/onnxruntime/lib:$root/usr/local/cuda/lib64
# Base-image libraries (Debian bookworm-slim): glibc, libgcc, libstdc++.
base='^(linux-vdso|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libgcc_s\.so|libstdc\+\+\.so|ld-linux|/lib64/ld-linux)'
missing=0
for f in "$bin" "$root"/usr/local/lib/*.so* "$root"/opt/onnxruntime/lib/*.so* ; do
  [ -e "$f" ] || continue
  while read -r lib _ path _; do
    [[ $lib =~ $base ]] && continue
    [ "$kind" = gpu ] && [[ $lib == libcuda.so.1 ]] && continue   # the host driver's
    if [[ $path != "$root"* ]]; then echo "$(basename "$f"): $lib resolves outside the image ($path)"; missing=1; fi
  done < <(LD_LIBRARY_PATH=$libs ldd "$f" 2>/dev/null | grep '=>' )
done
[ $missing = 0 ] || { echo "the image's root folder is incomplete"; exit 1; }
# The worker starts (the GPU build against the link stub of libcuda: no driver here).
stub=""; [ "$kind" = gpu ] && stub=:$(pwd)/.deps/cuda/lib/stubs-run
if [ "$kind" = gpu ]; then mkdir -p .deps/cuda/lib/stubs-run && cp .deps/cuda/lib/stubs/libcuda.so .deps/cuda/lib/stubs-run/libcuda.so.1; fi
LD_LIBRARY_PATH=$libs$stub "$bin" --help > /dev/null
echo "$root: every library resolves inside the image$([ "$kind" = gpu ] && echo ' (libcuda: the host driver)'), and tamp-batch-worker starts"
