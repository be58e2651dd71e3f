"""PyTorch's own MiniLM training step, for the GPU comparison (scripts/gpu_bench.sh): the
all-MiniLM-L6-v2 architecture as Hugging Face's BertModel (6 layers, 384 wide, 12 heads,
FFN 1536; its fused attention), mean pooling and L2 normalisation as the sentence-transformers
model does, distilled to a frozen copy with 1 - cosine, AdamW, on the same token rows and
batch as `tamp-train-bench --teacher`. Weights are random (the step's cost does not depend
on them). Prints one JSON line.

    python3 scripts/torch_minilm_step.py train.npz --batch 64 --steps 20 --device cuda"""
import argparse, copy, json, time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.manual_seed(1)
    dev = torch.device(args.device)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = BertModel(cfg, add_pooling_layer=False).to(dev).train()
    teacher = copy.deepcopy(student).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=1e-4)
    data = np.load(args.data)
    rows = np.arange(args.batch)
    feeds = {k: torch.from_numpy(np.array(data[k][rows])).to(dev) for k in ("input_ids", "attention_mask", "token_type_ids") if k in data.files}
    n = int(feeds["attention_mask"].sum(1).max())
    feeds = {k: v[:, :n] for k, v in feeds.items()}
    mask = feeds["attention_mask"].unsqueeze(-1).float()

    def embed(m):
        h = m(**feeds).last_hidden_state
        return F.normalize((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)

    def step():
        y = embed(student)
        with torch.no_grad():
            t = embed(teacher)
        loss = 1 - F.cosine_similarity(y, t, dim=1).mean()
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
    print(json.dumps({"torch": torch.__version__, "impl": "transformers.BertModel", "device": args.device, "batch": args.batch,
                      "tokens": n, "steps": args.steps, "seconds_per_step": per}))


if __name__ == "__main__":
    main()
