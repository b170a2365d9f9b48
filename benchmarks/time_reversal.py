"""Time reversal: how far do gradients drift when boundary states are recovered by inverting the recurrence?

segment_backward(reverse_every=K) keeps one boundary state in K and rebuilds the others with
model.rewind, whose division by prod(a_t) amplifies rounding (DESIGN section 2). This script
measures the relative error of every parameter gradient against the exact mode, for K in
{1, 4, 16}, at initialisation and after a short training run, in float32 and float64, for the
default gate spread (half-lives from 2 tokens) and for a model whose gates start slow.

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
    ap.add_argument("--min-half-lives", default="2,256",
                    help="comma-separated ModelConfig.min_half_life values, one model each")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    data = torch.tensor(ByteTokenizer().encode(builtin_corpus()), dtype=torch.long)
    t0 = time.time()
    runs = {hl: run(args, data, float(hl)) for hl in args.min_half_lives.split(",")}
    write(args, runs, time.time() - t0)


def run(args, data, min_half_life):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=ByteTokenizer().vocab_size, d_model=128, n_layers=4, n_heads=4,
                      min_half_life=min_half_life)
    model = PlasticLM(cfg)
    L, B, T = args.segment_len, args.batch, args.segments * args.segment_len
    gen = torch.Generator().manual_seed(0)

    def batch(n_rows, seq):
        s = torch.randint(0, len(data) - seq - 1, (n_rows,), generator=gen).tolist()
        rows = torch.stack([data[i:i + seq + 1] for i in s])
        return rows[:, :-1], rows[:, 1:]

    probe = batch(B, T)
    Ks = [1, 4, 16]
    results = {}
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

    return {"results": results, "train_losses": [losses[0], losses[-1]] if losses else [],
            "params": model.num_params(), "half_lives_min_med_max_per_layer": half_lives}


def write(args, runs, seconds):
    Ks = [1, 4, 16]
    L, B, T = args.segment_len, args.batch, args.segments * args.segment_len
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    params = next(iter(runs.values()))["params"]
    meta = {"date": datetime.date.today().isoformat(), "device": f"CPU ({platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "commit": commit,
            "command": "python benchmarks/time_reversal.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
            "model": f"byte-level, d_model=128, 4 layers, 4 heads, {params:,} params, reversible; gate half-lives "
                     "log-uniform from min_half_life to 1e5 tokens at init",
            "probe": f"B={B}, T={T} ({args.segments} segments of {L}), builtin corpus bytes",
            "training": f"{args.train_steps} AdamW steps (lr 3e-3, B=16, T=256, segment 128) between 'init' and 'trained'",
            "seconds": round(seconds)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from plasticlm.provenance import result_stem

    stem = result_stem("time_reversal")
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    lines = [f"# Time reversal: gradient error against exact segment BPTT ({meta['date']})", "",
             *[f"- {k}: {v}" for k, v in meta.items()], "",
             "Relative error ||g_K - g_exact|| / ||g_exact|| over all parameter gradients "
             "(inf: the gradient held non-finite values). K=1 stores every boundary state (the exact mode).", "",
             "| min half-life | when | dtype | train loss | K=1 | K=4 | K=16 |", "|---|---|---|---|---|---|---|"]
    for hl, r in runs.items():
        for when, by_dtype in r["results"].items():
            loss = f"{r['train_losses'][0 if when == 'init' else 1]:.3f}" if r["train_losses"] else ""
            for dt, rows in by_dtype.items():
                lines.append(f"| {hl} | {when} | {dt.replace('torch.', '')} | {loss} | " + " | ".join(
                    f"{rows[K]['rel_error']:.2e}" for K in Ks) + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
