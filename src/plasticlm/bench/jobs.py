"""One benchmark measurement each: a training configuration, an inference configuration, or
the memory paths compared at one length. A job is a plain dict (so it can run in a fresh
subprocess); running it returns a dict of measurements, or of the error that stopped it.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` (tensors only, the allocator's view).
On CPU, the process's peak resident set size (``ru_maxrss``), which is only meaningful in a
fresh process per job; ``base_rss_GiB`` is the resident size after imports, before the job.
"""
from __future__ import annotations

import contextlib
import gc
import resource
import time

import torch
import torch.nn.functional as F

from .. import archs
from ..trainer.chunked_ce import chunked_cross_entropy
from ..trainer.segment import activations_fit, segment_backward
from .models import TRAIN_VARIANTS, bench_model, peak_tflops, train_flops_per_token

GiB = 2 ** 30


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _memory(device) -> dict:
    if device.type == "cuda":
        return {"peak_GiB": round(torch.cuda.max_memory_allocated(device) / GiB, 3), "memory": "cuda_max_allocated"}
    return {"peak_GiB": round(peak_rss() / GiB, 3), "memory": "cpu_peak_rss"}


def _timed(step, device, steps: int, warmup: int, budget_s: float) -> tuple[float, int]:
    """Seconds per step (mean over the timed steps) and how many were timed.

    Warmup steps run first (kernel autotuning, allocator growth, compilation). The number of
    timed steps shrinks so the job stays within ``budget_s`` at the first step's pace.
    """
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    n = max(1, min(steps, int(budget_s / max(first, 1e-9))))
    if n == 1:
        return first, 1
    t0 = time.perf_counter()
    for _ in range(n - 1):
        step()
    _sync(device)
    return (first + time.perf_counter() - t0) / n, n


def train_job(job: dict, device: torch.device) -> dict:
    """Training tokens/s, peak memory and model FLOP/s of one variant at (B, T)."""
    spec = TRAIN_VARIANTS[job["variant"]]
    B, T = job["B"], job["T"]
    torch.manual_seed(0)
    baseline = dict(job.get("baseline") or {})
    baseline[spec["model"]] = {**baseline.get(spec["model"], {}), **spec.get("baseline", {})}
    model = bench_model(spec["model"], job["model"], spec.get("reversible"), baseline).to(device)
    L = min(T, max(1, job["segment_tokens"] // B))
    if spec["model"] == "plasticlm":  # reversible coupling: activations stored unless asked or they do not fit
        model.reconstruct = spec["trainer"] == "segment" and spec.get("reconstruct", not activations_fit(model, B, L)[0])
    if job.get("compile"):
        compile_submodules(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    x = torch.randint(0, V, (B, T), generator=gen).to(device)
    y = torch.randint(0, V, (B, T), generator=gen).to(device)
    fused = job["loss"] == "chunked"

    def step():
        with _autocast(device, job["dtype"]):
            if spec["trainer"] == "segment":
                segment_backward(model, x, y, L, storage=spec["storage"], fused_loss=fused)
            else:
                h, _ = model.hidden(x)
                if fused:
                    loss = chunked_cross_entropy(h, model.embed.weight, y)
                else:
                    loss = F.cross_entropy(F.linear(h, model.embed.weight).flatten(0, 1).float(), y.flatten())
                loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if job.get("profile_dir"):
        return profile_step(step, device, job)
    sec, n = _timed(step, device, job["steps"], job["warmup"], job["job_seconds"])
    flops = train_flops_per_token(model, T) * B * T / sec
    peak = job.get("peak_tflops") or peak_tflops(device)
    out = {"tok_s": round(B * T / sec), "step_s": round(sec, 4), "timed_steps": n, "params": model.num_params(),
           "segment_len": L if spec["trainer"] == "segment" else None, "model_TFLOPs": round(flops / 1e12, 3),
           "mfu": round(flops / 1e12 / peak, 4) if peak else None,
           "reconstruct": getattr(model, "reconstruct", None) if spec["model"] == "plasticlm" else None, **_memory(device)}
    return out


def compile_submodules(model) -> None:
    """Opt-in torch.compile of each block's mixer and feed-forward, in place.

    Compiling parts rather than the whole model keeps the reversible stack's custom autograd
    and the segment trainer's Python control flow in eager mode, where they belong.
    """
    for block in model.blocks:
        for name in ("memory", "attn", "mixer", "ffn"):
            sub = getattr(block, name, None)
            if sub is not None:
                sub.compile(dynamic=True)


def profile_step(step, device, job) -> dict:
    """One warmed-up step under torch.profiler; writes the op table (and a trace) to profile_dir."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    for _ in range(max(1, job["warmup"])):
        step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        step()
        _sync(device)
    out = Path(job["profile_dir"])
    out.mkdir(parents=True, exist_ok=True)
    stem = f"profile_{job['variant'].replace('/', '_')}_T{job['T']}"
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40)
    (out / f"{stem}.txt").write_text(f"{job['variant']} B={job['B']} T={job['T']} on {device}\n{table}\n")
    if job.get("trace"):
        prof.export_chrome_trace(str(out / f"{stem}.trace.json"))
    return {"profile": str(out / f"{stem}.txt")}


def infer_job(job: dict, device: torch.device) -> dict:
    """Read a context of C tokens at batch B, then generate G tokens one at a time.

    The context is drawn piece by piece from a seeded generator, so no (B, C) tensor exists
    and memory shows the model's own needs: for plasticlm a constant-size state, for the
    Transformer a KV cache growing with C.
    """
    B, C, G, piece = job["B"], job["context"], job["gen_tokens"], job["piece"]
    torch.manual_seed(0)
    model = bench_model(job["model_name"], job["model"], None, job.get("baseline")).to(device).eval()
    lm = archs.as_lm(model, piece=piece)
    gen = torch.Generator().manual_seed(0)
    V = model.config.vocab_size
    with torch.no_grad(), _autocast(device, job["dtype"]):
        state = lm.init_state(B)
        _sync(device)
        t0 = time.perf_counter()
        for a in range(0, C, piece):
            state = lm.read(torch.randint(0, V, (B, min(piece, C - a)), generator=gen).to(device), state)
        _sync(device)
        prefill = time.perf_counter() - t0
        tok = torch.randint(0, V, (B,), generator=gen).to(device)
        t0 = time.perf_counter()
        for _ in range(G):
            logits, state = model.step(tok, state)
            tok = logits.argmax(-1)
        _sync(device)
        gen_s = time.perf_counter() - t0
    layers = state.keys + state.values if hasattr(state, "keys") else state.layers
    state_bytes = sum(t.numel() * t.element_size() for t in layers)
    return {"prefill_tok_s": round(B * C / prefill), "gen_tok_s": round(B * G / gen_s), "prefill_s": round(prefill, 3),
            "state_MiB": round(state_bytes / 2 ** 20, 3), "params": model.num_params(), **_memory(device)}


def paths_job(job: dict, device: torch.device) -> dict:
    """The memory recurrence's execution paths at length T: the op alone (gated_average with the
    model's shapes) and one small model around it, each forward without a graph and forward +
    backward (full autograd); mean seconds over up to ``steps`` runs."""
    from ..ops import gated_average

    torch.manual_seed(0)
    model = bench_model("plasticlm", {**job["model"], "mode": job["mode"]}).to(device)
    model.reconstruct = False
    c = model.config
    B, T = job["B"], job["T"]
    x = torch.randint(0, c.vocab_size, (B, T), device=device)
    q, k = (torch.randn(B, T, c.n_heads, c.k_dim, device=device, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, c.n_heads, c.v_dim, device=device, requires_grad=True)
    log_a = F.logsigmoid(torch.randn(B, T, c.n_heads, c.k_dim, device=device) + 4).requires_grad_()

    def op_fwd():
        with torch.no_grad():
            gated_average(q, k, v, log_a, mode=job["mode"], chunk_size=c.chunk_size)

    def op_fwd_bwd():
        o, S = gated_average(q, k, v, log_a, mode=job["mode"], chunk_size=c.chunk_size)
        (o.square().mean() + S.square().mean()).backward()

    def fwd():
        with torch.no_grad():
            model(x)

    def fwd_bwd():
        logits, _ = model(x)
        logits.float().logsumexp(-1).mean().backward()

    out = {}
    for name, fn in (("op_forward", op_fwd), ("op_forward_backward", op_fwd_bwd), ("forward", fwd),
                     ("forward_backward", fwd_bwd)):
        sec, n = _timed(fn, device, job["steps"], job["warmup"], job["job_seconds"])
        out[f"{name}_s"] = round(sec, 4)
        out["timed_steps"] = min(n, out.get("timed_steps", n))
    return {**out, **_memory(device)}


RUNNERS = {"train": train_job, "infer": infer_job, "paths": paths_job}


def run_job(job: dict, device: torch.device) -> dict:
    """Run one job; an out-of-memory error is a result ({"oom": true}), not a crash."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        return RUNNERS[job["suite"]](job, device)
    except Exception as e:  # noqa: BLE001 - any failure of one configuration is recorded, the run goes on
        if is_oom(e):
            return {"oom": True, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        raise
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
