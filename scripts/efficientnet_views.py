#!/usr/bin/env python3
"""More EfficientNet-Lite0 calibration rows: `--rows` seeded random views of the same
scikit-image photos the reference export uses (no labels; calibration needs none). Written
uncompressed with numpy.savez, the layout Tamp streams rows from. Used by `make bench-ptq`
to check that peak memory stays flat from 256 to 2,048 calibration samples. (Outside
scripts/refmodels/ so that changing it does not re-export the reference models.)
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "refmodels"))
from efficientnet_lite0 import photos, views  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images-wheel", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    np.savez(a.out, input=views(photos(a.images_wheel), a.rows, np.random.default_rng(a.seed)))


if __name__ == "__main__":
    main()
