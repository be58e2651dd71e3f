#!/usr/bin/env python3
"""Quality and batch-1 speed of quantized artifacts on the CPU this runs on.

Issue 16 asks that int8 keep its quality on every x86 ISA ONNX Runtime dispatches for
(AVX2, AVX-512, AVX-512-VNNI, AMX). The artifacts are made once, by `tamp quantize
--target-isa ...`, and carried to each machine; this script needs only numpy and
onnxruntime, so it also runs where Tamp is not built (the lent GPU machine's Xeon).

    isa_quality.py --case NAME FP32.onnx QUANT.onnx EVAL.npz [--case ...] [--threads 1]

The metric follows `tamp eval`: integer labels -> top-1 (%), float labels (reference
outputs) -> mean cosine per row. Speed is the fp32/int8 ratio of batch-1 P50s, timed
interleaved (fp32 then int8, one row each, `--rounds` times over the same rows) so both see
the same machine state; the interval is the 5th-95th percentile of per-round ratios.
"""
import argparse
import platform
import sys
import time

import numpy as np
import onnxruntime as ort


def cpu():
    flags, name = set(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if line.startswith("model name") and name in ("", "x86_64"):
                    name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    if "amx_int8" in flags:
        isa = "amx"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        isa = "vnni"
    elif "avx512f" in flags:
        isa = "avx512"
    else:
        isa = "avx2"
    return name, isa


def session(path, threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def feeds(sess, data, rows):
    out = {}
    names = [k for k in data.files if k != "labels"]
    for i, inp in enumerate(sess.get_inputs()):
        key = inp.name if inp.name in names else names[i]
        x = data[key][rows]
        # Inputs carried as float16 (to fit a transfer) run as the float32 the model takes.
        out[inp.name] = x.astype(np.float32) if x.dtype == np.float16 else x
    return out


def metric(sess, data, batch):
    labels = data["labels"]
    n = labels.shape[0]
    score, count = 0.0, 0
    for s in range(0, n, batch):
        rows = slice(s, min(s + batch, n))
        y = sess.run(None, feeds(sess, data, rows))[0]
        y = y.reshape(y.shape[0], -1).astype(np.float64)
        ref = labels[rows]
        if np.issubdtype(ref.dtype, np.integer):
            score += float((y.argmax(1) == ref.reshape(-1)).sum())
        else:
            ref = ref.reshape(ref.shape[0], -1).astype(np.float64)
            num = (y * ref).sum(1)
            den = np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1)
            score += float(np.where(den > 0, num / np.where(den > 0, den, 1), 0).sum())
        count += y.shape[0]
    integer = np.issubdtype(labels.dtype, np.integer)
    return ("top1", 100.0 * score / count) if integer else ("cosine", score / count)


def speed(fp32, quant, data, rounds, warmup=5):
    one = feeds(fp32, data, slice(0, 1))
    oneq = feeds(quant, data, slice(0, 1))
    for _ in range(warmup):
        fp32.run(None, one)
        quant.run(None, oneq)
    a, b = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        fp32.run(None, one)
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        quant.run(None, oneq)
        b.append(time.perf_counter() - t)
    a, b = np.array(a), np.array(b)
    ratios = a / b
    return np.median(a) * 1e3, np.median(b) * 1e3, np.median(a) / np.median(b), np.percentile(ratios, [5, 95])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", nargs=4, action="append", required=True, metavar=("NAME", "FP32", "QUANT", "EVAL"),
                    help="FP32 may be - (then only the metric, against the labels)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--samples", type=int, default=0, help="score only the first N eval rows (0 = all)")
    a = ap.parse_args()
    name, isa = cpu()
    print(f"CPU: {name}; ONNX Runtime {ort.__version__} dispatches for: {isa}; threads {a.threads}")
    header = f"{'case':<34}{'metric':>8}{'fp32':>9}{'int8':>9}{'P50 fp32':>10}{'P50 int8':>10}{'speed-up':>10}{'5-95 %':>16}"
    print(header)
    print("-" * len(header))
    for case, f, q, e in a.case:
        data = np.load(e)
        if a.samples:
            data = {k: data[k][: a.samples] for k in data.files}

            class View(dict):
                files = list(data)

            data = View(data)
        qs = session(q, a.threads)
        kind, mq = metric(qs, data, a.batch)
        fmt = (lambda v: f"{v:>9.2f}") if kind == "top1" else (lambda v: f"{v:>9.4f}")
        if f == "-":  # no fp32 model at hand: the metric against the stored reference only
            print(f"{case:<34}{kind:>8}{'':>9}{fmt(mq)}")
            continue
        fs = session(f, a.threads)
        _, mf = metric(fs, data, a.batch)
        pf, pq, r, (lo, hi) = speed(fs, qs, data, a.rounds)
        print(f"{case:<34}{kind:>8}{fmt(mf)}{fmt(mq)}{pf:>9.3f}m{pq:>9.3f}m{r:>9.2f}x{f'[{lo:.2f}, {hi:.2f}]':>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
