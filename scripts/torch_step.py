"""PyTorch's training step on the same graph Tamp trains: runs `graph.json` + `weights.npz`
(written by `tamp-train-bench --export`) as a torch module, op by op, and times forward +
backward + AdamW update at the same batch, thread count and loss. Debian's python3-torch
(CPU build) runs it: `/usr/bin/python3 scripts/torch_step.py DIR DATA.npz --batch 64`;
`--device cuda` runs it on the GPU (the lent H200's PyTorch; scripts/gpu_bench.sh).
Prints one JSON line."""
import argparse, json, sys, time

import numpy as np
import torch
import torch.nn.functional as F


def run_graph(g, params, consts, feeds, train=True):
    env = dict(feeds)
    env.update(params)
    env.update(consts)
    for n in g["nodes"]:
        op, a = n["op"], n["attrs"]
        x = [env[i] if i else None for i in n["inputs"]]
        def ints(t):
            return [int(v) for v in (t.tolist() if torch.is_tensor(t) else t)]
        if op == "Constant":
            y = consts[a["value"]["tensor"]]
        elif op in ("Identity", "Dropout"):
            y = x[0]
        elif op == "Add": y = x[0] + x[1]
        elif op == "Sub": y = x[0] - x[1]
        elif op == "Mul": y = x[0] * x[1]
        elif op == "Div": y = x[0] / x[1] if x[0].is_floating_point() else torch.div(x[0], x[1], rounding_mode="trunc")
        elif op == "Pow": y = x[0] ** float(x[1])
        elif op == "Sqrt": y = torch.sqrt(x[0])
        elif op == "Erf": y = torch.erf(x[0])
        elif op == "Tanh": y = torch.tanh(x[0])
        elif op == "Relu": y = F.relu(x[0])
        elif op == "Sigmoid": y = torch.sigmoid(x[0])
        elif op == "Max": y = torch.maximum(x[0], x[1])
        elif op == "Min": y = torch.minimum(x[0], x[1])
        elif op == "Clip": y = torch.clamp(x[0], float(x[1]) if len(x) > 1 and x[1] is not None else None, float(x[2]) if len(x) > 2 and x[2] is not None else None)
        elif op == "Softmax": y = torch.softmax(x[0], dim=a.get("axis", -1))
        elif op == "MatMul": y = torch.matmul(x[0], x[1])
        elif op == "Gemm":
            A = x[0].t() if a.get("transA", 0) else x[0]
            B = x[1].t() if a.get("transB", 0) else x[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(x) > 2 and x[2] is not None: y = y + a.get("beta", 1.0) * x[2]
        elif op == "Conv":
            p = a.get("pads", [0, 0, 0, 0])
            y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=a.get("strides", [1, 1]), padding=(p[0], p[1]), dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))
        elif op == "BatchNormalization":
            y = F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=train, momentum=1 - a.get("momentum", 0.9), eps=a.get("epsilon", 1e-5))
        elif op == "LayerNormalization":
            axis = a.get("axis", -1)
            shape = x[0].shape[axis:]
            y = F.layer_norm(x[0], shape, x[1], x[2] if len(x) > 2 else None, eps=a.get("epsilon", 1e-5))
        elif op == "GlobalAveragePool": y = x[0].mean(dim=(2, 3), keepdim=True)
        elif op == "Flatten": y = torch.flatten(x[0], a.get("axis", 1))
        elif op == "Reshape":
            shape = ints(x[1])
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            y = x[0].reshape(shape)
        elif op == "Transpose": y = x[0].permute(a["perm"])
        elif op == "Unsqueeze":
            y = x[0]
            for ax in sorted(ints(x[1]) if len(x) > 1 else a["axes"]): y = y.unsqueeze(ax)
        elif op == "Squeeze":
            y = x[0]
            for ax in sorted(ints(x[1]) if len(x) > 1 else a["axes"], reverse=True): y = y.squeeze(ax)
        elif op in ("ReduceSum", "ReduceMean", "ReduceL2", "ReduceMax"):
            axes = ints(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
            keep = bool(a.get("keepdims", 1))
            if op == "ReduceSum": y = x[0].sum(dim=axes, keepdim=keep)
            elif op == "ReduceMean": y = x[0].mean(dim=axes, keepdim=keep)
            elif op == "ReduceL2": y = torch.sqrt((x[0] ** 2).sum(dim=axes, keepdim=keep))
            else: y = x[0].amax(dim=axes, keepdim=keep)
        elif op == "Shape": y = torch.tensor(list(x[0].shape), dtype=torch.int64, device=x[0].device)
        elif op == "Gather":
            idx = x[1].long()
            y = torch.index_select(x[0], a.get("axis", 0), idx.reshape(-1)).reshape(list(x[0].shape[:a.get("axis", 0)]) + list(idx.shape) + list(x[0].shape[a.get("axis", 0) + 1:]))
        elif op == "Range": y = torch.arange(int(x[0]), int(x[1]), int(x[2]), device=x[0].device)
        elif op == "Cast": y = x[0].float() if a["to"] in (1, 10, 11) else (x[0] != 0 if a["to"] == 9 else x[0].long())
        elif op == "Equal": y = x[0] == x[1]
        elif op == "Where": y = torch.where(x[0], x[1], x[2])
        elif op == "Expand": y = x[0].expand(torch.broadcast_shapes(x[0].shape, tuple(ints(x[1]))))
        elif op == "Concat": y = torch.cat([t for t in x if t is not None], dim=a.get("axis", 0))
        elif op == "Slice":
            y = x[0]
            st, en = ints(x[1]), ints(x[2])
            axes = ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(st)))
            for s, e, ax in zip(st, en, axes):
                y = y.narrow(ax, s, min(e, y.shape[ax]) - s)
        else:
            sys.exit(f"op {op} not in this interpreter")
        for name, v in zip(n["outputs"], [y]):
            env[name] = v
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("graph_dir")
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    g = json.load(open(f"{args.graph_dir}/graph.json"))
    w = np.load(f"{args.graph_dir}/weights.npz")
    # Trainable: float initializers with more than one element that are not BN statistics
    # (the same rule Tamp's graph module uses).
    stats = {i for n in g["nodes"] if n["op"] == "BatchNormalization" for i in n["inputs"][3:5]}
    params, consts = {}, {}
    for k in w.files:
        t = torch.from_numpy(np.array(w[k])).to(dev)
        if t.is_floating_point() and t.numel() > 1 and k not in stats and not k.startswith("__attr"):
            params[k] = torch.nn.Parameter(t.clone())
        else:
            consts[k] = t.clone()
    opt = torch.optim.AdamW(params.values(), lr=1e-4, weight_decay=1e-4)
    data = np.load(args.data)
    rows = np.arange(args.batch)
    feeds = {k: torch.from_numpy(np.array(data[k][rows])).to(dev) for k in g["inputs"]}
    if "attention_mask" in feeds:
        # Tamp trims a batch to its longest row; so does this.
        n = int(feeds["attention_mask"].sum(1).max())
        feeds = {k: v[:, :n] for k, v in feeds.items()}
    out = g["outputs"][-1]
    labels = torch.from_numpy(np.array(data["labels"][rows])).to(dev) if "labels" in data.files and not args.teacher else None
    teacher = {k: v.detach().clone() for k, v in params.items()}

    def step():
        y = run_graph(g, params, consts, feeds)[out]
        if args.teacher:
            with torch.no_grad():
                t = run_graph(g, teacher, consts, feeds, train=False)[out]
            loss = 1 - F.cosine_similarity(y.flatten(1), t.flatten(1), dim=1).mean()
        else:
            loss = F.cross_entropy(y, labels.long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    per = (time.perf_counter() - t0) / args.steps
    print(json.dumps({"torch": torch.__version__, "device": args.device, "threads": args.threads, "batch": args.batch, "steps": args.steps, "seconds_per_step": per}))


if __name__ == "__main__":
    main()
