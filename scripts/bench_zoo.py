#!/usr/bin/env python3
"""Tamp on the real-model zoo (scripts/zoo/fetch.py builds models/zoo), beside ONNX Runtime's
own static quantizer.

    python3 scripts/bench_zoo.py --tamp PATH/tamp --zoo models/zoo [--only a,b] [--json out.json]

Per model, each in a subprocess with a timeout (a failing step never stops the bench):
  tamp inspect M; tamp eval M --data eval.npz --output OUT --metric METRIC;
  tamp quantize M --data calib.npz --out q.onnx (static); tamp quantize M --dynamic --out qd.onnx;
  tamp compress M --recipe configs/policy_examples/ptq_8bit.yaml ... and --recipe configs/zoo/prune_channels.yaml.
Status per step: ok / refused (non-zero exit; the last stderr line is kept: it should be ONE line
naming what and why) / CRASH (panic, traceback, signal, or a refusal with no message) / TIMEOUT.
Every .onnx produced is checked with onnx.checker and run in Python onnxruntime on one eval row.

The anchor: onnxruntime.quantization (quant_pre_process(skip_symbolic_shape=True), then
quantize_static, QDQ, per-channel int8 weights, uint8 activations, the calib rows as the
CalibrationDataReader) with MinMax, Percentile and (where cheap) Entropy, each in its own
subprocess (wall time and peak RSS separable). The scored metric (cosine, top-1 agreement, or
mean absolute error for a one-value output, with the fp32 labels in eval.npz) is measured in Python for fp32, Tamp's static int8 (best of
MinMax, Percentile and Percentile after cross-layer equalization) and ORT's best method; P50 latency at batch 1 (1 thread) with interleaved rounds; the ratios are the
median over rounds with a 95% interval over rounds.

Without --tamp (or when the binary is missing) the Tamp columns are skipped.
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "zoo"))
from fetch import output_row, row_feed  # noqa: E402

PTQ_RECIPE = ROOT / "configs/policy_examples/ptq_8bit.yaml"
PRUNE_RECIPE = ROOT / "configs/zoo/prune_channels.yaml"
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None

ORT_QUANT = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from fetch import row_feed
from onnxruntime.quantization import quantize_static, CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization.shape_inference import quant_pre_process
model, calib, entry_path, out, method, tmp = sys.argv[2:8]
entry = json.load(open(entry_path))
data = np.load(calib)
rows = int(entry["rows"])
class Reader(CalibrationDataReader):
    def __init__(self):
        self.i = 0
    def get_next(self):
        if self.i >= rows:
            return None
        feed = row_feed(entry, data, self.i)
        self.i += 1
        return feed
import onnx
src, pre, notes, per_channel = model, "ok", [], True
m = onnx.load(model)
opset = max([o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] or [0])
if 0 < opset < 13:  # per-channel DequantizeLinear needs opset 13
    try:
        from onnx import version_converter
        onnx.save(version_converter.convert_version(m, 13), tmp + ".op13.onnx")
        src = tmp + ".op13.onnx"
        notes.append(f"opset {opset}->13 (onnx.version_converter)")
    except Exception as e:
        per_channel = False
        notes.append(f"opset {opset}: version_converter failed ({type(e).__name__}), per-tensor weights")
del m
try:
    quant_pre_process(src, tmp, skip_symbolic_shape=True)
    src = tmp
except Exception as e:
    pre = "failed: " + (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
    print("quant_pre_process " + pre, file=sys.stderr)
extra = {"CalibMaxIntermediateOutputs": 8} if method == "Entropy" else {}
quantize_static(src, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
print(json.dumps({"pre_process": pre, "notes": notes, "per_channel": per_channel}))
'''


# ----------------------------------------------------------------------------------------
# subprocess steps

def run_step(cmd, timeout, cwd=None):
    """Run cmd with a timeout; wall time, peak RSS (MiB), status and the last stderr line."""
    with tempfile.TemporaryDirectory() as td:
        so, se, tf = Path(td, "out"), Path(td, "err"), Path(td, "time")
        full = ([TIME, "-v", "-o", str(tf)] + cmd) if TIME else cmd
        start = time.perf_counter()
        with open(so, "wb") as fo, open(se, "wb") as fe:
            try:
                p = subprocess.Popen(full, stdout=fo, stderr=fe, cwd=cwd, start_new_session=True)
            except OSError as e:
                return {"status": "CRASH", "rc": None, "message": f"could not start: {e}", "wall_s": 0.0, "rss_mib": None}
            timed_out, rss = False, None
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - start > timeout:
                    timed_out = True
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    pid, status, usage = os.wait4(p.pid, 0)
                    break
                time.sleep(0.02)
        wall = time.perf_counter() - start
        rc = os.waitstatus_to_exitcode(status)
        rss = usage.ru_maxrss / 1024
        signalled = rc < 0
        if TIME and tf.exists():
            t = tf.read_text(errors="replace")
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", t)
            if m:
                rss = int(m.group(1)) / 1024
            m = re.search(r"Command terminated by signal (\d+)", t)
            if m:
                signalled, rc = True, -int(m.group(1))
            m = re.search(r"Exit status: (\d+)", t)
            if m and not signalled:
                rc = int(m.group(1))
        out = so.read_text(errors="replace")
        err = se.read_text(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    r = {"rc": rc, "wall_s": round(wall, 3), "rss_mib": round(rss, 1) if rss else None, "stdout_tail": out[-4000:],
         "stderr_lines": len(lines), "message": last[:400]}
    crashy = re.search(r"panicked at|Traceback \(most recent call last\)|stack backtrace|RUST_BACKTRACE|Segmentation fault|core dumped", err)
    if timed_out:
        r["status"] = "TIMEOUT"
        r["message"] = f"killed after {timeout}s"
    elif rc == 0:
        r["status"] = "ok"
    elif signalled or rc == 101 or crashy or not last:
        r["status"] = "CRASH"
        r["stderr_tail"] = err[-3000:]
        if crashy and "panicked at" in err:
            i = err.index("panicked at")
            r["message"] = " ".join(err[i:].splitlines()[:2])[:400]
        if not last:
            r["message"] = f"exit {rc} with no message"
    else:
        r["status"] = "refused"
        # The error proper: the lines after the last progress line, when it is one line.
        err_lines = [ln for ln in lines if re.match(r"\s*(error|Error|tamp:)", ln)]
        r["error_lines"] = len(err_lines)
        if len(err_lines) > 1:
            r["multiline_error"] = True
            r["stderr_tail"] = err[-2000:]
    return r


def short(step):
    if step is None:
        return "-"
    return {"ok": "ok", "refused": "ref", "CRASH": "CRASH", "TIMEOUT": "T/O", "skipped": "-"}.get(step["status"], step["status"])


# ----------------------------------------------------------------------------------------
# Python-side checks and metrics

def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_onnx(path, entry, data):
    """onnx.checker plus one eval row through onnxruntime."""
    import onnx
    r = {"path": str(path), "size_bytes": Path(path).stat().st_size}
    try:
        onnx.checker.check_model(str(path))
        r["checker"] = "ok"
    except Exception as e:
        r["checker"] = "FAIL: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    try:
        s = session(path)
        names = {i.name for i in s.get_inputs()}
        feed = {k: v for k, v in row_feed(entry, data, 0).items() if k in names}
        s.run(None, feed)
        r["ort_run"] = "ok"
    except Exception as e:
        r["ort_run"] = "FAIL: " + (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    r["ok"] = r["checker"] == "ok" and r["ort_run"] == "ok"
    return r


ROW_VALUES = {}  # path -> per-row metric values, for paired intervals


def score(metric, v):
    """A metric value turned so that larger is better (mae is an error)."""
    return -v if metric == "mae" else v


def metric_of(path, entry, data):
    """The scored metric on eval.npz: top-1 agreement (%), mean per-row cosine with labels, or
    mean absolute error (an output with one value per row, whose cosine would be ±1).
    Every row of eval.npz is scored (an entry's `eval_rows` may exceed its `rows`). The per-row
    values kept for paired intervals are scores (larger is better: mae's rows negated)."""
    s = session(path)
    labels = data["labels"]
    rows = len(labels)
    names = {i.name for i in s.get_inputs()}
    vals = []
    for i in range(rows):
        feed = {k: v for k, v in row_feed(entry, data, i).items() if k in names}
        y = output_row(entry, s.run([entry["output"]], feed)[0])
        if entry["metric"] == "top1":
            vals.append(float(int(np.argmax(y)) == int(labels[i])))
        elif entry["metric"] == "mae":
            vals.append(float(np.mean(np.abs(y.astype(np.float64) - labels[i].astype(np.float64)))))
        else:
            ref = labels[i].astype(np.float64)
            y = y.astype(np.float64)
            den = np.linalg.norm(y) * np.linalg.norm(ref)
            vals.append(float(y @ ref / den) if den > 0 else float(np.allclose(y, ref)))
    scale = {"top1": 100.0, "mae": -1.0}.get(entry["metric"], 1.0)
    ROW_VALUES[str(path)] = np.array(vals) * scale
    m = float(np.mean(vals))
    return round(100 * m, 2) if entry["metric"] == "top1" else round(m, 5)


def paired_difference(a, b):
    """Mean of per-row a - b with a 95 % interval (normal approximation over rows)."""
    va, vb = ROW_VALUES.get(str(a)), ROW_VALUES.get(str(b))
    if va is None or vb is None or len(va) != len(vb) or len(va) < 2:
        return None
    d = va - vb
    half = 1.96 * float(np.std(d, ddof=1)) / np.sqrt(len(d))
    return {"mean": float(np.mean(d)), "lo95": float(np.mean(d)) - half, "hi95": float(np.mean(d)) + half, "rows": len(d)}


def latency(paths, entry, data, rounds, per_round, budget_s):
    """Interleaved batch-1 latency: each round runs every model per_round times (in a rotating
    order); per-round medians give the ratios. Returns P50 per model and ratio stats."""
    sess = {k: session(p) for k, p in paths.items()}
    feeds = {}
    for k, s in sess.items():
        names = {i.name for i in s.get_inputs()}
        feeds[k] = {n: v for n, v in row_feed(entry, data, 0).items() if n in names}
    est = {}
    for k, s in sess.items():  # warm-up and a cost estimate
        t = []
        for _ in range(3):
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            t.append(time.perf_counter() - t0)
        est[k] = min(t)
    per_round = int(max(2, min(per_round, budget_s / max(1e-6, rounds * sum(est.values())))))
    times = {k: [] for k in sess}
    keys = list(sess)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        rt = {k: [] for k in keys}
        for _ in range(per_round):
            for k in order:
                t0 = time.perf_counter()
                sess[k].run(None, feeds[k])
                rt[k].append(time.perf_counter() - t0)
        for k in keys:
            times[k].append(float(np.median(rt[k])))
    res = {"rounds": rounds, "per_round": per_round, "p50_ms": {k: round(1000 * float(np.median(v)), 4) for k, v in times.items()}}

    def ratio(a, b):
        if a not in times or b not in times:
            return None
        x = np.array(times[a]) / np.array(times[b])
        return {"median": round(float(np.median(x)), 3), "lo95": round(float(np.percentile(x, 2.5)), 3),
                "hi95": round(float(np.percentile(x, 97.5)), 3)}
    res["tamp_vs_fp32"] = ratio("tamp", "fp32")
    res["tamp_vs_ort"] = ratio("tamp", "ort")
    res["ort_vs_fp32"] = ratio("ort", "fp32")
    return res


def cpu_isa():
    try:
        flags = set()
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("flags"):
                flags |= set(ln.split(":", 1)[1].split())
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
        return model, isa
    except OSError:
        return platform.processor(), []


# ----------------------------------------------------------------------------------------

def bench_model(d, entry, a, work):
    name = entry["name"]
    model, calib, evalp = d / "model.onnx", d / "calib.npz", d / "eval.npz"
    data = np.load(evalp)
    rows, out_name, metric = int(entry["rows"]), entry["output"], entry["metric"]
    res = {"name": name, "opset": entry["opset"], "exporter": entry["exporter"], "domain": entry["domain"],
           "row_model": entry["row_model"], "metric": metric, "output": out_name, "steps": {}, "outputs_checked": {}}
    w = work / name
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)

    # fp32 reference
    try:
        res["fp32_metric"] = metric_of(model, entry, data)
    except Exception as e:
        res["fp32_metric"] = None
        res["fp32_error"] = str(e).splitlines()[0][:300] if str(e) else type(e).__name__

    # Tamp steps
    if a.tamp:
        T = a.timeout

        def static_cmd(out, *extra):
            return [a.tamp, "quantize", str(model), "--data", str(calib), "--out", str(out), "--samples", str(rows), *extra]

        steps = {
            "inspect": [a.tamp, "inspect", str(model)],
            "eval": [a.tamp, "eval", str(model), "--data", str(evalp), "--output", out_name, "--metric", metric, "--json", "--threads", "1"],
            "quantize_static": static_cmd(w / "q.onnx"),
            "quantize_dynamic": [a.tamp, "quantize", str(model), "--dynamic", "--out", str(w / "qd.onnx")],
            "compress_ptq": [a.tamp, "compress", str(model), "--recipe", str(PTQ_RECIPE), "--data", str(calib), "--eval", str(evalp),
                             "--output", out_name, "--metric", metric, "--samples", str(rows), "--runs", "50", "--out", str(w / "ptq")],
            "compress_prune": [a.tamp, "compress", str(model), "--recipe", str(PRUNE_RECIPE), "--data", str(calib), "--eval", str(evalp),
                               "--output", out_name, "--metric", metric, "--samples", str(rows), "--runs", "50", "--out", str(w / "prune")],
        }
        for k, cmd in steps.items():
            if k in a.skip.split(","):
                res["steps"][k] = {"status": "skipped", "cmd": " ".join(cmd)}
                continue
            res["steps"][k] = r = run_step(cmd, T, cwd=str(ROOT))
            r["cmd"] = " ".join(cmd)
            if not entry["row_model"] and k in ("eval", "quantize_static", "compress_ptq", "compress_prune"):
                r["expected"] = "refusal allowed (row_model false)"
            if k == "eval" and r["status"] == "ok":
                try:
                    r["metric_value"] = json.loads(r["stdout_tail"])["metrics"][metric]
                except Exception:
                    pass
        produced = [w / "q.onnx", w / "qd.onnx"] + sorted((w / "ptq").rglob("*.onnx")) + sorted((w / "prune").rglob("*.onnx"))
        for p in produced:
            if p.exists():
                res["outputs_checked"][str(p.relative_to(w))] = check_onnx(p, entry, data)
        # Tamp's static int8 with its other calibrations, as ORT's side tries three methods:
        # the default (MinMax, q.onnx), Percentile, Percentile after cross-layer equalization,
        # and auto (the method whose scored output stays closest to fp32 on held-out calibration
        # rows, chosen without eval data); the best metric is Tamp's column (its method printed beside it).
        tamp_methods = {"MinMax": (w / "q.onnx", res["steps"].get("quantize_static"))}
        if res["steps"].get("quantize_static", {}).get("status") == "ok":
            for label, extra in (("Percentile", ["--method", "percentile"]), ("Perc+CLE", ["--method", "percentile", "--cle"]), ("Auto", ["--method", "auto", "--output", out_name])):
                out = w / f"q-{label.lower().replace('+', '-')}.onnx"
                cmd = static_cmd(out, *extra)
                r = run_step(cmd, T, cwd=str(ROOT))
                r["cmd"] = " ".join(cmd)
                res["steps"][f"quantize_static_{label}"] = r
                if out.exists():
                    res["outputs_checked"][out.name] = check_onnx(out, entry, data)
                tamp_methods[label] = (out, r)
        res["tamp_methods"] = {}
        for label, (path, step) in tamp_methods.items():
            if path.exists() and res["outputs_checked"].get(path.name, {}).get("ort_run") == "ok":
                try:
                    res["tamp_methods"][label] = {"metric": metric_of(path, entry, data), "wall_s": (step or {}).get("wall_s"),
                                                  "rss_mib": (step or {}).get("rss_mib"), "file": path.name}
                except Exception as e:
                    res["tamp_int8_error"] = str(e).splitlines()[0][:300]
        if res["tamp_methods"]:
            best = max(res["tamp_methods"], key=lambda k: score(metric, res["tamp_methods"][k]["metric"]))
            res["tamp_best"] = {"method": best, **res["tamp_methods"][best]}
            res["tamp_int8_metric"] = res["tamp_best"]["metric"]

    # ORT anchor
    res["ort"] = {}
    if not a.no_ort:
        methods = ["MinMax", "Percentile"]
        per_row = sum(int(np.prod(data[k].shape[1:])) * data[k].dtype.itemsize for k in entry["inputs"])
        if not a.no_entropy and model.stat().st_size < 16 << 20 and per_row < (2 << 20):
            methods.append("Entropy")
        for m in methods:
            out = w / f"ort-{m.lower()}.onnx"
            r = run_step([sys.executable, "-c", ORT_QUANT, str(ROOT / "scripts" / "zoo"), str(model), str(calib), str(d / "entry.json"),
                          str(out), m, str(w / f"pre-{m.lower()}.onnx")], a.timeout)
            for ln in r.get("stdout_tail", "").splitlines():
                if ln.startswith("{"):
                    r.update(json.loads(ln))
            r.pop("stdout_tail", None)
            if r["status"] != "ok":
                r["status"] = "failed" if r["status"] in ("CRASH", "refused") else r["status"]
                r["message"] = r["message"] or "(no message)"
            if r["status"] == "ok" and out.exists():
                r["check"] = check_onnx(out, entry, data)
                if r["check"]["ort_run"] == "ok":
                    try:
                        r["metric_value"] = metric_of(out, entry, data)
                    except Exception as e:
                        r["metric_error"] = str(e).splitlines()[0][:300]
            res["ort"][m] = r
        scored = [(m, r["metric_value"]) for m, r in res["ort"].items() if r.get("metric_value") is not None]
        if scored:
            best = max(scored, key=lambda t: score(metric, t[1]))
            res["ort_best"] = {"method": best[0], "metric": best[1], "wall_s": res["ort"][best[0]]["wall_s"], "rss_mib": res["ort"][best[0]]["rss_mib"]}

    if res.get("tamp_best") and res.get("ort_best"):
        res["tamp_minus_ort"] = paired_difference(w / res["tamp_best"]["file"], w / f"ort-{res['ort_best']['method'].lower()}.onnx")

    # latency
    paths = {"fp32": model}
    if res.get("tamp_int8_metric") is not None:
        paths["tamp"] = w / res["tamp_best"]["file"]
    if res.get("ort_best"):
        paths["ort"] = w / f"ort-{res['ort_best']['method'].lower()}.onnx"
    if len(paths) > 1 and not a.no_latency:
        try:
            res["latency"] = latency(paths, entry, data, a.rounds, a.per_round, a.latency_budget)
        except Exception as e:
            res["latency_error"] = str(e).splitlines()[0][:300]
    if not a.keep:
        shutil.rmtree(w, ignore_errors=True)
    return res


def fmt_ratio(r):
    return "-" if not r else f"{r['median']:.2f} [{r['lo95']:.2f},{r['hi95']:.2f}]"


def fmt_metric(v, metric):
    if v is None:
        return "-"
    return f"{v:.2f}" if metric == "top1" else f"{v:.4f}"


def row_line(r):
    st = r["steps"]
    status = "/".join(short(st.get(k)) for k in ("inspect", "eval", "quantize_static", "quantize_dynamic", "compress_ptq", "compress_prune"))
    lat = r.get("latency") or {}
    qs = r.get("tamp_best") or st.get("quantize_static") or {}
    ob = r.get("ort_best") or {}
    qtime = f"{qs.get('wall_s', 0):.1f}/{ob.get('wall_s', 0):.1f}" if (qs or ob) else "-"
    qrss = f"{qs.get('rss_mib') or 0:.0f}/{ob.get('rss_mib') or 0:.0f}" if (qs or ob) else "-"
    ortm = f"{fmt_metric(ob.get('metric'), r['metric'])} {ob.get('method', '')[:4]}" if ob else "-"
    tb = r.get("tamp_best") or {}
    tampm = f"{fmt_metric(tb.get('metric'), r['metric'])} {tb.get('method', '')[:8]}" if tb else fmt_metric(r.get("tamp_int8_metric"), r["metric"])
    dq = r.get("tamp_minus_ort")
    diff = "-" if not dq else (f"{dq['mean']:+.2f} [{dq['lo95']:+.2f},{dq['hi95']:+.2f}]" if r["metric"] == "top1"
                               else f"{dq['mean']:+.4f} [{dq['lo95']:+.4f},{dq['hi95']:+.4f}]")
    cells = [r["name"] + ("" if r["row_model"] else "*"), str(r["opset"]), r["exporter"].split(" ")[0][:11], status, r["metric"][:3],
             fmt_metric(r.get("fp32_metric"), r["metric"]), tampm, ortm, diff,
             fmt_ratio(lat.get("tamp_vs_fp32")), fmt_ratio(lat.get("tamp_vs_ort")), fmt_ratio(lat.get("ort_vs_fp32")), qtime, qrss]
    return cells


HEAD = ["model", "opset", "exporter", "insp/eval/qS/qD/cPTQ/cPrune", "met", "fp32", "tamp int8", "ORT best", "tamp-ORT [95%, paired rows]",
        "tamp/fp32 P50", "tamp/ORT P50", "ORT/fp32 P50", "quant s tamp/ORT", "RSS MiB tamp/ORT"]
WIDTHS = [16, 5, 11, 30, 4, 8, 16, 12, 28, 18, 18, 18, 16, 16]


def print_row(cells):
    print(" ".join(str(c).ljust(w) for c, w in zip(cells, WIDTHS)), flush=True)


def main():
    ap = argparse.ArgumentParser(description="Tamp on the real-model zoo beside onnxruntime.quantization")
    ap.add_argument("--tamp", help="the tamp binary (Tamp columns are skipped without it)")
    ap.add_argument("--zoo", default=str(ROOT / "models/zoo"))
    ap.add_argument("--only", default="")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per subprocess step")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--latency-budget", type=float, default=60.0, help="seconds of timed runs per model (fewer runs per round for slow models)")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime's quantizer")
    ap.add_argument("--no-entropy", action="store_true", help="ONNX Runtime's MinMax and Percentile only (Entropy is its slowest calibrator)")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--skip", default="", help="Tamp steps not to run, comma-separated (e.g. compress_prune, the slowest: a re-measure of PTQ alone)")
    ap.add_argument("--keep", help="keep the produced models under this folder (default: a temporary folder, removed)")
    a = ap.parse_args()
    if a.tamp and not (Path(a.tamp).is_file() and os.access(a.tamp, os.X_OK)):
        print(f"note: tamp binary {a.tamp} not found: Tamp columns skipped", file=sys.stderr)
        a.tamp = None
    elif a.tamp:
        a.tamp = str(Path(a.tamp).resolve())
    zoo = Path(a.zoo)
    corpus = json.loads((ROOT / "scripts/zoo/corpus.json").read_text())
    names = [e["name"] for e in corpus["models"]]
    if a.only:
        want = [x.strip() for x in a.only.split(",") if x.strip()]
        names = [n for n in names if n in want]
    model_name, isa = cpu_isa()
    import onnxruntime
    print(f"zoo {zoo}; tamp {a.tamp or '(none)'}; onnxruntime {onnxruntime.__version__}; 1 thread; CPU {model_name} [{', '.join(isa) or 'no avx2'}]")
    print("status codes: ok / ref = refused (one-line message) / CRASH / T/O; * = row_model false (inputs with no batch axis, rows on an axis of their own: a one-line refusal of eval, static quantize or compress is allowed)")
    print("tamp-ORT: per-row paired difference of scores, + = tamp better (mae rows negated)")
    print("latency ratios: median over rounds [95% interval over rounds], batch 1; quant s / RSS: tamp quantize (static) vs ORT's best method (subprocess)\n")
    print_row(HEAD)
    print("-" * (sum(WIDTHS) + len(WIDTHS)))
    results = []
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_zoo_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        for n in names:
            d = zoo / n
            if not (d / "entry.json").exists():
                print_row([n, "-", "-", f"missing (run scripts/zoo/fetch.py)"])
                results.append({"name": n, "missing": True})
                continue
            entry = json.loads((d / "entry.json").read_text())
            try:
                r = bench_model(d, entry, a, work)
            except Exception as e:  # the bench itself must go on
                r = {"name": n, "opset": entry.get("opset"), "exporter": entry.get("exporter", ""), "row_model": entry.get("row_model", True),
                     "metric": entry.get("metric", ""), "steps": {}, "bench_error": f"{type(e).__name__}: {e}"}
            results.append(r)
            print_row(row_line(r))
            for k, s in r.get("steps", {}).items():
                if s["status"] not in ("ok", "skipped"):
                    tag = " (allowed)" if s.get("expected") and s["status"] == "refused" else ""
                    ml = " [MULTI-LINE ERROR]" if s.get("multiline_error") else ""
                    print(f"    {k}: {s['status']}{tag}{ml}: {s['message'][:200]}")
            for k, c in r.get("outputs_checked", {}).items():
                if not c["ok"]:
                    print(f"    produced {k}: checker {c['checker'][:120]}; ort {c['ort_run'][:120]}")
            for m, s in r.get("ort", {}).items():
                if s["status"] != "ok":
                    print(f"    ORT {m}: {s['status']}: {s['message'][:200]}")
                elif s.get("check") and not s["check"]["ok"]:
                    print(f"    ORT {m}: produced model invalid: checker {s['check']['checker'][:100]}; ort {s['check']['ort_run'][:100]}")
                elif s.get("metric_error"):
                    print(f"    ORT {m}: metric failed: {s['metric_error'][:200]}")
            if r.get("bench_error"):
                print(f"    bench error: {r['bench_error'][:300]}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    done = [r for r in results if not r.get("missing")]
    n = len(done)
    q_ok = sum(1 for r in done if any((r["steps"].get(k) or {}).get("status") == "ok" for k in ("quantize_static", "quantize_dynamic")))
    crashes = [(r["name"], k) for r in done for k, s in r.get("steps", {}).items() if s["status"] in ("CRASH", "TIMEOUT")]
    multi = [(r["name"], k) for r in done for k, s in r.get("steps", {}).items() if s.get("multiline_error")]
    bad_out = [(r["name"], k) for r in done for k, c in r.get("outputs_checked", {}).items() if not c["ok"]]
    ort_ok = sum(1 for r in done if r.get("ort_best"))
    print()
    if a.tamp:
        print(f"summary: tamp quantizes {q_ok}/{n} models (static or dynamic); crashes/timeouts: {len(crashes)}"
              + (f" ({', '.join(f'{m}:{k}' for m, k in crashes)})" if crashes else "")
              + f"; multi-line refusals: {len(multi)}; invalid produced models: {len(bad_out)}"
              + (f" ({', '.join(f'{m}:{k}' for m, k in bad_out)})" if bad_out else "")
              + f"; ORT static quantizes {ort_ok}/{n}; CPU ISA: {', '.join(isa) or 'none of avx2/avx512f/avx512_vnni/amx_int8'}")
        both = [r for r in done if r.get("tamp_best") and r.get("ort_best")]
        at_or_above = [r["name"] for r in both if score(r["metric"], r["tamp_best"]["metric"]) >= score(r["metric"], r["ort_best"]["metric"])]
        below = [r for r in both if score(r["metric"], r["tamp_best"]["metric"]) < score(r["metric"], r["ort_best"]["metric"])]
        noise = [r["name"] for r in below if (r.get("tamp_minus_ort") or {}).get("hi95", -1) >= 0]
        print(f"quality: tamp int8 >= ORT's best on {len(at_or_above)}/{len(both)} models where both run"
              + (f"; below on {', '.join(r['name'] for r in below)}" if below else "")
              + (f" ({', '.join(noise)} inside the paired 95 % interval of 0)" if noise else ""))
        timed = [r for r in done if ((r.get("latency") or {}).get("tamp_vs_ort") or {}).get("median") is not None]
        ratio = lambda r, k: r["latency"][k]
        faster = [r["name"] for r in timed if ratio(r, "tamp_vs_ort")["hi95"] < 1.0]
        tied = [r["name"] for r in timed if ratio(r, "tamp_vs_ort")["lo95"] <= 1.0 <= ratio(r, "tamp_vs_ort")["hi95"]]
        slower = [r["name"] for r in timed if ratio(r, "tamp_vs_ort")["lo95"] > 1.0]
        print(f"speed (tamp int8 / ORT int8 P50, batch 1): faster on {len(faster)}/{len(timed)} (95 % interval below 1)"
              + (f"; tied on {', '.join(tied)}" if tied else "") + (f"; slower on {', '.join(slower)}" if slower else ""))
    else:
        print(f"summary: tamp not run; ORT static quantizes {ort_ok}/{n}; CPU ISA: {', '.join(isa) or 'none of avx2/avx512f/avx512_vnni/amx_int8'}")
    if a.json:
        Path(a.json).write_text(json.dumps({"tamp": a.tamp, "zoo": str(zoo), "cpu": model_name, "isa": isa,
                                            "onnxruntime": onnxruntime.__version__, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
