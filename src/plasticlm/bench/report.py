"""Benchmark output: the JSON of every row, a markdown report, and PNG plots beside them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import atomic_write


def _fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _cell(r: dict) -> str:
    """tokens/s, or why there is none."""
    if r is None:
        return ""
    if r.get("oom"):
        return "OOM"
    if "error" in r:
        return "not run" if r["error"].startswith("not run") else "error"
    return f"{r['tok_s']:,}"


def train_tables(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r["suite"] == "train" and "profile_dir" not in r]
    if not rows:
        return []
    Ts = sorted({r["T"] for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["T"]): r for r in rows}
    B = {r["T"]: r["B"] for r in rows}
    out = ["## Training", "",
           f"Tokens per optimizer step B x T = {rows[0]['B'] * rows[0]['T']:,} (B = 1 beyond that); "
           f"loss: {rows[0]['loss']}; dtype: {rows[0]['dtype']}.", "",
           "Training tokens/s:", "",
           "| variant | " + " | ".join(f"T={T:,} (B={B[T]})" for T in Ts) + " |",
           "|---|" + "---:|" * len(Ts)]
    for v in variants:
        out.append(f"| {v} | " + " | ".join(_cell(by.get((v, T))) for T in Ts) + " |")
    out += ["", "Peak memory (GiB):", "",
            "| variant | " + " | ".join(f"T={T:,}" for T in Ts) + " |", "|---|" + "---:|" * len(Ts)]
    for v in variants:
        cells = []
        for T in Ts:
            r = by.get((v, T))
            cells.append("" if r is None else _fmt(r.get("peak_GiB"), 2) if "tok_s" in r else _cell(r))
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    out += ["", "| variant | T | B | segment L | tok/s | s/step | timed steps | peak GiB | model TFLOP/s | MFU | note |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        note = r.get("error", "")[:120]
        out.append(f"| {r['variant']} | {r['T']:,} | {r['B']} | {_fmt(r.get('segment_len'))} | {_fmt(r.get('tok_s'))} | "
                   f"{_fmt(r.get('step_s'), 3)} | {_fmt(r.get('timed_steps'))} | {_fmt(r.get('peak_GiB'), 2)} | "
                   f"{_fmt(r.get('model_TFLOPs'), 3)} | {_fmt(r.get('mfu'), 3)} | {note} |")
    out += ["", *ratios(by, Ts)]
    return out


def ratios(by: dict, Ts: list[int]) -> list[str]:
    """plasticlm's segment trainers against the same model under full autograd and against the baselines."""
    pairs = [("plasticlm-rev/segment", "plasticlm-rev/full"), ("plasticlm-plain/segment", "plasticlm-plain/full"),
             ("plasticlm-rev/segment", "transformer/full"), ("plasticlm-rev/segment", "gla/full"),
             ("plasticlm-rev/segment", "mamba2/full"), ("plasticlm-rev/segment-host", "plasticlm-rev/segment"),
             ("plasticlm-rev/segment-rebuild", "plasticlm-rev/full"), ("plasticlm-plain/full", "gla/full"),
             ("plasticlm-plain/full", "gla-conv/full"), ("plasticlm-plain/full", "gla-equal-state/full")]
    lines = []
    for a, b in pairs:
        cells = []
        for T in Ts:
            ra, rb = by.get((a, T)), by.get((b, T))
            if ra is None or rb is None:
                cells.append("")
            elif "tok_s" in ra and "tok_s" in rb:
                cells.append(f"{ra['tok_s'] / rb['tok_s']:.2f}x")
            elif "tok_s" in ra and rb.get("oom"):
                cells.append(f"trains; {b.split('/')[0]} OOM")
            else:
                cells.append("-")
        if any(cells):
            lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return ["Throughput ratios (same run):", "", "| ratio | " + " | ".join(f"T={T:,}" for T in Ts) + " |",
            "|---|" + "---:|" * len(Ts), *lines, ""]


def infer_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r["suite"] == "infer"]
    if not rows:
        return []
    out = ["## Inference", "", "Read a context of C tokens (prefill, pieces of "
           f"{rows[0]['piece']:,} tokens), then generate {rows[0]['gen_tokens']} tokens one at a time.", "",
           "| model | context C | B | prefill tok/s | generation tok/s | state MiB | peak GiB | note |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['model_name']} | {r['context']:,} | {r['B']} | {_fmt(r.get('prefill_tok_s'))} | "
                   f"{_fmt(r.get('gen_tok_s'))} | {_fmt(r.get('state_MiB'), 2)} | {_fmt(r.get('peak_GiB'), 3)} | "
                   f"{'OOM' if r.get('oom') else r.get('error', '')[:120]} |")
    return [*out, ""]


def paths_table(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r["suite"] == "paths"]
    if not rows:
        return []
    naive = next((r for r in rows if r["mode"] == "naive" and "forward_s" in r), None)
    cols = ("op_forward", "op_forward_backward", "forward", "forward_backward")
    out = ["## Execution paths of the memory", "",
           f"B={rows[0]['B']}, T={rows[0]['T']:,}: the recurrence alone (`gated_average`) and the whole small model "
           "around it; forward without a graph, forward + backward with full autograd; mean seconds, and in "
           "brackets the speed-up over `naive`.", "",
           "| mode | op forward | op forward+backward | model forward | model forward+backward | note |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        cells = []
        for c in cols:
            t = r.get(f"{c}_s")
            up = f" ({naive[f'{c}_s'] / t:.1f}x)" if naive and t else ""
            cells.append(f"{_fmt(t, 4)}{up}")
        out.append(f"| {r['mode']} | " + " | ".join(cells) + f" | {r.get('error', '')[:120]} |")
    return [*out, ""]


def markdown(data: dict) -> str:
    m, rows = data["meta"], data["rows"]
    cfg = data["config"]
    lines = [f"# plasticlm bench: preset `{cfg['preset']}` on {m['device']}", "",
             f"- date: {m['date']}; commit: `{m['commit']}`; torch {m['torch']}"
             + (f", CUDA {m.get('cuda')}, fla {m.get('fla')}" if "cuda" in m else ""),
             f"- command: `{m['command']}`",
             f"- model: PlasticLM {cfg['model']}; baselines sized to its parameter count",
             "- memory: " + ("torch.cuda.max_memory_allocated" if "cuda" in m else m.get("memory_note", "")),
             *([f"- MFU: {m['peak_tflops_note']}"] if m.get("peak_tflops_note") else []),
             *([f"- machine load average at start: {m['load_average']:.1f} (other processes share the CPU)"]
               if m.get("load_average") is not None else []), ""]
    lines += paths_table(rows) + train_tables(rows) + infer_table(rows)
    prof = [r for r in rows if r.get("profile")]
    if prof:
        lines += ["## Profiles", "", *(f"- {r['variant']} T={r['T']:,}: `{Path(r['profile']).name}`" for r in prof), ""]
    return "\n".join(lines) + "\n"


def make_plots(data: dict, stem: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: plots skipped: matplotlib is missing (pip install 'plasticlm[plot]')", file=sys.stderr)
        return []
    made = []
    rows = data["rows"]
    train = [r for r in rows if r["suite"] == "train" and "tok_s" in r]
    infer = [r for r in rows if r["suite"] == "infer" and "gen_tok_s" in r]
    title = f"{data['meta']['device']}, {data['meta']['date'][:10]}"
    specs = []
    if train:
        groups = {}
        for r in train:
            groups.setdefault(r["variant"], []).append(r)
        specs += [("train_tokens_per_s", "sequence length T", "training tokens/s", groups, "T", "tok_s"),
                  ("train_memory", "sequence length T", "peak memory (GiB)", groups, "T", "peak_GiB")]
    if infer:
        groups = {}
        for r in infer:
            groups.setdefault(f"{r['model_name']} B={r['B']}", []).append(r)
        specs += [("infer_memory", "context length", "peak memory (GiB)", groups, "context", "peak_GiB"),
                  ("infer_generation", "context length", "generation tokens/s", groups, "context", "gen_tok_s")]
    for name, xl, yl, groups, xk, yk in specs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, rs in groups.items():
            rs = sorted(rs, key=lambda r: r[xk])
            ax.plot([r[xk] for r in rs], [r[yk] for r in rs], marker="o", label=label)
        ax.set_xscale("log", base=2)
        if name == "infer_memory":
            ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # from zero, so that flat reads as flat
        else:
            ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = stem.with_name(f"{stem.name}_{name}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)
    return made


def write_report(path: Path, data: dict, plots: bool = True) -> None:
    """JSON at ``path``, markdown beside it (same stem), and the PNGs when ``plots``."""
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=1) + "\n"))
    atomic_write(path.with_suffix(".md"), lambda p: Path(p).write_text(markdown(data)))
    if plots:
        make_plots(data, path.with_suffix(""))


if __name__ == "__main__":
    # Re-render the markdown and plots of stored results: python -m plasticlm.bench.report FILE.json ...
    for arg in sys.argv[1:]:
        write_report(Path(arg), json.loads(Path(arg).read_text()))
