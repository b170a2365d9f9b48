"""``plasticlm bench``: plan the jobs of a preset, run them one by one, write results as they come.

Every job is caught on its own: an out-of-memory configuration becomes a row marked OOM, any
other failure a row with its error, and the run goes on. The JSON and markdown are rewritten
after every job, so a run cut short (a killed process, ``--time-budget``) leaves everything it
measured; ``--resume`` skips jobs already in the JSON.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..device import pick_device
from ..provenance import git_commit
from ..provenance import provenance as shared_provenance
from .models import INFER_MODELS, TRAIN_VARIANTS

SUITES = ("train", "infer", "paths")

# The README's CPU model (recipes/tiny.yaml) and the ~110M configuration of the GPU anchors.
CPU_MODEL = {"vocab_size": 272, "d_model": 128, "n_layers": 4, "n_heads": 4}
GPU_MODEL = {"vocab_size": 32000, "d_model": 768, "n_layers": 12, "n_heads": 12, "ffn_hidden": 2048}


@dataclass
class BenchConfig:
    """What one ``plasticlm bench`` run measures. Presets fill it; command-line flags override fields."""

    preset: str = "cpu"
    suites: tuple[str, ...] = ("train", "infer", "paths")
    model: dict = field(default_factory=lambda: dict(CPU_MODEL))
    """PlasticLM config fields; every baseline is sized to the same parameter count."""
    baseline: dict = field(default_factory=dict)
    """Per-baseline config overrides, e.g. {"mamba2": {"state_size": 64}}."""
    variants: tuple[str, ...] = tuple(TRAIN_VARIANTS)
    """Training variants (model/trainer), see bench.models.TRAIN_VARIANTS."""
    seq_lens: tuple[int, ...] = (256, 1024, 4096, 16384)
    """Training sequence lengths T, run in this order (put the headline first)."""
    tokens_per_step: int = 8192
    """B x T per optimizer step; B = max(1, tokens_per_step // T)."""
    segment_tokens: int = 1024
    """Tokens in flight per segment of the segment trainer: L = segment_tokens // B."""
    loss: str = "chunked"
    """'chunked' (chunked_cross_entropy, no full logits) or 'plain' (logits, then cross-entropy)."""
    infer_models: tuple[str, ...] = ("plasticlm", "transformer", "gla", "mamba2")
    contexts: tuple[int, ...] = (1024, 16384, 262144, 1048576)
    """Context lengths read before generating."""
    max_context: dict = field(default_factory=lambda: {"transformer": 16384, "gla": 262144, "mamba2": 262144})
    """Longest context per model (attention's cost grows with the context squared)."""
    gen_batches: tuple[int, ...] = (1, 16)
    wide_max_context: int = 16384
    """Longest context read at batch sizes above 1 (reading costs B x C tokens)."""
    gen_tokens: int = 64
    piece: int = 4096
    """Tokens read per forward call during prefill."""
    paths_T: int = 4096
    """Length at which the memory's execution paths are compared."""
    paths_modes: tuple[str, ...] = ("naive", "chunk")
    device: str = "auto"
    dtype: str = "auto"
    """'bf16' (autocast) or 'fp32'; auto is bf16 on CUDA, fp32 on CPU."""
    compile: bool = False
    steps: int = 3
    warmup: int = 1
    job_seconds: float = 30.0
    """Timed steps per job are cut to fit this many seconds at the first step's pace."""
    time_budget: float = 0.0
    """Stop starting jobs after this many seconds (0: no limit); the rest are listed as not run."""
    isolate: bool | None = None
    """Each job in a fresh subprocess (peak RSS per job); None: on CPU yes, on CUDA no."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    peak_tflops: float = 0.0
    """Peak dense TFLOP/s for utilisation; 0: from the device name (bench.models.PEAK_TFLOPS)."""
    out: str = "benchmarks/results"
    name: str = ""
    """File stem; empty: DATE_HARDWARE_PRESET, then _TAG, or _SUITES when not all suites run."""
    tag: str = ""
    """Ends the default file stem, to tell apart runs of one preset on one day."""
    resume: bool = False
    profile: tuple[str, ...] = ()
    """VARIANT@T items: profile one training step of each, op table written beside the results."""


PRESETS = {
    # One torch thread: the CPU figures stay comparable on a machine that other processes share.
    "cpu": dict(threads=1),
    # The GPU acceptance run: ~110M parameters, 65,536 tokens per step, T from 1k to 1M.
    # The headline lengths come first so a run cut short still has them.
    "h100": dict(model=dict(GPU_MODEL), seq_lens=(32768, 1048576, 1024, 4096, 16384, 131072),
                 tokens_per_step=65536, segment_tokens=16384, contexts=(1024, 16384, 131072, 1048576),
                 max_context={"transformer": 131072}, gen_batches=(1, 64), wide_max_context=131072, gen_tokens=128, piece=16384,
                 paths_modes=("naive", "chunk", "kernel"), steps=5, warmup=1, job_seconds=20.0,
                 profile=("plasticlm-rev/segment@32768", "plasticlm-rev/full@32768", "transformer/full@32768")),
    # A test-sized run: seconds on CPU.
    "smoke": dict(model={"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 2},
                  baseline={"mamba2": {"state_size": 16, "mamba_head_dim": 16}}, seq_lens=(64, 256),
                  tokens_per_step=256, segment_tokens=64, contexts=(256, 2048), max_context={"transformer": 256},
                  gen_batches=(1, 2), gen_tokens=4, piece=512, paths_T=128, steps=2, warmup=1, job_seconds=5.0,
                  threads=1),
}


def make_config(preset: str, **overrides) -> BenchConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"BenchConfig has no field {bad[0]!r}")
    cfg = BenchConfig(preset=preset, **{**PRESETS[preset], **overrides})
    for s in cfg.suites:
        if s not in SUITES:
            raise ValueError(f"unknown suite {s!r}; choose from {SUITES}")
    for v in cfg.variants:
        if v not in TRAIN_VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {sorted(TRAIN_VARIANTS)}")
    for m in cfg.infer_models:
        if m not in INFER_MODELS:
            raise ValueError(f"unknown model {m!r}; choose from {INFER_MODELS}")
    if cfg.loss not in ("chunked", "plain"):
        raise ValueError(f"loss must be 'chunked' or 'plain', got {cfg.loss!r}")
    for p in cfg.profile:
        if "@" not in p or p.split("@")[0] not in TRAIN_VARIANTS or not p.split("@")[1].isdigit():
            raise ValueError(f"profile item {p!r} must be VARIANT@T with VARIANT one of {sorted(TRAIN_VARIANTS)}")
    return cfg


def resolve_device(name: str) -> torch.device:
    return pick_device(name, select=False)


def plan(cfg: BenchConfig, device: torch.device) -> list[dict]:
    """The jobs of a run, in order. Each is a JSON-able dict with a unique ``key``."""
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    common = {"device": str(device), "dtype": dtype, "model": cfg.model, "baseline": cfg.baseline,
              "steps": cfg.steps, "warmup": cfg.warmup, "job_seconds": cfg.job_seconds, "threads": cfg.threads,
              "peak_tflops": cfg.peak_tflops or None}
    jobs = []
    if "paths" in cfg.suites:
        for mode in cfg.paths_modes:
            jobs.append({**common, "suite": "paths", "mode": mode, "B": 1, "T": cfg.paths_T,
                         "key": f"paths|{mode}|T{cfg.paths_T}"})
    if "train" in cfg.suites:
        for T in cfg.seq_lens:
            B = max(1, cfg.tokens_per_step // T)
            for v in cfg.variants:
                jobs.append({**common, "suite": "train", "variant": v, "T": T, "B": B, "loss": cfg.loss,
                             "segment_tokens": cfg.segment_tokens, "compile": cfg.compile,
                             "key": f"train|{v}|T{T}|B{B}"})
    if "infer" in cfg.suites:
        for m in cfg.infer_models:
            for C in cfg.contexts:
                if C > cfg.max_context.get(m, C):
                    continue
                for B in (b for b in cfg.gen_batches if b == 1 or C <= cfg.wide_max_context):
                    jobs.append({**common, "suite": "infer", "model_name": m, "context": C, "B": B,
                                 "gen_tokens": cfg.gen_tokens, "piece": cfg.piece, "key": f"infer|{m}|C{C}|B{B}"})
    return jobs


def run_isolated(job: dict, timeout: float | None) -> dict:
    """Run a job in a fresh interpreter (peak RSS is then the job's own)."""
    cmd = [sys.executable, "-m", "plasticlm.bench.worker", json.dumps(job)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if p.returncode == -9:
        return {"oom": True, "error": "killed by SIGKILL (the kernel's out-of-memory killer?)"}
    last = (p.stderr.strip().splitlines() or ["no output"])[-1]  # the exception's own line
    return {"error": f"worker exited {p.returncode}: {last}"}


def provenance(device: torch.device, command: str) -> dict:
    meta = {**shared_provenance(device, command), "commit": git_commit(short=True),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device.type != "cuda":
        meta["memory_note"] = "peak resident set size of a fresh process per job (ru_maxrss), torch included"
    return meta


def run(cfg: BenchConfig, command: str = "", progress: bool = True) -> Path:
    """Run every job of ``cfg``; returns the JSON path. Markdown and PNGs are written beside it."""
    from tqdm import tqdm

    from .jobs import run_job
    from .report import write_report

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    isolate = cfg.isolate if cfg.isolate is not None else device.type == "cpu"
    meta = provenance(device, command or " ".join(sys.argv))
    meta["isolated_jobs"] = isolate
    if device.type == "cpu" and not isolate:
        meta["memory_note"] = "peak resident set size of the whole run so far, not per job (use --isolate)"
    suffix = f"_{cfg.tag}" if cfg.tag else "" if set(cfg.suites) == set(SUITES) else "_" + "-".join(cfg.suites)
    stem = cfg.name or f"{meta['date'][:10]}_{meta['hardware']}_{cfg.preset}{suffix}"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    rows = json.loads(path.read_text())["rows"] if cfg.resume and path.exists() else []
    done = {r["key"] for r in rows if "error" not in r or r.get("oom")}
    rows = [r for r in rows if r["key"] in done]
    meta["resumed_rows"] = len(rows)  # rows of an earlier run; each row carries its own date and commit
    if device.type == "cpu" and not cfg.peak_tflops:
        from .models import matmul_peak_tflops

        cfg = dataclasses.replace(cfg, peak_tflops=round(matmul_peak_tflops(device), 4))
        meta["peak_tflops_note"] = (f"MFU against the measured fp32 matmul rate of this process, "
                                    f"{cfg.peak_tflops} TFLOP/s (1024 x 1024 products, {torch.get_num_threads()} threads)")
    jobs = [j for j in plan(cfg, device) if j["key"] not in done]
    profiles = [p.split("@") for p in cfg.profile] if "train" in cfg.suites else []
    for variant, T in profiles:
        T = int(T)
        B = max(1, cfg.tokens_per_step // T)
        base = next((j for j in plan(dataclasses.replace(cfg, suites=("train",), seq_lens=(T,)), device)
                     if j["variant"] == variant), None)
        key = f"profile|{variant}|T{T}|B{B}"
        if base and key not in done:
            jobs.append({**base, "key": key, "profile_dir": str(out / f"{stem}_profiles")})

    t_start = time.perf_counter()
    bar = tqdm(jobs, desc="bench", unit="job", disable=not progress, dynamic_ncols=True)
    for job in bar:
        bar.set_postfix_str(job["key"])
        elapsed = time.perf_counter() - t_start
        if cfg.time_budget and elapsed > cfg.time_budget:
            res = {"error": f"not run: time budget of {cfg.time_budget:.0f}s spent"}
        elif isolate:
            left = cfg.time_budget - elapsed if cfg.time_budget else None
            res = run_isolated(job, timeout=max(60.0, left) if left else None)
        else:
            try:
                res = run_job(job, device)
            except Exception as e:  # noqa: BLE001 - one failing configuration must not end the run
                res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        row = {k: v for k, v in job.items() if k not in ("model", "baseline", "device", "job_seconds", "threads")}
        rows.append({**row, **res, "date": meta["date"], "commit": meta["commit"]})  # kept when resumed
        write_report(path, {"meta": meta, "config": dataclasses.asdict(cfg), "rows": rows}, plots=False)
    bar.close()
    write_report(path, {"meta": meta, "config": dataclasses.asdict(cfg), "rows": rows}, plots=True)
    return path
