"""`make check-identical`: run every `tamp compress` case of `make bench-compress` and every
`tamp quantize` variant of `make bench-ptq` with fixed inputs and seeds, and write one line per
artifact: the sha256 of each model file, and the sha256 of each JSON record with the fields
that are measurements of this machine's clock removed (latencies, throughput, wall times, the
CPU description, the creation time). Two builds that write the same file are byte-identical
in every artifact; `diff` the two files to see which differ. The normalized JSON is kept next
to the digest list (`<out>.d/`) so that a difference can be read, not only seen.

Sensitivity curves are recomputed (a fresh cache folder per run), so the check covers them too.
"""
import argparse
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys_path = str(Path(__file__).parent)
import sys  # noqa: E402

sys.path.insert(0, sys_path)
from bench_compress import CASES  # noqa: E402

# Fields whose values come from the clock or the machine, not from the artifact: any key
# naming a latency, a throughput, a speed-up or a duration, and the machine and time stamps.
VOLATILE_PARTS = ("latency", "throughput", "speedup", "faster", "seconds", "elapsed", "rss")
VOLATILE = {"created_unix", "cpu"}
# Flags that come from timing ("not faster than the baseline ...").
TIMING_FLAG = "not faster than the baseline"

QUANTIZE = {
    "fmnist-resnet8": [["--method", "minmax"], ["--method", "percentile"], ["--method", "entropy"], ["--method", "minmax", "--no-bias-correction"],
                       ["--method", "percentile", "--cle"]],
    "efficientnet-lite0": [["--method", "percentile"]],
    "all-minilm-l6-v2": [["--dynamic"], ["--weights4"]],
}


def scrub(v, models=None):
    """The JSON without clock-dependent values, with paths under the models folder relative."""
    if isinstance(v, dict):
        # A manifest's hash of a JSON record hashes its timings too; the record is compared itself.
        record = str(v.get("path", "")).endswith(".json")
        return {
            k: scrub(x, models)
            for k, x in v.items()
            if k not in VOLATILE and not any(p in k for p in VOLATILE_PARTS) and not (record and k in ("sha256", "size_bytes"))
        }
    if isinstance(v, list):
        return [scrub(x, models) for x in v if not (isinstance(x, str) and x.startswith(TIMING_FLAG))]
    if isinstance(v, str) and models and v.startswith(models):
        return "<models>" + v[len(models):]
    return v


def digest_tree(tag, out, lines, keep, models):
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = f.relative_to(out)
        if f.suffix == ".json":
            body = json.dumps(scrub(json.loads(f.read_text()), models), indent=1, sort_keys=True).encode()
            (keep / f"{tag}__{str(rel).replace('/', '__')}").write_bytes(body)
        else:
            body = f.read_bytes()
        lines.append(f"{tag}/{rel} {hashlib.sha256(body).hexdigest()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tamp", required=True)
    ap.add_argument("--models", default=str(ROOT / "models"))
    ap.add_argument("--out", required=True, help="digest list to write; normalized JSON goes to <out>.d/")
    a = ap.parse_args()
    keep = Path(a.out + ".d")
    keep.mkdir(parents=True, exist_ok=True)
    lines = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TAMP_CACHE_DIR=cache, HOME=cache)
        for model, cases in CASES.items():
            d = Path(a.models) / model
            for label, recipe in cases:
                tag = f"{model}-compress-{Path(recipe).stem}"
                with tempfile.TemporaryDirectory() as tmp:
                    subprocess.run([a.tamp, "compress", str(d / "model.onnx"), "--recipe", str(ROOT / recipe), "--data", str(d / "calib.npz"),
                                    "--eval", str(d / "eval.npz"), "--out", f"{tmp}/out"], check=True, capture_output=True, env=env)
                    digest_tree(tag, Path(tmp) / "out", lines, keep, a.models)
                print(tag, flush=True)
        for model, variants in QUANTIZE.items():
            d = Path(a.models) / model
            for args in variants:
                tag = f"{model}-quantize{''.join(args).replace('--', '-')}"
                data = [] if args[0] in ("--dynamic", "--weights4") else ["--data", str(d / "calib.npz")]
                with tempfile.TemporaryDirectory() as tmp:
                    subprocess.run([a.tamp, "quantize", *args, str(d / "model.onnx"), *data, "--out", f"{tmp}/q.onnx"], check=True, capture_output=True, env=env)
                    digest_tree(tag, Path(tmp), lines, keep, a.models)
                print(tag, flush=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} artifacts -> {a.out}")


if __name__ == "__main__":
    main()
