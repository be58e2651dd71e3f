#!/usr/bin/env python3
"""make bench-export: Tamp's TFLite exporter beside onnx2tf (through TensorFlow's converter)
on the reference CNNs, in one run; and OpenVINO's CPU runtime on Tamp's ONNX artifacts
(fp32 and int8) beside ONNX Runtime.

For each model and precision (fp32; int8 from calibration): conversion wall time, file size,
LiteRT single-row P50 (1 thread), top-1 agreement with the fp32 ONNX model in ONNX Runtime,
and top-1 accuracy on the labels. Tamp's int8 is `tamp quantize` (Tamp's calibration, QDQ,
`--int8-everywhere`) then `tamp export`; onnx2tf's is its integer-quantized output (`-oiqt`, TensorFlow's
calibration on the same calibration rows, per-channel). Ratios are Tamp / onnx2tf.

    bench_export.py --tamp target/release/tamp --onnx2tf .venv-onnx2tf/bin/onnx2tf [--only NAME]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["fmnist-resnet8", "efficientnet-lite0"]


def timed(cmd, **kw):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return time.perf_counter() - t0


def check(onnx, tflite, data):
    args = [sys.executable, os.path.join(ROOT, "scripts/tflite_check.py"), "--onnx", onnx, "--tflite", tflite, "--rows", "1000"]
    for d in data:
        args += ["--data", d]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tflite_check failed: {r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--onnx2tf", required=True)
    ap.add_argument("--only")
    a = ap.parse_args()
    rows, ov_rows = [], []
    for name in MODELS:
        if a.only and a.only != name:
            continue
        d = os.path.join(ROOT, "models", name)
        model, calib, evals = os.path.join(d, "model.onnx"), os.path.join(d, "calib.npz"), [os.path.join(d, "eval.npz")]
        if name == "efficientnet-lite0":
            evals.append(calib)  # 64 + 64 real photos; labels are the fp32 model's own top-1
        with tempfile.TemporaryDirectory() as tmp:
            # Tamp
            t_fp32 = timed([a.tamp, "export", model, "--precision", "fp32", "--out", f"{tmp}/tamp_fp32.tflite"])
            # Every layer int8 (the default keeps layers float where ONNX Runtime's int8 kernel
            # is slower, a verdict about ONNX Runtime, not LiteRT).
            t_q = timed([a.tamp, "quantize", model, "--data", calib, "--int8-everywhere", "--out", f"{tmp}/tamp_int8.onnx"])
            t_e = timed([a.tamp, "export", f"{tmp}/tamp_int8.onnx", "--out", f"{tmp}/tamp_int8.tflite"])
            # onnx2tf: fp32, then int8 with TensorFlow's calibration on the same rows (NHWC .npy)
            x = np.load(calib)["input"].transpose(0, 2, 3, 1).astype(np.float32)
            np.save(f"{tmp}/calib.npy", x)
            # onnx2tf fetches 20 sample photos from GitHub for 3-channel inputs unless the file
            # is in its working directory: give it 20 of the calibration rows (no network).
            if x.shape[-1] == 3:
                ys = (np.arange(128) * x.shape[1] // 128)[:, None]
                xs = (np.arange(128) * x.shape[2] // 128)[None, :]
                np.save(f"{tmp}/calibration_image_sample_data_20x128x128x3_float32.npy", np.resize(x, (20,) + x.shape[1:])[:, ys, xs, :])
            o2 = f"{tmp}/o2tf"
            t_o_fp32 = timed([a.onnx2tf, "-i", model, "-o", o2, "-b", "1", "-n"], cwd=tmp)
            t_o_int8 = timed([a.onnx2tf, "-i", model, "-o", o2 + "q", "-b", "1", "-n", "-oiqt", "-qt", "per-channel",
                              "-cind", "input", f"{tmp}/calib.npy", "[0.0]", "[1.0]"], cwd=tmp)
            cases = [
                ("fp32", "tamp", f"{tmp}/tamp_fp32.tflite", t_fp32),
                ("fp32", "onnx2tf", f"{o2}/model_float32.tflite", t_o_fp32),
                ("int8", "tamp", f"{tmp}/tamp_int8.tflite", t_q + t_e),
                ("int8", "onnx2tf", f"{o2}q/model_integer_quant.tflite", t_o_int8),
            ]
            # OpenVINO reads the ONNX artifacts themselves (AF-005): its P50 beside ONNX Runtime's.
            for prec, onnx in (("fp32", model), ("int8", f"{tmp}/tamp_int8.onnx")):
                args = [sys.executable, os.path.join(ROOT, "scripts/openvino_check.py"), "--onnx", onnx, "--rows", "200"]
                for d in evals:
                    args += ["--data", d]
                r = subprocess.run(args, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"openvino_check failed: {r.stderr[-3000:]}")
                o = json.loads(r.stdout.strip().splitlines()[-1])
                ov_rows.append(dict(model=name, precision=prec, **o))
                print(f"  {name:20s} {prec:5s} openvino  P50 {o['openvino_p50_ms']:7.3f} ms (ONNX Runtime {o['onnxruntime_p50_ms']:.3f} ms, "
                      f"×{o['openvino_p50_ms']/o['onnxruntime_p50_ms']:.2f})  agree {o['top1_agreement']:.4f}  int8 layers {o['int8_layers']}", flush=True)
            for prec, tool, path, secs in cases:
                c = check(model, path, evals)
                rows.append(dict(model=name, precision=prec, tool=tool, seconds=secs, **c))
                print(f"  {name:20s} {prec:5s} {tool:8s} {secs:7.2f} s  {c['tflite_bytes']/1e6:7.2f} MB  "
                      f"LiteRT P50 {c['litert_p50_ms']:7.3f} ms (ONNX Runtime {c['onnxruntime_p50_ms']:.3f} ms)  agree(fp32 ONNX) {c['top1_agreement']:.4f}  "
                      f"acc {c['top1_accuracy'] if c['top1_accuracy'] is not None else float('nan'):.4f}", flush=True)
    print()
    print(f"{'model':20s} {'prec':5s} {'size ×':>8s} {'P50 ×':>8s} {'convert ×':>10s} {'agree Δ':>9s}   (Tamp / onnx2tf; agreement Tamp − onnx2tf)")
    for name in MODELS:
        for prec in ["fp32", "int8"]:
            t = [r for r in rows if r["model"] == name and r["precision"] == prec and r["tool"] == "tamp"]
            o = [r for r in rows if r["model"] == name and r["precision"] == prec and r["tool"] == "onnx2tf"]
            if not t or not o:
                continue
            t, o = t[0], o[0]
            print(f"{name:20s} {prec:5s} {t['tflite_bytes']/o['tflite_bytes']:8.3f} {t['litert_p50_ms']/o['litert_p50_ms']:8.3f} "
                  f"{t['seconds']/o['seconds']:10.3f} {t['top1_agreement']-o['top1_agreement']:+9.4f}")
    out = os.path.join(ROOT, "out", "bench-export.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"tflite": rows, "openvino": ov_rows}, f, indent=1)
    print(f"\n(rows: {out})")


if __name__ == "__main__":
    main()
