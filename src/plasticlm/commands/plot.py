"""plasticlm plot RUN [RUN ...] [--out DIR]: training curves as PNG."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "plot", help="draw a run's training curves (PNG)",
        description="Read RUN/metrics.jsonl of one or more runs and write PNG curves: train and validation "
                    "loss, learning rate, gradient norm, tokens/s and, where logged, the retention mass per "
                    "lag band of each layer. Several runs are drawn on the same axes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (out_dir of `plasticlm train`)")
    p.add_argument("--out", default=None, help="where to write the PNGs (default: RUN/plots of the first run)")
    p.set_defaults(func=run)


def plot_runs(runs: list[str | Path], out: str | Path) -> list[Path]:
    """Write curves.png (and retention.png when logged) into ``out``; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install 'plasticlm[train]'") from None
    from ..trainer.metrics import read_metrics

    data = {Path(r).name or str(r): read_metrics(r) for r in runs}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    panels = [("loss", "train loss (nats/token)"), ("valid_loss", "validation loss"), ("lr", "learning rate"),
              ("grad_norm", "gradient norm"), ("tok_s", "tokens / s"), ("proxy", "gradient-length proxy (KL)")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title) in zip(axes.flat, panels):
        for name, recs in data.items():
            pts = [(r["step"], r[key]) for r in recs if key in r and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if key == "valid_loss" else None, ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key in ("grad_norm",):
            ax.set_yscale("log")
        if ax.lines and len(data) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    written = [out / "curves.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)

    retention = {name: [r for r in recs if any(k.startswith("retention/") for k in r)] for name, recs in data.items()}
    first = next((recs for recs in retention.values() if recs), None)
    if first:
        layers = sorted({k.split("/")[1] for k in first[0] if k.startswith("retention/")}, key=lambda s: int(s[1:]))
        fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.5), squeeze=False)
        for ax, layer in zip(axes[0], layers):
            for name, recs in retention.items():
                bands = sorted({k for r in recs for k in r if k.startswith(f"retention/{layer}/")})
                for band in bands:
                    pts = [(r["step"], r[band]) for r in recs if band in r]
                    ax.plot(*zip(*pts), label=f"{name} {band.rsplit('/', 1)[1]}" if len(data) > 1 else band.rsplit('/', 1)[1])
            ax.set_title(f"retention mass, layer {layer[1:]}")
            ax.set_xlabel("step")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "retention.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def run(args) -> int:
    out = args.out or Path(args.runs[0]) / "plots"
    for path in plot_runs(args.runs, out):
        print(path)
    return 0
