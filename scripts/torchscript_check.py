#!/usr/bin/env python3
"""Loads a TorchScript archive with `torch.jit.load` (Debian's CPU python3-torch), runs it on
the inputs an `onnx_outputs.py` file holds and prints, as JSON, how far its outputs are from
ONNX Runtime's there: max absolute difference, top-1 agreement.

    /usr/bin/python3 torchscript_check.py --pt m.pt --ref ref.npz --inputs input
"""
import argparse
import json

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pt", required=True)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--inputs", nargs="+", required=True)
    a = ap.parse_args()
    ref = np.load(a.ref)
    m = torch.jit.load(a.pt)
    m.eval()
    with torch.no_grad():
        out = m(*[torch.from_numpy(ref[k]) for k in a.inputs])
    out = out[0] if isinstance(out, tuple) else out
    out = out.numpy()
    exp = ref["output"]
    print(json.dumps({
        "torch": torch.__version__,
        "rows": int(exp.shape[0]),
        "max_abs_diff": float(np.max(np.abs(out - exp))),
        "top1_agreement": float(np.mean(np.argmax(out.reshape(len(out), -1), 1) == np.argmax(exp.reshape(len(exp), -1), 1))),
    }))


if __name__ == "__main__":
    main()
