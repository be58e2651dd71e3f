#!/usr/bin/env python3
"""`make bench-eval`: Tamp's evaluation throughput beside Python onnxruntime's, same model,
same data, same batch size and thread count, in one run. Prints a table; exits non-zero
only if a run fails (speed is reported, never asserted).

Rows measured:
  python-ort raw   session.run over every batch, nothing else (the floor)
  python-ort eval  the same plus the numpy metric (top-1, or cosine for float labels)
  tamp eval        `tamp eval` metric pass (batching, inference, metrics), from its report
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort


def python_pass(model, data, threads, batch, with_metric):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    arrays = {n: data[n] for n in names}
    labels = data["labels"] if "labels" in data.files else None
    rows = arrays[names[0]].shape[0]
    out_name = sess.get_outputs()[0].name
    # One warm-up batch, as tamp's session has already run nothing either: both pay first-run costs.
    start = time.perf_counter()
    correct = 0
    for s in range(0, rows, batch):
        y = sess.run([out_name], {n: a[s:s + batch] for n, a in arrays.items()})[0]
        if with_metric and labels is not None:
            y = y.reshape(y.shape[0], -1)
            ref = labels[s:s + batch]
            if np.issubdtype(ref.dtype, np.integer):  # top-1
                correct += int(np.sum(np.argmax(y, axis=1) == ref))
            else:  # cosine to reference outputs
                ref = ref.reshape(ref.shape[0], -1)
                correct += float(np.sum((y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))))
    return rows / (time.perf_counter() - start)


def tamp_pass(tamp, model, data_path, threads, batch):
    out = subprocess.run(
        [tamp, "eval", model, "--data", data_path, "--json", "--threads", str(threads), "--batch-size", str(batch),
         "--runs", "1", "--warmup", "0", "--throughput", ""],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["eval_rows_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__} (python) vs tamp; batch {a.batch_size}; best of {a.repeats}; rows/s\n")
    header = f"{'model':<28}{'threads':>8}{'python-ort raw':>16}{'python-ort eval':>17}{'tamp eval':>12}{'tamp vs raw':>13}"
    print(header)
    print("-" * len(header))
    for model, data_path in zip(a.model, a.data):
        data = np.load(data_path)
        for t in a.threads:
            raw = max(python_pass(model, data, t, a.batch_size, False) for _ in range(a.repeats))
            ev = max(python_pass(model, data, t, a.batch_size, True) for _ in range(a.repeats))
            tp = max(tamp_pass(a.tamp, model, data_path, t, a.batch_size) for _ in range(a.repeats))
            overhead = raw / tp - 1.0
            name = model.split("/")[-2] if "/" in model else model
            print(f"{name:<28}{t:>8}{raw:>16.0f}{ev:>17.0f}{tp:>12.0f}{overhead:>+12.1%}")
    print("\n'tamp vs raw' is Tamp's extra time per row over bare session.run (negative: Tamp is faster).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
