#!/usr/bin/env python3
"""Runs a .tflite in LiteRT beside its ONNX source in ONNX Runtime on the same rows, and
prints the agreement as JSON: top-1 agreement (classifiers), mean and minimum cosine, max
absolute difference, and each runtime's single-row P50 latency (measured apart, after warm-up).

    tflite_check.py --onnx m.onnx --tflite m.tflite --data eval.npz [--data more.npz] [--rows 1000]
    tflite_check.py --onnx m.onnx --tflite m.tflite --random input=1,3,16,16 --rows 20

4-D inputs are fed NCHW to ONNX Runtime and NHWC to LiteRT (Tamp's TFLite layout). Rows run
one at a time (the exported model has batch 1).
"""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--tflite", required=True)
    ap.add_argument("--data", action="append", default=[], help="npz with arrays named after the inputs (repeatable: rows are appended)")
    ap.add_argument("--random", action="append", default=[], metavar="NAME=D0,D1,..", help="seeded N(0,1) rows instead of --data")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=200, help="timed single-row runs per runtime, after 20 warm-up runs")
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    interp = Interpreter(model_path=a.tflite, num_threads=a.threads)
    interp.allocate_tensors()
    t_in = {d["name"]: d for d in interp.get_input_details()}
    t_out = interp.get_output_details()

    names = [i.name for i in sess.get_inputs()]
    data = {}
    for path in a.data:
        d = np.load(path)
        for k in names + (["labels"] if "labels" in d.files else []):
            data[k] = np.concatenate([data[k], d[k]]) if k in data else d[k]
    rng = np.random.default_rng(a.seed)
    for spec in a.random:
        k, dims = spec.split("=")
        dims = [int(x) for x in dims.split(",")]
        data[k] = rng.standard_normal([a.rows] + dims[1:]).astype(np.float32)
    n = min(len(data[names[0]]), a.rows)
    idx = np.random.default_rng(a.seed).permutation(len(data[names[0]]))[:n]

    labels = data.get("labels")
    agree, cos, maxabs, correct = [], [], 0.0, []
    for r in idx:
        feed = {k: data[k][r : r + 1].astype(np.float32) for k in names}
        o_ref = sess.run(None, feed)[0].reshape(-1)
        for k, v in feed.items():
            # Other converters rename inputs (onnx2tf: serving_default_…): then match by position.
            det = t_in[k] if k in t_in else list(t_in.values())[names.index(k)]
            x = v.transpose(0, 2, 3, 1) if v.ndim == 4 else v
            interp.set_tensor(det["index"], np.ascontiguousarray(x, dtype=det["dtype"]))
        interp.invoke()
        o = interp.get_tensor(t_out[0]["index"]).astype(np.float32).reshape(-1)
        agree.append(int(np.argmax(o) == np.argmax(o_ref)))
        if labels is not None:
            correct.append(int(np.argmax(o) == int(labels[r])))
        denom = float(np.linalg.norm(o) * np.linalg.norm(o_ref)) or 1.0
        cos.append(float(np.dot(o, o_ref)) / denom)
        maxabs = max(maxabs, float(np.max(np.abs(o - o_ref))))
    # Latency apart from the comparison loop: one row, warmed up, each runtime on its own.
    feed = {k: data[k][idx[0] : idx[0] + 1].astype(np.float32) for k in names}
    lite_feed = {k: np.ascontiguousarray(v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in feed.items()}
    def lite_once():
        for k, v in lite_feed.items():
            det = t_in[k] if k in t_in else list(t_in.values())[names.index(k)]
            interp.set_tensor(det["index"], v.astype(det["dtype"]))
        interp.invoke()
    for runner in (lambda: sess.run(None, feed), lite_once):
        for _ in range(20):
            runner()
    t_ort, t_lite = [], []
    for _ in range(a.latency_runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t_ort.append(time.perf_counter() - t0)
    for _ in range(a.latency_runs):
        t0 = time.perf_counter()
        lite_once()
        t_lite.append(time.perf_counter() - t0)
    print(json.dumps({
        "rows": int(n),
        "top1_agreement": float(np.mean(agree)),
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "max_abs_diff": maxabs,
        "onnxruntime_p50_ms": float(np.median(t_ort) * 1e3),
        "litert_p50_ms": float(np.median(t_lite) * 1e3),
        "tflite_bytes": len(open(a.tflite, "rb").read()),
        "top1_accuracy": float(np.mean(correct)) if correct else None,
    }))


if __name__ == "__main__":
    main()
