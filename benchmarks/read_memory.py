"""Peak memory of `plasticlm read` against the amount read: it should not grow.

For each corpus size, a fresh `plasticlm read` process reads a JSONL corpus (documents from the
builtin stdlib-docstring corpus, repeated to size) with a tiny byte-level model on CPU. The peak
resident set size comes from the kernel's accounting for that one child (os.wait4's ru_maxrss);
RSS is also sampled from /proc while it runs, to show the curve within a run. Two more runs read
the smallest and the largest size as a single text file (one document, read in blocks).

    python benchmarks/read_memory.py                       # sizes 125k .. 2M tokens, ~10 min on 2 cores
    python benchmarks/read_memory.py --sizes 20000 200000  # quick look

Writes benchmarks/results/DATE_MACHINE_read_memory.{md,json} (and .png with matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_checkpoint(directory: Path) -> Path:
    import torch

    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.checkpoint import save_model
    from plasticlm.tokenizer import ByteTokenizer

    torch.manual_seed(0)  # untrained weights: memory does not depend on what the weights are
    save_model(directory, PlasticLM(ModelConfig(vocab_size=272, d_model=32, n_layers=2, n_heads=2)), ByteTokenizer())
    return directory


def make_corpus(path: Path, tokens: int, single_file: bool = False) -> int:
    """Write ~``tokens`` byte tokens of documents (JSONL, or one text file); returns the exact count."""
    from plasticlm.data.builtin import builtin_corpus

    docs = [d for d in builtin_corpus().split("\n\n") if d.strip()]
    n, i = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while n < tokens:
            doc = docs[i % len(docs)]
            i += 1
            if single_file:
                f.write(doc + "\n\n")
                n += len(doc.encode()) + 2
            else:
                f.write(json.dumps({"text": doc}) + "\n")
                n += len(doc.encode()) + 1  # + the [EOS] after each document
    return n + 1 if single_file else n


def measure(checkpoint: Path, corpus: Path, state: Path, piece: int = 4096, interval: float = 0.1) -> dict:
    """Run `plasticlm read` in a fresh process; returns its peak RSS, RSS samples and speed."""
    cmd = [sys.executable, "-m", "plasticlm.cli", "read", str(checkpoint), str(corpus), "--state", str(state),
           "--overwrite", "--no-progress", "--piece", str(piece)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        samples = []  # (seconds, RSS MiB) from /proc while it runs
        while True:
            # wait4 on this pid gives the kernel's peak RSS of exactly this child once it exits.
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                text = Path(f"/proc/{child.pid}/status").read_text()
                samples.append((time.perf_counter() - t0, int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024))
            except (OSError, AttributeError):
                pass
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{stderr}")
    m = re.search(r"read ([\d,]+) documents, ([\d,]+) tokens in ([\d.]+)s", stdout)
    tokens = int(m.group(2).replace(",", ""))
    return {"tokens": tokens, "documents": int(m.group(1).replace(",", "")), "read_seconds": float(m.group(3)),
            "tok_s": round(tokens / float(m.group(3))), "wall_seconds": round(seconds, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is in KiB on Linux
            "samples": [(round(t, 2), round(r, 1)) for t, r in samples], "summary": stdout.strip()}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", ":/src", ":/benchmarks/*.py"],
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name() -> str:
    try:
        m = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        return f"{m.group(1).strip()}, {os.cpu_count()} logical cores"
    except (OSError, AttributeError):
        return platform.processor() or "unknown CPU"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[125_000, 250_000, 500_000, 1_000_000, 2_000_000],
                   help="corpus sizes in tokens (bytes + one [EOS] per document)")
    p.add_argument("--piece", type=int, default=4096)
    p.add_argument("--out", default=None, help="path prefix of .md/.json/.png (default: "
                                                 "benchmarks/results/DATE_MACHINE_read_memory)")
    args = p.parse_args()
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the children read it; one thread keeps timings steady
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "ckpt")
        jobs = [(n, False) for n in sorted(args.sizes)] + [(min(args.sizes), True), (max(args.sizes), True)]
        for n, single in jobs:
            corpus = tmp / ("corpus.txt" if single else "corpus.jsonl")
            exact = make_corpus(corpus, n, single_file=single)
            r = measure(ckpt, corpus, tmp / "out.state", piece=args.piece)
            if r["tokens"] != exact:
                raise RuntimeError(f"read {r['tokens']} tokens, the corpus holds {exact}")
            r["input"] = "one text file" if single else "JSONL"
            runs.append(r)
            print(f"{r['tokens']:>10,} tokens ({r['input']}, {r['documents']:,} documents): peak RSS "
                  f"{r['peak_rss_mib']:.1f} MiB, {r['tok_s']:,} tok/s", flush=True)

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": f"CPU: {cpu_name()}",
            "torch": torch.__version__, "python": platform.python_version(), "threads": os.environ["OMP_NUM_THREADS"],
            "commit": git_commit(), "command": "python benchmarks/read_memory.py " + " ".join(sys.argv[1:]),
            "model": "PlasticLM d_model=32, n_layers=2, n_heads=2, byte tokenizer (272 tokens), untrained",
            "piece": args.piece}
    from plasticlm.provenance import result_stem

    out = Path(args.out) if args.out else HERE / "results" / result_stem("read_memory")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "runs": runs}, indent=1))
    small = runs[0]
    lines = ["# Peak memory of `plasticlm read` against tokens read", "",
             *(f"- {k}: {v}" for k, v in meta.items()), "",
             "| tokens read | input | documents | peak RSS (MiB) | vs smallest (MiB) | tokens/s |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['tokens']:,} | {r['input']} | {r['documents']:,} | {r['peak_rss_mib']:.1f} | "
                     f"{r['peak_rss_mib'] - small['peak_rss_mib']:+.1f} | {r['tok_s']:,} |")
    lines += ["", "Peak RSS is the kernel's ru_maxrss of each `plasticlm read` process (os.wait4), which includes "
              "the Python interpreter and torch (most of it). Samples of RSS over time are in the JSON file."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for r in runs:
            t, rss = zip(*r["samples"]) if r["samples"] else ((), ())
            ax.plot(t, rss, label=f"{r['tokens']:,} tokens ({r['input']})")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("plasticlm read: resident memory while reading")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plot]')", file=sys.stderr)
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
