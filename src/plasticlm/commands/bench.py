"""plasticlm bench [--preset cpu|h100|smoke] [--suite ...] [overrides]"""
from __future__ import annotations

import argparse


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(x)) for x in s.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _strs(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure training and inference speed and memory beside the baselines",
        description=(
            "Training tokens/s, peak memory and model FLOP/s utilisation against sequence length for plasticlm "
            "(exact segment trainer, reversible and plain, boundary states on device or host) and its baselines "
            "(same model under full autograd, an SDPA Transformer, GLA and Mamba-2, all of equal parameter count), "
            "side by side in one run; inference tokens/s for prefill and step-by-step generation and memory against "
            "context length; and the memory's execution paths (naive / chunk / kernel). Results go to OUT as "
            "DATE_HARDWARE_PRESET.{json,md} with PNG plots, rewritten after every job. Out-of-memory "
            "configurations are recorded as OOM. On CPU each job runs in a fresh process and memory is its peak "
            "resident set size; on CUDA it is torch.cuda.max_memory_allocated. Presets: cpu (the README's small "
            "model), h100 (~110M parameters, 65,536 tokens per step, T from 1k to 1M), smoke (seconds)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="cpu", help="cpu, h100 or smoke; the flags below override its fields")
    p.add_argument("--suite", type=_strs, help="comma-separated: train, infer, paths (default: all)")
    p.add_argument("--variants", type=_strs, help="training variants, e.g. plasticlm-rev/segment,transformer/full")
    p.add_argument("--seq-lens", type=_ints, help="training lengths T, e.g. 1024,32768,1048576")
    p.add_argument("--tokens-per-step", type=int, help="B x T per optimizer step")
    p.add_argument("--segment-tokens", type=int, help="B x L tokens per segment of the segment trainer")
    p.add_argument("--loss", choices=("chunked", "plain"), help="chunked cross-entropy or full logits")
    p.add_argument("--models", type=_strs, help="inference models: plasticlm,transformer,gla,mamba2")
    p.add_argument("--contexts", type=_ints, help="inference context lengths")
    p.add_argument("--gen-batches", type=_ints, help="generation batch sizes, e.g. 1,64")
    p.add_argument("--paths-t", type=int, help="length for the execution-path comparison")
    p.add_argument("--model", metavar="JSON", help='PlasticLM config fields as JSON, e.g. \'{"d_model": 256}\'')
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"))
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile each mixer and feed-forward")
    p.add_argument("--steps", type=int, help="timed steps per job (cut to fit --job-seconds)")
    p.add_argument("--warmup", type=int, help="untimed steps first (autotuning, compilation)")
    p.add_argument("--job-seconds", type=float, help="time per job for its timed steps")
    p.add_argument("--time-budget", type=float, help="stop starting jobs after this many seconds")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="each job in a fresh subprocess (default: on CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s for utilisation (default: by device name)")
    p.add_argument("--profile", type=_strs, help="VARIANT@T items to profile (one step each)")
    p.add_argument("--out", help="output folder (default benchmarks/results)")
    p.add_argument("--name", help="file stem (default DATE_HARDWARE_PRESET_TAG, or _SUITES without a tag)")
    p.add_argument("--tag", help="suffix of the default file stem")
    p.add_argument("--resume", action="store_true", default=None, help="skip jobs already in the output JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


FLAGS = {"suite": "suites", "variants": "variants", "seq_lens": "seq_lens", "tokens_per_step": "tokens_per_step",
         "segment_tokens": "segment_tokens", "loss": "loss", "models": "infer_models", "contexts": "contexts",
         "gen_batches": "gen_batches", "paths_t": "paths_T", "device": "device", "dtype": "dtype",
         "compile": "compile", "steps": "steps", "warmup": "warmup", "job_seconds": "job_seconds",
         "time_budget": "time_budget", "isolate": "isolate", "threads": "threads", "peak_tflops": "peak_tflops",
         "profile": "profile", "out": "out", "name": "name", "tag": "tag", "resume": "resume"}


def run(args) -> int:
    import json
    import shlex
    import sys

    from ..bench import make_config
    from ..bench import run as run_bench
    from ..bench.runner import PRESETS

    overrides = {field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None}
    if args.model:
        try:
            extra = json.loads(args.model)
        except json.JSONDecodeError as e:
            raise ValueError(f"--model must be a JSON object, got {args.model!r}: {e}") from None
        overrides["model"] = {**PRESETS.get(args.preset, {}).get("model", make_config("cpu").model), **extra}
    cfg = make_config(args.preset, **overrides)
    path = run_bench(cfg, command="plasticlm " + shlex.join(sys.argv[1:]), progress=not args.no_progress)
    print(f"results: {path} and {path.with_suffix('.md')}")
    return 0
