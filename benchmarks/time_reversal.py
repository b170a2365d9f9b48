"""Time reversal: how far do gradients drift when boundary states are recovered by inverting the recurrence?

segment_backward(reverse_every=K) keeps one boundary state in K and rebuilds the others with
model.rewind, whose division by prod(a_t) amplifies rounding (DESIGN section 2). This script
measures the relative error of every parameter gradient against the exact mode, for K in
{1, 4, 16}, at initialisation and after a short training run, in float32 and float64.

    python benchmarks/time_reversal.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from plasticlm import ModelConfig, PlasticLM, segment_backward
from plasticlm.data.builtin import builtin_corpus
from plasticlm.tokenizer import ByteTokenizer
from plasticlm.trainer.loop import param_groups


def grads(model, tokens, targets, L, K):
    model.zero_grad(set_to_none=True)
    segment_backward(model, tokens, targets, L, reverse_every=K)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def measure(model, tokens, targets, L, Ks):
    exact = grads(model, tokens, targets, L, 0)
    rows = {}
    for K in Ks:
        g = grads(model, tokens, targets, L, K)
        finite = bool(torch.isfinite(g).all())
        err = ((g - exact).norm() / exact.norm()).item() if finite else math.inf
        rows[K] = {"rel_error": err, "finite": finite}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-steps", type=int, default=150, help="steps of the short training run")
    ap.add_argument("--segments", type=int, default=32, help="segments per sequence (K up to 16 needs >= 17)")
    ap.add_argument("--segment-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=ByteTokenizer().vocab_size, d_model=128, n_layers=4, n_heads=4)
    model = PlasticLM(cfg)
    data = torch.tensor(ByteTokenizer().encode(builtin_corpus()), dtype=torch.long)
    L, B, T = args.segment_len, args.batch, args.segments * args.segment_len
    gen = torch.Generator().manual_seed(0)

    def batch(n_rows, seq):
        s = torch.randint(0, len(data) - seq - 1, (n_rows,), generator=gen).tolist()
        rows = torch.stack([data[i:i + seq + 1] for i in s])
        return rows[:, :-1], rows[:, 1:]

    probe = batch(B, T)
    Ks = [1, 4, 16]
    results = {}
    t0 = time.time()
    results["init"] = {str(dt): measure(model.to(dt), *probe, L, Ks) for dt in (torch.float32, torch.float64)}
    model.float()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(args.train_steps):
        x, y = batch(16, 256)
        losses.append(float(segment_backward(model, x, y, 128)))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    results["trained"] = {str(dt): measure(model.to(dt), *probe, L, Ks) for dt in (torch.float32, torch.float64)}
    model.float()
    half_lives = []
    for blk in model.blocks:
        hl = math.log(0.5) / torch.nn.functional.logsigmoid(blk.memory.gate.bias.double())
        half_lives.append([hl.min().item(), hl.median().item(), hl.max().item()])

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.date.today().isoformat(), "device": f"CPU ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "commit": commit,
            "command": "python benchmarks/time_reversal.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            "model": f"d_model=128, 4 layers, 4 heads, {model.num_params():,} params, gate half-lives 2..1e5 at init",
            "probe": f"B={B}, T={T} ({args.segments} segments of {L}), builtin corpus bytes",
            "train_losses": [losses[0], losses[-1]] if losses else [], "gate_bias_half_lives_min_med_max": half_lives,
            "seconds": round(time.time() - t0)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"time_reversal-cpu-{meta['date']}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [f"# Time reversal: gradient error against exact segment BPTT ({meta['date']})", "",
             *[f"- {k}: {v}" for k, v in meta.items() if k not in ("gate_bias_half_lives_min_med_max",)], "",
             "Relative error ||g_K - g_exact|| / ||g_exact|| over all parameter gradients "
             "(inf: the gradient held non-finite values).", "",
             "| when | dtype | K=1 | K=4 | K=16 |", "|---|---|---|---|---|"]
    for when, by_dtype in results.items():
        for dt, rows in by_dtype.items():
            lines.append(f"| {when} | {dt.replace('torch.', '')} | " + " | ".join(
                f"{rows[K]['rel_error']:.2e}" for K in Ks) + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
