"""`make bench-compress`: each reference model × technique through `tamp compress` (release
build, one run each), one table: size ratio (raw and deflate-coded), the task metric, P50
latency at batch 1 (1 thread), speed-up and the wall time of the pass itself (sensitivity
curves included for pruning; evaluation excluded). The passes alone: the examples'
`fine_tune` lines are dropped here (`make bench-train` measures training)."""
import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "fmnist-resnet8": [
        ("prune30", "configs/policy_examples/prune30.yaml"),
        ("unstructured 60%", "configs/policy_examples/sparse_unstructured.yaml"),
        ("2:4", "configs/policy_examples/sparse_2of4.yaml"),
        ("tucker50", "configs/policy_examples/tucker_cnn.yaml"),
        ("cluster16 → int8", "configs/policy_examples/cluster16.yaml"),
        ("int8 (ptq_8bit)", "configs/policy_examples/ptq_8bit.yaml"),
    ],
    "efficientnet-lite0": [
        ("cluster16 → int8", "configs/policy_examples/cluster16.yaml"),
    ],
    "all-minilm-l6-v2": [
        ("svd50 FFN → dynamic int8", "configs/policy_examples/lowrank_ffn.yaml"),
        ("FFN neurons 30% → dynamic int8", "configs/policy_examples/prune_ffn.yaml"),
        ("heads 25% → dynamic int8", "configs/policy_examples/prune_heads.yaml"),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--models", default=str(ROOT / "models"))
    args = ap.parse_args()
    rows = []
    for model, cases in CASES.items():
        d = Path(args.models) / model
        for label, recipe in cases:
            with tempfile.TemporaryDirectory() as tmp:
                text = (ROOT / recipe).read_text()
                alone = Path(tmp) / "recipe.yaml"
                alone.write_text("\n".join(line for line in text.splitlines() if not line.strip().startswith("fine_tune:")) + "\n")
                start = time.monotonic()
                r = subprocess.run([args.tamp, "compress", str(d / "model.onnx"), "--recipe", str(alone), "--data", str(d / "calib.npz"),
                                    "--eval", str(d / "eval.npz"), "--out", f"{tmp}/out"], capture_output=True, text=True)
                wall = time.monotonic() - start
                if r.returncode != 0:
                    rows.append((model, label, "FAILED", r.stderr.strip().splitlines()[-1][:80]))
                    continue
                out = json.loads((Path(tmp) / "out/candidates.json").read_text())
                base = out["baseline"]
                mmacs = lambda m: "-" if m.get("macs_per_sample") is None else f"{m['macs_per_sample'] / 1e6:.2f}"  # noqa: E731
                rows.append((model, "fp32 baseline", f"{base['metric']} {base['value']:.4f}", f"{base['latency_ms_p50']:.3f}", "1.00", "1.00", "1.00", mmacs(base), "-", f"{wall:.1f}"))
                for c in out["candidates"]:
                    m = c["measured"]
                    coded = base["size_bytes"] / max(c.get("coded_size_bytes") or m["size_bytes"], 1)
                    pass_s = c.get("details", {}).get("pass_seconds")
                    rows.append((model, f"{label}: {c['id']}", f"{m['value']:.4f}", f"{m['latency_ms_p50']:.3f}", f"{c['speedup_p50']:.2f}",
                                 f"{c['compression_ratio']:.2f}", f"{coded:.2f}", mmacs(m), "-" if pass_s is None else f"{pass_s:.2f}", ""))
    head = ("model", "technique / candidate", "metric", "P50 ms", "speed-up", "size ×", "coded ×", "MMACs", "pass s", "run s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
