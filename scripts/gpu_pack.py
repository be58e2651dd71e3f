#!/usr/bin/env python3
"""Models for the lent GPU machine, which takes 64 MiB a call (scripts/gpu_bench.sh).

`pack` stores an ONNX model's float32 weights as int8 with one float32 scale per row (2-D and
larger) or as float16 (vectors) beside its graph (MiniLM: 90 MB -> 23 MB); `unpack` restores
float32 ONNX from that. The restored model is what both sides of a
CPU/GPU comparison train (run `pack` then `unpack` here too), so rounding the weights once
changes nothing between them.

    python3 scripts/gpu_pack.py pack MODEL.onnx DIR
    python3 scripts/gpu_pack.py unpack DIR MODEL.onnx"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def pack(model: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    m = onnx.load(model)
    weights = {}
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1024:
            a = numpy_helper.to_array(t)
            if a.ndim >= 2:
                rows = a.reshape(a.shape[0], -1)
                scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127.0
                weights[f"w{i}"] = np.round(rows / scale).astype(np.int8).reshape(a.shape)
                weights[f"s{i}"] = scale.astype(np.float32)
            else:
                weights[f"w{i}"] = a.astype(np.float16)
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.doc_string = f"gpu_pack:w{i}"
    np.savez(out / "weights16.npz", **weights)
    onnx.save(m, out / "graph.onnx")


def unpack(src: Path, model: Path) -> None:
    m = onnx.load(src / "graph.onnx")
    w = np.load(src / "weights16.npz")
    for t in m.graph.initializer:
        if t.doc_string.startswith("gpu_pack:"):
            key = t.doc_string.split(":", 1)[1]
            a = w[key].astype(np.float32)
            scale = "s" + key[1:]
            if scale in w.files:
                a = (a.reshape(a.shape[0], -1) * w[scale]).reshape(a.shape)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    onnx.save(m, model)


if __name__ == "__main__":
    verb, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    pack(a, b) if verb == "pack" else unpack(a, b)
