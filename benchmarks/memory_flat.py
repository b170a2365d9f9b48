"""Peak training memory against sequence length: one trainer step of B whole sequences of T tokens,
with exact segment BPTT (``bptt: whole``, the default) against full-graph autograd.

Each configuration runs in a fresh subprocess, so one run's allocations cannot hide another's;
each is one ``Trainer.train_step`` on a batch of the bytes stream (the tiny recipe with the
preset's sizes), exactly what ``plasticlm train`` runs. Memory is the peak resident set (CPU,
ru_maxrss) or torch.cuda.max_memory_allocated (GPU), minus what the process held after building
model and optimizer; the boundary states that the segment trainer keeps are reported separately
(they are the only part that grows with T).

    python benchmarks/memory_flat.py --preset tiny --device cpu            # T = 4k, 16k, 64k
    python benchmarks/memory_flat.py --preset base --device cuda           # T = 8k ... 1M, ~110M params
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    # name: model config, B, segment length, sequence lengths, full-graph lengths (beyond them it cannot fit)
    "tiny": dict(model=dict(vocab_size=272, d_model=128, n_layers=4, n_heads=4), B=4, L=256,
                 T=[4096, 16384, 65536], full_T=[4096, 16384]),
    # The ~110M shape of the headline (its 32k BPE table swapped for the byte stream's 272 ids: the
    # table's size does not depend on T).
    "base": dict(model=dict(vocab_size=272, d_model=768, n_layers=12, n_heads=12, ffn_hidden=2048), B=8, L=4096,
                 T=[8192, 32768, 131072, 1048576], full_T=[8192, 32768, 131072]),
}


def worker(args) -> dict:
    import tempfile

    import torch

    from plasticlm.trainer.config import load_config
    from plasticlm.trainer.loop import Trainer

    p = PRESETS[args.preset]
    dev = torch.device(args.device)
    B, L, T = p["B"], p["L"], args.T
    overrides = [f"model.{k}={v}" for k, v in p["model"].items()] + [
        f"model.reversible={bool(args.reversible)}", f"data.seq_len={T}", f"data.min_len={T}", f"data.batch_size={B}",
        f"segment_len={L}", f"storage={args.storage}", f"device={args.device}", "backprop=" +
        ("segment" if args.kind == "segment" else "full"), "log.tensorboard=disabled", "loss.proxy_every=1000000",
        f"out_dir={tempfile.mkdtemp()}", "data.valid_fraction=0.2"]
    trainer = Trainer(load_config("tiny", overrides), progress=False)
    model, opt = trainer.model, trainer.opt

    def step():
        trainer.train_step(trainer.next_batch())

    def used():
        if dev.type == "cuda":
            return torch.cuda.max_memory_allocated(dev)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # Gradients and optimizer state belong to the baseline, not to T: make them exist before
    # measuring, without a training step (whose activations would set the high-water mark).
    for p_ in model.parameters():
        p_.grad = torch.zeros_like(p_)
    opt.step()
    opt.zero_grad(set_to_none=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        base = used()
    step()  # the first step sets the peak; the second, warm, is timed
    t0 = time.perf_counter()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    state_bytes = sum(s.numel() * s.element_size() for s in model.init_state(B).tensors())
    n_seg = -(-T // L)
    return {"kind": args.kind, "T": T, "B": B, "L": L, "reversible": args.reversible, "storage": args.storage,
            "params": model.num_params(), "peak_bytes": used(), "baseline_bytes": base,
            "boundary_state_bytes": n_seg * state_bytes if args.kind == "segment" else 0,
            "step_seconds": dt, "tok_s": B * T / dt}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--storage", choices=["device", "host"], default="device")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--report", default=None, help="only render the markdown of a results JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="segment", help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--reversible", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--lengths", default=None, help="comma-separated T of the segment trainer only (default: the "
                                                      "preset's, with full-graph rows beside)")
    args = ap.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    if args.worker:
        args.reversible = bool(args.reversible)
        print(json.dumps(worker(args)))
        return

    p = PRESETS[args.preset]
    if args.lengths:
        runs = [("segment", int(T), 1) for T in args.lengths.split(",")]
    else:
        runs = [("segment", T, 1) for T in p["T"]] + [("segment", T, 0) for T in p["T"][:1]] + \
               [("full", T, 1) for T in p["full_T"]]
    rows = []
    for kind, T, rev in runs:
        cmd = [sys.executable, __file__, "--worker", "--preset", args.preset, "--device", args.device,
               "--storage", args.storage, "--kind", kind, "--T", str(T), "--reversible", str(rev)]
        print("+", " ".join(cmd[1:]), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            oom = "out of memory" in r.stderr.lower() or r.returncode in (-9, 137)
            rows.append({"kind": kind, "T": T, "reversible": bool(rev), "error": "out of memory" if oom else
                         r.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)


    from plasticlm.provenance import git_commit, provenance

    meta = provenance(args.device, f"python benchmarks/memory_flat.py --preset {args.preset} --device {args.device} "
                                   f"--storage {args.storage}")
    meta.update(commit=git_commit(short=True), date=meta["date"][:10], preset=args.preset,
                cuda=args.device.startswith("cuda"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{meta['date']}_{meta['hardware']}_memory_flat-{args.preset}.json"
    path.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(report(path))


def report(path: Path) -> str:
    """Render the markdown beside a results JSON (also: `python benchmarks/memory_flat.py --report FILE`)."""
    d = json.loads(Path(path).read_text())
    rows, mib = d["rows"], 2 ** 20
    lines = [f"# Peak training memory vs sequence length ({d['preset']}, {d['device']}, {d['date']})", "",
             f"- command: `{d['command']}`", f"- commit: {d['commit']}", f"- torch {d.get('torch', '')}",
             f"- memory: {'torch.cuda.max_memory_allocated' if d.get('cuda') else 'peak RSS'} during one optimizer "
             "step; baseline: the process before that step (model, gradients, optimizer state, data)",
             "- tokens/s: one warm step timed in the same process, a side figure; throughput of record comes "
             "from `plasticlm bench`, which times several steps per configuration",
             "", "| trainer | blocks | T | B x L | peak (MiB) | above baseline (MiB) | of which boundary states (MiB) "
             "| tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {'rev' if r['reversible'] else 'plain'} | {r['T']:,} | | {r['error']} | | | |")
            continue
        lines.append(f"| {r['kind']} | {'rev' if r['reversible'] else 'plain'} | {r['T']:,} | {r['B']} x "
                     f"{r['L'] if r['kind'] == 'segment' else r['T']} | {r['peak_bytes'] / mib:,.0f} | "
                     f"{(r['peak_bytes'] - r['baseline_bytes']) / mib:,.0f} | "
                     f"{r['boundary_state_bytes'] / mib:,.1f} | {r['tok_s']:,.0f} |")
    seg = [r for r in rows if r.get("kind") == "segment" and r.get("reversible") and "error" not in r]
    if len(seg) >= 2:
        lo, hi = seg[0], seg[-1]
        above = [r["peak_bytes"] - r["baseline_bytes"] for r in (lo, hi)]
        act = [a - r["boundary_state_bytes"] for a, r in zip(above, (lo, hi))]
        lines += ["", f"Segment trainer, reversible blocks, T={hi['T']:,} against T={lo['T']:,}: peak "
                  f"{hi['peak_bytes'] / lo['peak_bytes']:.2f}x; above baseline {above[1] / above[0]:.2f}x; above "
                  f"baseline without the boundary states {act[1] / act[0]:.2f}x. The boundary states grow from "
                  f"{lo['boundary_state_bytes'] / mib:.1f} to {hi['boundary_state_bytes'] / mib:.1f} MiB "
                  "(linear in T; `storage=\"host\"` moves them off the device)."]
    text = "\n".join(lines) + "\n"
    Path(path).with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()
