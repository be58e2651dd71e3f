#!/usr/bin/env python3
"""Reference evaluation with Python onnxruntime, for Tamp's agreement tests and benchmarks.

Runs MODEL on every row of DATA (an .npz in Tamp's dataset format) in batches, in file
order, and writes the chosen output (rows x features, float32) to --out as .npy, plus a
JSON line with top-1 accuracy when the dataset has integer labels.
"""
import argparse
import json
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--output", default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    data = np.load(a.data)
    names = [i.name for i in sess.get_inputs()]
    out_name = a.output or sess.get_outputs()[0].name
    rows = data[names[0]].shape[0]
    outs = []
    for start in range(0, rows, a.batch_size):
        feed = {n: data[n][start:start + a.batch_size] for n in names}
        y = sess.run([out_name], feed)[0]
        outs.append(y.reshape(y.shape[0], -1).astype(np.float32))
    y = np.concatenate(outs)
    np.save(a.out, y)
    result = {"rows": int(rows), "output": out_name}
    if "labels" in data.files and np.issubdtype(data["labels"].dtype, np.integer):
        result["top1"] = float(100.0 * np.mean(np.argmax(y, axis=1) == data["labels"]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
