#!/usr/bin/env python3
"""Checks a model the way users' tools will: `onnx.checker` (full check), loading in Python
onnxruntime, and the op types in ONNX Runtime's optimized graph (to see integer kernels).
Prints one JSON object; exits non-zero if the checker or the load fails."""
import collections
import json
import sys
import tempfile

import onnx
import onnxruntime as ort


def main():
    path = sys.argv[1]
    onnx.checker.check_model(onnx.load(path), full_check=True)
    with tempfile.TemporaryDirectory() as d:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = f"{d}/optimized.onnx"
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(opts.optimized_model_filepath)
    ops = collections.Counter(n.op_type for n in optimized.graph.node)
    print(json.dumps({"checker": "ok", "optimized_ops": dict(sorted(ops.items()))}))


if __name__ == "__main__":
    main()
