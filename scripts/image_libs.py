#!/usr/bin/env python3
"""Fills the GPU worker image's library folders from the pinned wheels
(scripts/requirements-cuda-runtime.txt, downloaded by `make worker-image GPU=1`): ONNX
Runtime's GPU build (core library, CUDA execution provider, the shared provider bridge) into
--ort, and every CUDA 13 shared library of the nvidia-* wheels into --cuda."""
import argparse
import glob
import os
import zipfile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", required=True)
    ap.add_argument("--ort", required=True)
    ap.add_argument("--cuda", required=True)
    a = ap.parse_args()
    n = 0
    for w in sorted(glob.glob(os.path.join(a.wheels, "*.whl"))):
        with zipfile.ZipFile(w) as z:
            for name in z.namelist():
                base = name.rsplit("/", 1)[-1]
                if name.startswith("onnxruntime/capi/libonnxruntime") and ".so" in base and "tensorrt" not in base:
                    dest = a.ort
                elif name.startswith("nvidia/") and "/lib/" in name and ".so" in base:
                    dest = a.cuda
                else:
                    continue
                with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                    out.write(src.read())
                n += 1
    if n == 0:
        raise SystemExit(f"no libraries found in {a.wheels}")
    print(f"{n} libraries -> {a.ort}, {a.cuda}")


if __name__ == "__main__":
    main()
