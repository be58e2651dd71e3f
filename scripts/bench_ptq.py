#!/usr/bin/env python3
"""`make bench-ptq`: Tamp's static int8 PTQ beside ONNX Runtime's `quantize_static` (QDQ,
per-channel int8 weights, uint8 activations, same calibration rows), for each method, on
each CNN reference model, in one table: metric, P50/P95 latency (batch 1), P50 latency of a
batch of 32 and its ratio to fp32's (all measured by `tamp eval` on the same machine, same
thread count), size, wall
time to quantize and peak RSS of the quantizing process. Speed is reported, never asserted.
ORT's run includes its recommended `quant_pre_process` (BN folding etc.), timed with it.
"""
import argparse
from pathlib import Path
import json
import os
import subprocess
import sys
import tempfile
import time

from isa_quality import cpu  # the CPU and the x86 ISA ONNX Runtime dispatches its int8 kernels for

ORT_SCRIPT = r'''
import sys, numpy as np
from onnxruntime.quantization import quantize_static, CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization.shape_inference import quant_pre_process
model, calib, out, method, tmp = sys.argv[1:6]
data = np.load(calib)
names = [k for k in data.files if k not in ("labels", "cohort")]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i, self.n = 0, data[names[0]].shape[0]
    def get_next(self):
        if self.i >= self.n:
            return None
        feed = {k: data[k][self.i:self.i + 1] for k in names}
        self.i += 1
        return feed
quant_pre_process(model, tmp, skip_symbolic_shape=True)
quantize_static(tmp, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method))
'''


ORT_DYNAMIC = r'''
import sys
from onnxruntime.quantization import quantize_dynamic, QuantType
model, out, per_channel = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=per_channel)
'''


def timed(cmd):
    """(seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    err = p.stderr.read().decode()
    if status != 0:
        raise SystemExit(f"{cmd[0]} failed: {err[-2000:]}")
    return secs, usage.ru_maxrss / 1024


def evaluate(tamp, model, data, metric, threads):
    out = subprocess.run([tamp, "eval", model, "--data", data, "--json", "--metric", metric, "--threads", str(threads),
                          "--runs", "100", "--throughput", "32"], check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    return r["metrics"][metric], r["latency"]["p50_ms"], r["latency"]["p95_ms"], r["throughput"][0]["batch_p50_ms"], r["model"]["size_bytes"]


def predictions(model, data):
    """Top-1 class of every eval row (Python onnxruntime, one thread)."""
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    d = np.load(data)
    names = [i.name for i in sess.get_inputs()]
    n = d[names[0]].shape[0]
    return np.concatenate([sess.run(None, {k: d[k][i:i + 256] for k in names})[0].argmax(-1) for i in range(0, n, 256)]), d["labels"]


def paired(ours, theirs, data):
    """Rows only Tamp's model gets right, rows only the other gets right, and the exact
    two-sided McNemar p-value of that split (is the difference more than chance?)."""
    from math import comb
    (a, labels), (b, _) = predictions(ours, data), predictions(theirs, data)
    x, y = int(((a == labels) & (b != labels)).sum()), int(((a != labels) & (b == labels)).sum())
    n = x + y
    p = min(1.0, 2 * sum(comb(n, k) for k in range(min(x, y) + 1)) / 2 ** n) if n else 1.0
    return x, y, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--model-dir", action="append", required=True)
    ap.add_argument("--transformer-dir", action="append", default=[],
                    help="a transformer (reference outputs as labels): dynamic int8, Tamp vs quantize_dynamic")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nncf-python", help="a Python with nncf (make nncf): adds NNCF's rows")
    ap.add_argument("--images-wheel", help="scikit-image wheel: adds Tamp's peak-RSS rows at 256 and 2,048 EfficientNet calibration samples")
    a = ap.parse_args()
    methods = [("minmax", "MinMax"), ("entropy", "Entropy"), ("percentile", "Percentile")]
    header = f"{'model':<20}{'quantizer':<22}{'top1':>8}{'P50 ms':>9}{'P95 ms':>9}{'b32 P50':>9}{'vs fp32':>8}{'size':>10}{'quant s':>9}{'RSS MiB':>9}"
    cpu_name, isa = cpu()
    print(f"CPU: {cpu_name}; ONNX Runtime's int8 kernels here: {isa} (Tamp quantizes for it: `--target-isa auto`;"
          f" without VNNI its weights are uint8 for the U8U8 kernels, which do not saturate)")
    print(f"threads {a.threads}; calibration = every row of calib.npz; metric on eval.npz\n")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for d in a.model_dir:
            name = d.rstrip("/").split("/")[-1]
            model, calib, data = f"{d}/model.onnx", f"{d}/calib.npz", f"{d}/eval.npz"
            rows = int(subprocess.run([sys.executable, "-c", f"import numpy as np; d=np.load('{calib}'); print(d[[k for k in d.files if k!='labels'][0]].shape[0])"],
                                      check=True, capture_output=True, text=True).stdout)
            m, p50, p95, tp, size = evaluate(a.tamp, model, data, "top1", a.threads)
            base = tp
            print(f"{name:<20}{'fp32':<22}{m:>8.2f}{p50:>9.3f}{p95:>9.3f}{tp:>9.3f}{1:>7.2f}x{size / 2**20:>9.2f}M{'':>9}{'':>9}")
            for ours, theirs in methods:
                for who in ("tamp", "onnxruntime"):
                    out = f"{tmp}/{name}-{who}-{ours}.onnx"
                    if who == "tamp":
                        cmd = [a.tamp, "quantize", model, "--data", calib, "--out", out, "--method", ours, "--samples", str(rows)]
                    else:
                        cmd = [sys.executable, "-c", ORT_SCRIPT, model, calib, out, theirs, f"{tmp}/pre.onnx"]
                    secs, rss = timed(cmd)
                    m, p50, p95, tp, size = evaluate(a.tamp, out, data, "top1", a.threads)
                    print(f"{'':<20}{who + ' ' + ours:<22}{m:>8.2f}{p50:>9.3f}{p95:>9.3f}{tp:>9.3f}{tp / base:>7.2f}x{size / 2**20:>9.2f}M{secs:>9.2f}{rss:>9.0f}")
                    if who == "onnxruntime":
                        x, y, p = paired(f"{tmp}/{name}-tamp-{ours}.onnx", out, data)
                        print(f"{'':<20}{'':<22}paired: {x} rows only Tamp's right, {y} only ORT's (McNemar p = {p:.2f})")
            extra = [("tamp minmax, no BC", [a.tamp, "quantize", model, "--data", calib, "--method", "minmax", "--samples", str(rows), "--no-bias-correction"]),
                     ("tamp percentile+CLE", [a.tamp, "quantize", model, "--data", calib, "--method", "percentile", "--samples", str(rows), "--cle"])]
            if a.nncf_python:
                extra.append(("nncf default", [a.nncf_python, str(Path(__file__).parent / "nncf_quantize.py"), model, calib]))
            for who, base_cmd in extra:
                out = f"{tmp}/{name}-{who.replace(' ', '-')}.onnx"
                cmd = base_cmd + ["--out", out] if who.startswith("tamp") else base_cmd + [out]
                secs, rss = timed(cmd)
                m, p50, p95, tp, size = evaluate(a.tamp, out, data, "top1", a.threads)
                print(f"{'':<20}{who:<22}{m:>8.2f}{p50:>9.3f}{p95:>9.3f}{tp:>9.3f}{tp / base:>7.2f}x{size / 2**20:>9.2f}M{secs:>9.2f}{rss:>9.0f}")
        effnet = next((d for d in a.model_dir if "efficientnet" in d), None)
        if a.images_wheel and effnet:
            big = f"{tmp}/calib-2048.npz"
            subprocess.run([sys.executable, str(Path(__file__).parent / "efficientnet_views.py"), "--images-wheel", a.images_wheel,
                            "--rows", "2048", "--out", big], check=True)
            print(f"\n{'efficientnet-lite0':<20}{'calibration samples':<22}{'top1':>8}{'':>9}{'':>9}{'':>9}{'':>8}{'size':>10}{'quant s':>9}{'RSS MiB':>9}")
            for method in ("percentile", "entropy"):
                for n in (256, 2048):
                    out = f"{tmp}/effnet-{method}-{n}.onnx"
                    secs, rss = timed([a.tamp, "quantize", f"{effnet}/model.onnx", "--data", big, "--out", out, "--method", method, "--samples", str(n)])
                    m, _, _, _, size = evaluate(a.tamp, out, f"{effnet}/eval.npz", "top1", a.threads)
                    print(f"{'':<20}{f'tamp {method} {n}':<22}{m:>8.2f}{'':>9}{'':>9}{'':>9}{'':>8}{size / 2**20:>9.2f}M{secs:>9.2f}{rss:>9.0f}")
                    os.remove(out)
            os.remove(big)
        for d in a.transformer_dir:
            name = d.rstrip("/").split("/")[-1]
            model, data = f"{d}/model.onnx", f"{d}/eval.npz"
            m, p50, p95, tp, size = evaluate(a.tamp, model, data, "cosine", a.threads)
            base = tp
            print(f"{name:<20}{'fp32':<22}{m:>8.4f}{p50:>9.3f}{p95:>9.3f}{tp:>9.2f}{1:>7.2f}x{size / 2**20:>9.2f}M{'':>9}{'':>9}")
            for who, cmd_of in (("tamp dynamic", lambda out: [a.tamp, "quantize", "--dynamic", model, "--out", out]),
                                ("tamp 4-bit weights", lambda out: [a.tamp, "quantize", "--weights4", model, "--out", out]),
                                ("onnxruntime dynamic", lambda out: [sys.executable, "-c", ORT_DYNAMIC, model, out, "0"]),
                                ("ort dynamic per-ch", lambda out: [sys.executable, "-c", ORT_DYNAMIC, model, out, "1"]),
                                *((("nncf transformer", lambda out: [a.nncf_python, str(Path(__file__).parent / "nncf_quantize.py"), model, f"{d}/calib.npz", out, "--transformer"]),) if a.nncf_python else ())):
                out = f"{tmp}/{name}-{who.replace(' ', '-')}.onnx"
                secs, rss = timed(cmd_of(out))
                m, p50, p95, tp, size = evaluate(a.tamp, out, data, "cosine", a.threads)
                print(f"{'':<20}{who:<22}{m:>8.4f}{p50:>9.3f}{p95:>9.3f}{tp:>9.2f}{tp / base:>7.2f}x{size / 2**20:>9.2f}M{secs:>9.2f}{rss:>9.0f}")
    print("\nmetric: top1 for CNNs (fmnist = accuracy on the labelled test set; efficientnet = agreement with fp32 top-1);")
    print("cosine to the fp32 sentence embeddings for transformers.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
