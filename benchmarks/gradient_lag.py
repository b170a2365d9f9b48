"""Gradient-length proxy vs the real gradient: how much gradient reaches each lag?

The proxy (DESIGN 3, ``plasticlm.trainer.losses``) predicts from the gates alone how much
gradient the memory path carries back k tokens; ``plasticlm.eval.gradient_lag`` measures the
real |dL_t / dx_{t-k}| on probe sequences. This script compares the two, by lag band and as
curves against lag, for a checkpoint's model at initialisation and after training.

    python benchmarks/gradient_lag.py --checkpoint runs/tiny --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from plasticlm import ModelConfig, PlasticLM
from plasticlm.checkpoint import load_model
from plasticlm.data.builtin import builtin_corpus
from plasticlm.eval.gradient_lag import measure
from plasticlm.trainer.losses import band_edges


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/tiny", help="trained model dir (e.g. from `plasticlm train tiny`)")
    ap.add_argument("--probes", type=int, default=8, help="probe sequences")
    ap.add_argument("--length", type=int, default=1024, help="tokens per probe")
    ap.add_argument("--last", type=int, default=8, help="loss taken on this many last positions")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    torch.manual_seed(0)
    trained, tok, meta = load_model(args.checkpoint)
    init = PlasticLM(ModelConfig(**json.loads(meta["config"])))
    data = torch.tensor(tok.encode(builtin_corpus()), dtype=torch.long)
    valid = data[-len(data) // 50:]  # the validation tail: text the model did not train on
    starts = torch.randint(0, len(valid) - args.length - 1, (args.probes,), generator=torch.Generator().manual_seed(0))
    probes = torch.stack([valid[s:s + args.length + 1] for s in starts.tolist()])
    edges = band_edges(args.length, [0.01, 0.1, 1.0])

    t0 = time.time()
    results = {name: measure(m.train(), probes, edges, args.last) for name, m in (("init", init), ("trained", trained))}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "unknown"
    record = {"date": datetime.date.today().isoformat(), "device": f"CPU ({platform.processor() or platform.machine()}), "
              f"{torch.get_num_threads()} threads", "torch": torch.__version__, "commit": commit,
              "command": "python benchmarks/gradient_lag.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
              "model_id": meta["model_id"], "edges": edges, "seconds": round(time.time() - t0, 1), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from plasticlm.provenance import result_stem

    stem = result_stem("gradient_lag")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (name, r) in zip(axes, results.items()):
        real, proxy = torch.tensor(r["real_by_lag"]), torch.tensor(r["proxy_by_lag"])
        k = torch.arange(1, len(real))
        ax.loglog(k, real[1:] / real[1], label="measured |dL_t/dx_{t-k}| (normalised at k=1)")
        ax.loglog(k, proxy[1:] / proxy[1], label="proxy: sum_c (1-a_c) a_c^k (normalised at k=1)")
        flat = torch.tensor(r["unweighted_by_lag"])
        ax.loglog(k, flat[1:] / flat[1], ls="--", label="without the write weight: sum_c a_c^k")
        for k0, _ in edges[1:]:
            ax.axvline(k0, color="gray", lw=0.5)
        ax.set_title(f"{name}: log-log corr {r['log_log_correlation']:.2f}")
        ax.set_xlabel("lag k (tokens)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)

    lines = ["# Gradient-length proxy vs measured gradient\n", f"{record['date']}, {record['device']}, torch "
             f"{record['torch']}, commit {commit}, model {meta['model_id']} ({args.checkpoint}).\n",
             f"`{record['command']}`\n", "Share of the gradient (measured) and of the retention mass (proxy, as the "
             "trainer computes it; and without the write weight 1 - a) per lag band "
             f"({', '.join(f'[{a}, {b})' for a, b in edges)} tokens):\n",
             "| model | measured | proxy | proxy without write weight | log-log corr. (measured, proxy) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        fmt = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        lines.append(f"| {name} | {fmt(r['real_band_shares'])} | {fmt(r['proxy_band_shares'])} | "
                     f"{fmt(r['unweighted_band_shares'])} | {r['log_log_correlation']:.2f} |")
    lines.append("\nThe proxy sees only the memory path's retention (gates and write weights); the measured gradient "
                 "also depends on the keys, values and queries, the feed-forward blocks and the head. Compare the "
                 "band shares and the slopes, not the values.\n")
    lines.append(f"![curves]({stem}.png)\n")
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
