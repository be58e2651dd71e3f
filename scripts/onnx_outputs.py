#!/usr/bin/env python3
"""Writes an ONNX model's first output on rows of an .npz (Python onnxruntime, CPU) to an
.npz: the reference side of checks run under another interpreter (Debian's python3-torch
has no onnxruntime).

    onnx_outputs.py --onnx m.onnx --data eval.npz --rows 64 --out ref.npz
"""
import argparse

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    d = np.load(a.data)
    names = [i.name for i in sess.get_inputs()]
    feed = {k: d[k][: a.rows] for k in names}
    out = sess.run(None, feed)[0]
    np.savez(a.out, output=out, **feed)


if __name__ == "__main__":
    main()
