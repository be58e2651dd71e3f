"""NNCF's post-training quantization of an ONNX model (`make bench-ptq` runs it in its own
venv, `.venv-nncf`): `nncf.quantize` with its defaults (MinMax-style statistics, the
performance preset, fast bias correction on), every row of calib.npz one at a time as in
the ONNX Runtime rows; `--transformer` sets `model_type=TRANSFORMER` (NNCF's SmoothQuant-
style handling of attention). usage: nncf_quantize.py model.onnx calib.npz out.onnx [--transformer]"""
import sys

import nncf
import numpy as np
import onnx


def main() -> int:
    model_path, calib, out = sys.argv[1:4]
    transformer = "--transformer" in sys.argv[4:]
    data = np.load(calib)
    names = [k for k in data.files if k not in ("labels", "cohort")]
    rows = data[names[0]].shape[0]
    items = [{k: data[k][i:i + 1] for k in names} for i in range(rows)]
    kwargs = {"subset_size": rows}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize(onnx.load(model_path), nncf.Dataset(items), **kwargs)
    onnx.save(q, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
