"""One JSON per evaluation run, rewritten after each suite so a crash loses nothing finished,
and the PNG plots beside it."""
from __future__ import annotations

import datetime as dt
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write


def git_commit() -> str:
    """The commit of the plasticlm source tree, with '-dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def header(command: list[str], device, seed: int, checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command),
        "commit": git_commit(),
        "device": device_name(device),
        "seed": seed,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "checkpoint": checkpoint,
        "suites": {},
    }


def _clean(x):
    """JSON has no NaN or infinity: write them as null, and tensors/numpy scalars as numbers."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(doc), indent=1)
    atomic_write(path, lambda p: Path(p).write_text(text))


def line_plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
              logx: bool = False, hline: dict[str, float] | None = None) -> str:
    """One PNG with a line per series; returns its file name. Needs matplotlib (extra 'plot')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'plasticlm[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ys = [float("nan") if y is None else y for y in ys]
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    for label, y in (hline or {}).items():
        if y is not None:
            ax.axhline(y, ls="--", lw=1, color="gray")
            ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="gray")
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
