"""`make bench-search`: Tamp's mixed-precision search beside Tamp's own single-recipe results
(`ptq_8bit`, `ptq_accuracy_first`, 4-bit weights) on the reference models, in one run.

For each model: each single recipe through `tamp compress`, then `tamp search` with its
default budget (40 trials, 10 minutes). Every number is a full-evaluation-set measurement
from the same protocol (`tamp compress`'s judge: the whole eval set, P50 over single-row
runs on 1 thread). A search point *beats* a single-recipe result when it is at least as good
on every axis and better on one: metric not lower, size at most 1 % larger, P50 at most 5 %
slower (the spread of repeated P50s of near-identical files on one machine: equal within it),
and strictly better on one (metric higher, size ≥ 1 % smaller, or P50 ≥ 5 % faster). Where
only the two separate P50s stand in the way, the two files are timed head to head
(`tamp eval P --against S`: interleaved in one process) and P is not slower when its median
speed-up is at least 1/1.05. Each
point's interleaved speed-up over fp32 is printed with its 95 % interval. Then how the front grows with trials (from
the journal), and the proxy's rank correlation."""
import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SINGLES = [
    ("ptq_8bit", (ROOT / "configs/policy_examples/ptq_8bit.yaml").read_text()),
    ("ptq_accuracy_first", (ROOT / "configs/policy_examples/ptq_accuracy_first.yaml").read_text()),
    ("4-bit weights", "policy:\n  name: w4\n  stages:\n    - ptq: {bits: {weights: [4]}}\n"),
]
MODELS = {
    "fmnist-resnet8": [],
    "efficientnet-lite0": [],
    "all-minilm-l6-v2": ["--rows", "128"],
}
TOL = 0.05


def point(c: dict) -> dict:
    return {"id": c["id"], "metric": c["measured"]["value"], "p50": c["measured"]["latency_ms_p50"], "size": c["measured"]["size_bytes"],
            "drop": c["metric_drop_pct"], "ratio": c["compression_ratio"], "speedup": c["speedup_p50"], "interval": c.get("speedup_interval"),
            "bits": c["weights_bits"], "float": len(c["float_nodes"])}


def chosen(out: Path) -> dict:
    o = json.loads((out / "candidates.json").read_text())
    return point(next(c for c in o["candidates"] if c["id"] == o["chosen"])), o


def speed(p: dict) -> str:
    i = p["interval"]
    return f"{p['speedup']:.2f}x [{i[0]:.2f}, {i[1]:.2f}]" if i else f"{p['speedup']:.2f}x"


def slower(p: dict, s: dict) -> bool:
    """P50 worse beyond the run-to-run spread of near-identical int8 files here (5 %). The
    judge's interleaved speed-up intervals are printed too, but they are narrower than that
    spread (ResNet-8's int8 points: 1.20x [1.17, 1.21] and 1.27x [1.26, 1.28] for files one
    calibration apart), so they do not decide."""
    return p["p50"] > s["p50"] * (1 + TOL)


def head_to_head(tamp: str, p_file: Path, s_file: Path, data: Path, env: dict) -> float | None:
    """`tamp eval P --against S`: P's speed-up over S, timed interleaved in one process (15
    rounds, 1 thread), the median; None when the run failed."""
    r = subprocess.run([tamp, "eval", str(p_file), "--data", str(data), "--against", str(s_file), "--threads", "1", "--runs", "200", "--json"],
                       capture_output=True, text=True, env=env)
    return json.loads(r.stdout)["speedup"] if r.returncode == 0 else None


def beats(p: dict, s: dict, h2h=None) -> bool:
    """Beats on the separate full-set measurements; where only the separate P50s stand in the
    way (P beyond 5 % slower), `h2h(p, s)` times the two files head to head and P counts as
    not slower when its median speed-up over S is at least 1/1.05."""
    if p["metric"] < s["metric"] or p["size"] > s["size"] * 1.01:
        return False
    if slower(p, s):
        if h2h is None:
            return False
        up = h2h(p, s)
        p["h2h"] = {**p.get("h2h", {}), s["id"]: up}
        if up is None or up < 1 / (1 + TOL):
            return False
        return p["metric"] > s["metric"] or p["size"] < s["size"] * 0.99
    return p["metric"] > s["metric"] or p["size"] < s["size"] * 0.99 or slower(s, p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--search-args", default="", help="extra `tamp search` flags, e.g. '--strategy nsga2 --trials 80'")
    args = ap.parse_args()
    report = {}
    for model, extra in MODELS.items():
        if args.only and model not in args.only.split(","):
            continue
        d = Path(args.models) / model
        data = ["--data", str(d / "calib.npz"), "--eval", str(d / "eval.npz")]
        with tempfile.TemporaryDirectory() as tmp:
            # A fresh cache: every P50 and speed verdict is measured in this run.
            env = dict(os.environ, TAMP_CACHE_DIR=f"{tmp}/cache")
            singles = {}
            for label, text in SINGLES:
                recipe = Path(tmp) / "r.yaml"
                recipe.write_text(text)
                r = subprocess.run([args.tamp, "compress", str(d / "model.onnx"), "--recipe", str(recipe), *data, "--out", f"{tmp}/{label}", "--no-analysis"],
                                   capture_output=True, text=True, env=env)
                if r.returncode != 0:
                    print(f"{model} {label}: FAILED {r.stderr.strip().splitlines()[-1][:100]}")
                    continue
                singles[label], _ = chosen(Path(tmp) / label)
            start = time.monotonic()
            r = subprocess.run([args.tamp, "search", str(d / "model.onnx"), *data, "--out", f"{tmp}/search", "--no-analysis", *extra, *args.search_args.split()],
                               capture_output=True, text=True, env=env)
            wall = time.monotonic() - start
            if r.returncode != 0:
                print(f"{model} search: FAILED {r.stderr.strip()[-400:]}")
                continue
            _, o = chosen(Path(tmp) / "search")
            points = [point(c) for c in o["candidates"]]
            base = o["baseline"]
            front = json.loads((Path(tmp) / "search/search/front.json").read_text())
            journal = [json.loads(x) for x in (Path(tmp) / "search/search/journal.jsonl").read_text().splitlines()[1:]]
            files = {**{s["id"]: Path(tmp) / label / "candidates" / f"{s['id']}.onnx" for label, s in singles.items()},
                     **{p["id"]: Path(tmp) / "search" / "candidates" / f"{p['id']}.onnx" for p in points}}
            h2h = lambda p, s: head_to_head(args.tamp, files[p["id"]], files[s["id"]], d / "eval.npz", env)  # noqa: E731
            beaten = {label: [p["id"] for p in points if beats(p, s, h2h)] for label, s in singles.items()}
        print(f"\n## {model}: baseline {base['metric']} {base['value']:.4f}, P50 {base['latency_ms_p50']:.3f} ms, {base['size_bytes']/1e6:.2f} MB;"
              f" search wall {wall:.0f} s ({front['trials']} trials, {front['probes']} probes)")
        print(f"{'point':34} {'metric':>9} {'P50 ms':>8} {'speed-up [95 % interval]':>24} {'size MB':>8} {'ratio':>6}  beaten by")
        rows = []
        for label, s in singles.items():
            by = beaten[label]
            ties = [f"{p['id']} {p['h2h'][s['id']]:.2f}x" for p in points if p.get("h2h", {}).get(s["id"]) is not None]
            print(f"{label:34} {s['metric']:9.4f} {s['p50']:8.3f} {speed(s):>24} {s['size']/1e6:8.3f} {s['ratio']:6.2f}  {', '.join(by) or 'NONE'}"
                  + (f"  (head to head: {', '.join(ties)})" if ties else ""))
            rows.append({"single": label, **s, "beaten_by": by})
        for p in points:
            mark = "*" if p["id"] == o["chosen"] else " "
            name = "{} (int{}, {} float)".format(p["id"], p["bits"], p["float"])
            print(f"{mark}{name:33} {p['metric']:9.4f} {p['p50']:8.3f} {speed(p):>24} {p['size']/1e6:8.3f} {p['ratio']:6.2f}")
        # The front's growth: after k trials, the smallest size and the lowest P50 among points
        # within the default 1 % drop.
        trials = [j for j in journal if j["kind"] == "trial" and j.get("pruned") is None]
        print("front with trials (subset metric, drop ≤ 1 %): trials → smallest MB, fastest P50 ms")
        marks = sorted({k for k in (1, 2, 5, 10, 20, 30, 40, len(trials)) if k <= len(trials)})
        growth = []
        for k in marks:
            ok = [t for t in trials[:k] if t["drop_pct"] <= 1.0]
            if ok:
                g = (k, min(t["size_bytes"] for t in ok) / 1e6, min(t["latency_ms_p50"] for t in ok))
                growth.append(g)
                print(f"  {g[0]:3d} → {g[1]:.3f} MB, {g[2]:.3f} ms")
        print(f"proxy: {front['proxy']}")
        report[model] = {"wall_s": wall, "singles": rows, "points": points, "growth": growth, "proxy": front["proxy"]}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
