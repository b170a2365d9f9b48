"""A positive control for reading: does a fresh plasticlm learn to count the bytes of its context?

Each row is i.i.d. bytes drawn with English byte frequencies (the builtin corpus's) under a fresh
random assignment of byte ids per row, so no id is more likely than another before reading (the
context-free loss is ln 256), and a reader that counts what it has seen approaches the unigram
entropy. It is the simplest statistic the shuffled-vocabulary task (H3, RQ6) rewards, without its
text structure, fission or fusion. A plain training loop (AdamW, full autograd) on a small model:
this isolates the task, not the trainer.

    python benchmarks/count_in_context.py        # d_model 64, 2 layers, rows of 1,024, 300 steps of 16

Writes DATE_MACHINE_count_in_context.{json,md} under --out: the loss by position against the
counting oracle (add-0.5 counts) as training goes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from plasticlm import ModelConfig
from plasticlm.data.builtin import builtin_corpus
from plasticlm.model import PlasticLM
from plasticlm.provenance import provenance, result_stem


def english_rows(p: torch.Tensor, rows: int, length: int, g: torch.Generator) -> torch.Tensor:
    """(rows, length) byte ids: frequency rank r drawn from p, written as the row's own id for rank r."""
    ids = torch.stack([torch.randperm(256, generator=g)[:len(p)] for _ in range(rows)])
    return ids.gather(1, torch.multinomial(p.expand(rows, -1), length, replacement=True, generator=g))


def counting_loss(x: torch.Tensor, vocab: int, alpha: float = 0.5) -> torch.Tensor:
    """Loss (nats) of add-alpha counts of each row's earlier tokens on x[:, 1:]."""
    B, n = x.shape
    counts, out = torch.zeros(B, vocab), []
    for t in range(1, n):
        counts.scatter_add_(1, x[:, t - 1:t], torch.ones(B, 1))
        out.append(-torch.log((counts.gather(1, x[:, t:t + 1])[:, 0] + alpha) / (t + alpha * vocab)))
    return torch.stack(out, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=25, help="steps between the rows of the table")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    freq = torch.bincount(torch.tensor(list(builtin_corpus().encode())), minlength=256).float()
    p = freq[freq > 0] / freq.sum()
    V, T, B = 272, args.seq_len, args.batch
    model = PlasticLM(ModelConfig(vocab_size=V, d_model=args.d_model, n_layers=args.layers,
                                  n_heads=max(1, args.d_model // 32), short_conv=4, bias_correction=True))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    bins = [(lo, min(T, 4 * lo)) for lo in (1, 4, 16, 64, 256, 1024, 4096, 16384) if lo < T]
    held_out = english_rows(p, 64, T + 1, torch.Generator().manual_seed(10_000 + args.seed))
    by_bin = lambda loss: [float(loss[:, a - 1:b - 1].mean()) for a, b in bins]  # noqa: E731 (1-based positions)
    rows = [{"step": "counting oracle", "bins": by_bin(counting_loss(held_out, V))}]
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x = english_rows(p, B, T + 1, g)
        logits, _ = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                logits, _ = model(held_out[:, :-1])
                ce = F.cross_entropy(logits.flatten(0, 1), held_out[:, 1:].flatten(), reduction="none").view(64, T)
            rows.append({"step": step, "seconds": round(time.perf_counter() - t0), "bins": by_bin(ce)})
            print(f"step {step}: " + " ".join(f"{v:.3f}" for v in rows[-1]["bins"]), flush=True)
    meta = provenance("cpu", ["python", "benchmarks/count_in_context.py", *sys.argv[1:]])
    out = Path(args.out)
    stem = result_stem("count_in_context")
    entropy = float(-(p * p.log()).sum())
    (out / f"{stem}.json").write_text(json.dumps({"provenance": meta, "args": vars(args), "bins": bins,
                                                  "unigram_entropy": entropy, "rows": rows}, indent=1))
    lines = [f"# Counting in context: loss (nats) by position on 64 held-out rows of {T} bytes", "",
             f"{meta['date']}, {meta['device']}, commit `{meta['commit']}`; command `{meta['command']}`.", "",
             f"Context-free loss ln 256 = {math.log(256):.3f}; the bytes' unigram entropy {entropy:.3f} "
             f"(what counting reaches in the limit). plasticlm d_model {args.d_model}, {args.layers} layers, "
             f"batch {B}, lr {args.lr}.", "",
             "| after step | " + " | ".join(f"{a}-{b - 1}" for a, b in bins) + " |", "|---|" + "---:|" * len(bins)]
    lines += [f"| {r['step']} | " + " | ".join(f"{v:.3f}" for v in r["bins"]) + " |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
