#!/usr/bin/env python3
"""Runs an ONNX model in OpenVINO (CPU) beside ONNX Runtime on the same rows and prints the
agreement as JSON: top-1 agreement, mean and minimum cosine, max absolute difference, each
runtime's single-row P50, and what OpenVINO made of the graph: its executed layers by
runtime precision (int8 layers are how OpenVINO's low-precision transformations read a QDQ
model).

    openvino_check.py --onnx m.onnx --data eval.npz [--data more.npz] [--rows 1000]
"""
import argparse
import collections
import json
import time

import numpy as np
import onnxruntime as ort
import openvino as ov


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--latency-runs", type=int, default=200)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    data = {}
    for path in a.data:
        d = np.load(path)
        for k in names:
            data[k] = np.concatenate([data[k], d[k]]) if k in data else d[k]
    n = min(len(data[names[0]]), a.rows)

    core = ov.Core()
    model = core.read_model(a.onnx)
    model.reshape({k: [1] + list(data[k].shape[1:]) for k in names})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    precisions = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        t = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        p = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        if t in ("Parameter", "Result", "Const"):
            continue
        precisions[f"{t}:{p}"] += 1

    agree, cos, maxabs = [], [], 0.0
    for r in range(n):
        feed = {k: data[k][r : r + 1].astype(np.float32) for k in names}
        o_ref = sess.run(None, feed)[0].reshape(-1)
        o = np.asarray(req.infer(feed)[compiled.outputs[0]]).reshape(-1)
        agree.append(int(np.argmax(o) == np.argmax(o_ref)))
        cos.append(float(np.dot(o, o_ref) / ((np.linalg.norm(o) * np.linalg.norm(o_ref)) or 1.0)))
        maxabs = max(maxabs, float(np.max(np.abs(o - o_ref))))

    feed = {k: data[k][0:1].astype(np.float32) for k in names}
    t_ort, t_ov = [], []
    for runner, times in ((lambda: sess.run(None, feed), t_ort), (lambda: req.infer(feed), t_ov)):
        for _ in range(20):
            runner()
        for _ in range(a.latency_runs):
            t0 = time.perf_counter()
            runner()
            times.append(time.perf_counter() - t0)
    int8 = sum(v for k, v in precisions.items() if k.lower().endswith((":i8", ":u8")) and not k.startswith(("Reorder", "Const")))
    print(json.dumps({
        "rows": n,
        "openvino": ov.get_version(),
        "top1_agreement": float(np.mean(agree)),
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "max_abs_diff": maxabs,
        "onnxruntime_p50_ms": float(np.median(t_ort) * 1e3),
        "openvino_p50_ms": float(np.median(t_ov) * 1e3),
        "int8_layers": int8,
        "layers": dict(sorted(precisions.items())),
    }))


if __name__ == "__main__":
    main()
