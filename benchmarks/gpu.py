"""The GPU call: everything only a GPU can verify or measure, in one command that ends by itself.

    bash benchmarks/gpu.sh [--out DIR] [--budget SECONDS] [--only STAGE,...] [--dry-run]
    python benchmarks/gpu.py --collect FOLDER     # here, afterwards: unpack the returned files

A lent GPU comes for 15 minutes in all, machine start and installs included, so this runs the
stages below in order, most important first, each in its own process with its own time box
(cut to what is left of ``--budget``, 540 s by default); a stage whose box is spent, or that
fails, is noted and the next one runs. After every stage the results are packed into
``OUT/gpu_results.tar.gz`` beside ``OUT/gpu_summary.{json,md}`` (the device tool returns at most
8 files), so a call cut off at its limit still returns everything finished. Without CUDA (or with
``--dry-run``) every stage reports "skipped: no CUDA" and the script exits 0 within seconds.

Stages:
  tests       every gpu-marked test: fla's kernel against the chunk path (fp32, bf16; outputs, final
              state, every gradient, the initial state's), segment_backward under bf16 autocast
              against an fp32 reference, a training step of each architecture, state files on CUDA
  headline    ~110M parameters, 65,536 tokens per step, bf16, T = 32,768: tokens/s, peak memory and
              model FLOP/s for plasticlm's segment trainer, the same model under full autograd, the
              SDPA Transformer and GLA, side by side (plasticlm bench --preset h100)
  memory      plasticlm alone at T = 8,192 and 1,048,576: peak memory of a whole-sequence step
  infer       prefill and generation tokens/s at batch 1 and 64, memory against context to 1M
  mqar        E1 (experiments/mqar) at Zoology's widths on CUDA, as far as the time left goes

fla's kernels are pinned to one launch config each (``benchmarks/fla_configs.py``): its
first-call autotuning alone can outlast a stage's box. Timings are therefore untuned, and
``gpu_summary.md`` says so.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Stage:
    name: str
    box: float
    """Seconds at most (cut to what the budget has left)."""
    what: str

    def command(self, work: Path) -> list[str]:
        cli = [PY, "-m", "plasticlm.cli"]
        if self.name == "tests":
            files = sorted(str(p) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
            return [PY, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p", "no:cacheprovider", *files]
        if self.name == "headline":
            return [*cli, "bench", "--preset", "h100", "--suite", "train", "--seq-lens", "32768",
                    "--variants", "plasticlm-rev/segment,plasticlm-plain/segment,plasticlm-plain/full,transformer/full,"
                    "gla/full", "--out", str(work), "--no-progress", "--time-budget", str(int(self.box - 20))]
        if self.name == "memory":
            return [PY, str(ROOT / "benchmarks" / "memory_flat.py"), "--preset", "base", "--device", "cuda",
                    "--lengths", "8192,1048576", "--out", str(work)]
        if self.name == "infer":
            return [*cli, "bench", "--preset", "h100", "--suite", "infer", "--out", str(work), "--no-progress",
                    "--time-budget", str(int(self.box - 10))]
        if self.name == "mqar":
            return [*cli, "experiment", "mqar", "--device", "cuda", "--out", str(work / "mqar"), "--no-progress",
                    "d_models=[128, 256, 512]", "protocol.batch_size=256", "protocol.max_steps=3000"]
        raise ValueError(self.name)


STAGES = [
    Stage("tests", 150, "gpu-marked tests (kernel vs chunk, bf16 segment BPTT, training steps, state files)"),
    Stage("headline", 170, "~110M, 65,536 tokens/step, T = 32,768, every trainer side by side"),
    Stage("memory", 90, "peak memory of a whole-sequence step at T = 8,192 and 1,048,576"),
    Stage("infer", 60, "prefill and generation speed, memory against context"),
    Stage("mqar", 600, "E1 at Zoology's widths, as far as the time goes"),
]


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def environment(work: Path) -> dict[str, str]:
    """PYTHONPATH with the source tree and a sitecustomize that pins fla's autotuners in every
    process the stages start."""
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "try:\n"
        f"    import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "    import fla_configs; fla_configs.pin()\n"
        "except ImportError:\n"
        "    pass\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def pack(out: Path, work: Path, summary: dict) -> None:
    """Results so far into OUT: the tarball of the working folder and the summary beside it."""
    tmp = out / ".gpu_results.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.is_file() and "site" not in p.relative_to(work).parts and p.stat().st_size < 50 << 20:
                tar.add(p, arcname=str(p.relative_to(work)))
    tmp.replace(out / "gpu_results.tar.gz")
    (out / "gpu_summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["# GPU call", "", f"- {summary['machine']}", f"- commit {summary['commit']}, torch {summary['torch']}, "
             f"fla {summary.get('fla')}; {summary['date']}", f"- command: `{summary['command']}`",
             "- fla's kernels pinned to one launch config each (no autotuning): timings are untuned", "",
             "| stage | status | seconds | what |", "|---|---|---:|---|"]
    for s in summary["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['what']} |")
    (out / "gpu_summary.md").write_text("\n".join(lines) + "\n")


def run(args) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from plasticlm.provenance import provenance

    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results/gpu")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-work-"))
    have_cuda = cuda_available() and not args.dry_run
    meta = provenance("cuda" if have_cuda else "cpu", ["bash", "benchmarks/gpu.sh", *sys.argv[1:]])
    summary = {**meta, "machine": meta["device"], "budget_s": args.budget, "stages": []}
    if have_cuda:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        summary["nvidia_smi"] = smi.stdout.strip()
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {s.name for s in STAGES}
    if unknown:
        print(f"gpu.py: unknown stages {sorted(unknown)}; stages: {[s.name for s in STAGES]}", file=sys.stderr)
        return 2
    env = environment(work)
    t0 = time.monotonic()
    for stage in STAGES:
        entry = {"name": stage.name, "what": stage.what, "seconds": 0.0}
        left = args.budget - (time.monotonic() - t0)
        box = min(stage.box, left - 5)
        if only is not None and stage.name not in only:
            entry["status"] = "skipped: not asked for"
        elif not have_cuda:
            entry["status"] = "skipped: no CUDA" if not args.dry_run else "skipped: dry run"
        elif box < 5:
            entry["status"] = f"skipped: the budget is spent ({left:.0f} s left)"
        else:
            stage.box = box
            cmd = stage.command(work)
            print(f"gpu.py: {stage.name} (box {box:.0f} s): {' '.join(cmd)}", flush=True)
            s0 = time.monotonic()
            with open(work / f"{stage.name}.log", "w") as log:
                try:
                    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=box)
                    entry["status"] = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
                except subprocess.TimeoutExpired:
                    entry["status"] = f"cut at its box of {box:.0f} s (what it wrote is kept)"
            entry["seconds"] = time.monotonic() - s0
            tail = (work / f"{stage.name}.log").read_text(errors="replace").splitlines()[-3:]
            print(f"gpu.py: {stage.name}: {entry['status']}; " + " | ".join(tail), flush=True)
        summary["stages"].append(entry)
        pack(out, work, summary)
    print(f"gpu.py: {sum(s['status'] == 'ok' for s in summary['stages'])} of {len(STAGES)} stages ok in "
          f"{time.monotonic() - t0:.0f} s; results in {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def collect(folder: Path) -> int:
    """Unpack a returned call into benchmarks/results/DATE_HARDWARE_gpu/ (summary and every file)."""
    summary = json.loads((folder / "gpu_summary.json").read_text())
    dest = ROOT / "benchmarks" / "results" / f"{summary['date'][:10]}_{summary['hardware']}_gpu"
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "gpu_results.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    for name in ("gpu_summary.json", "gpu_summary.md"):
        shutil.copy(folder / name, dest / name)
    print(f"collected into {dest}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/results/gpu)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together")
    ap.add_argument("--only", default=None, help="comma-separated stages to run")
    ap.add_argument("--dry-run", action="store_true", help="plan and report only, as without CUDA")
    ap.add_argument("--collect", default=None, metavar="FOLDER", help="unpack a returned call into benchmarks/results")
    args = ap.parse_args()
    return collect(Path(args.collect)) if args.collect else run(args)


if __name__ == "__main__":
    sys.exit(main())
