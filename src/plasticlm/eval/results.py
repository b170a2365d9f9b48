"""One JSON per evaluation run, rewritten after each suite so a crash loses nothing finished,
and the PNG plots beside it."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from ..provenance import git_commit, machine, provenance


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return f"{device.type}: {machine(device)['device']}"


def header(command: list[str], device, seed: int, checkpoint: dict[str, Any]) -> dict[str, Any]:
    meta = provenance(device, command)
    return {
        "date": meta["date"],
        "command": meta["command"],
        "commit": git_commit(),  # looked up here, so a test can stand in a clean tree
        "device": device_name(device),
        "seed": seed,
        "versions": {"python": meta["python"], "torch": meta["torch"]},
        "checkpoint": checkpoint,
        "suites": {},
    }


def jsonable(x):
    """JSON has no NaN or infinity: write them as null, and tensors/numpy scalars as numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(doc), indent=1)
    atomic_write(path, lambda p: Path(p).write_text(text))


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'plasticlm[plot]'") from None
    return plt


def legend(ax, **kwargs) -> None:
    """A legend, when the axes have labelled artists (a plot redrawn after each run may have none yet)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def bar_plot(path: Path, groups: dict[str, dict[str, float | None]], ylabel: str, title: str) -> str:
    """Grouped bars: groups = {metric: {system: value}}; returns the file name."""
    plt = pyplot()
    systems = list(next(iter(groups.values())))
    fig, ax = plt.subplots(figsize=(6, 4))
    w = 0.8 / len(groups)
    for j, (metric, vals) in enumerate(groups.items()):
        xs = [i + j * w for i in range(len(systems))]
        ax.bar(xs, [vals[s] or 0.0 for s in systems], width=w, label=metric)
    ax.set_xticks([i + w * (len(groups) - 1) / 2 for i in range(len(systems))], systems)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def line_plot(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
              logx: bool = False, hline: dict[str, float] | None = None) -> str:
    """One PNG with a line per series; returns its file name. Needs matplotlib (extra 'plot')."""
    plt = pyplot()
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


def headline(name: str, r: dict) -> str:
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    if name == "perplexity":
        return (f"token ppl {f(r['token_perplexity'])}, bits/byte {f(r['bits_per_byte'])}, word ppl "
                f"{f(r['word_perplexity'])} over {r['n_docs']} documents")
    if name == "qa":
        return ", ".join(f"{o} EM {f(v['exact_match'])} F1 {f(v['f1'])}" for o, v in r["orders"].items())
    if name == "bleu":
        return (f"BLEU {f(r['model']['bleu'])} chrF {f(r['model']['chrf'])} (copy {f(r['copy_source']['bleu'])}, "
                f"random {f(r['random']['bleu'])})")
    if name == "oneshot":
        last = {m: list(c.values())[-1]["bits_per_byte"] for m, c in r["curves"].items()}
        return (f"bits/byte no reading {f(r['no_reading']['bits_per_byte'])}, after {r['tokens_read']} tokens: "
                + ", ".join(f"{m} {f(v)}" for m, v in last.items()))
    if name == "listops":
        return f"accuracy {f(r['accuracy'])} (before training {f(r['accuracy_before_training'])}, majority {f(r['majority_class'])})"
    if name == "mqar":
        acc = ", ".join(f"{k} pairs {f(v)}" for k, v in r["accuracy"].items())
        return f"accuracy {acc} with {r['state_size']:,} state scalars (chance {f(r['chance'])})"
    if name == "probes":
        parts = []
        for probe, v in r.items():
            if probe != "plots":
                m = "rest_match_rate" if probe == "template" else "match_rate"
                last = {k: list(c.values())[-1][m] for k, c in v["curves"].items()}
                parts.append(f"{probe} {m} after the last checkpoint: " + ", ".join(f"{k} {f(x)}" for k, x in last.items()))
        return "; ".join(parts)
    return ""


def markdown(doc: dict[str, Any]) -> str:
    """A short report of a run: where, when, with what, the headline of each suite and its plots."""
    lines = [f"# Evaluation of {doc['checkpoint'].get('path', '?')}", "",
             f"- date: {doc['date']}", f"- device: {doc['device']}", f"- commit: {doc['commit']}",
             f"- command: `{doc['command']}`", f"- seed: {doc['seed']}, preset: {doc.get('preset')}",
             f"- model_id: {doc['checkpoint'].get('model_id')}, parameters: {doc['checkpoint'].get('params')}", "",
             "| suite | result | seconds |", "|---|---|---|"]
    for name, s in doc["suites"].items():
        lines.append(f"| {name} | {headline(name, s['results'])} | {s['seconds']:.0f} |")
    lines.append("")
    for name, s in doc["suites"].items():
        for png in s["results"].get("plots", []):
            lines.append(f"![{name}]({png})")
    return "\n".join(lines) + "\n"
