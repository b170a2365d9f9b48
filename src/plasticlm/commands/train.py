"""plasticlm train RECIPE [key=value ...] [--nproc N] [--max-restarts R]"""
from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a recipe",
        description="Train a model with exact segment-wise BPTT. RECIPE is a shipped recipe name "
                    "(tiny: the CPU default; small, base: one GPU; traditional, linked, shuffled: the "
                    "pretraining stages; stages: all three in order) or a YAML file; key=value pairs override "
                    "its fields, e.g. `plasticlm train tiny steps=20 model.d_model=64 optim.lr=1e-3`. "
                    "A run resumes from the newest checkpoint in its out_dir; SIGTERM saves one and stops.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("recipe", nargs="?", default="tiny", help="recipe name or path to a .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted for sections")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--nproc", type=int, default=1,
                   help="worker processes on this machine, launched with torchrun (data parallel: gloo on CPU, "
                        "NCCL on GPU; one GPU per process)")
    p.add_argument("--max-restarts", type=int, default=0,
                   help="restart all workers from the newest checkpoint up to this many times when one dies "
                        "(torchrun elastic); set checkpoint.every so little is lost")
    p.set_defaults(func=run)


def summary_line(s: dict) -> str:
    bpb = f" ({s['valid_bits_per_byte']:.3f} bits/byte)" if s.get("valid_bits_per_byte") is not None else ""
    params = f", {s['params'] / 1e6:.2f}M params" if s.get("params") else ""
    skipped = f", {s['skipped_steps']} non-finite steps skipped" if s.get("skipped_steps") else ""
    return (f"done: {s['steps']} steps, {s['tokens']:,} tokens in {s['seconds']:.0f}s ({s['tok_s']:,} tok/s){params}; "
            f"train loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}; valid loss {s['valid_loss']:.3f}{bpb}"
            f"{skipped}; checkpoint {s['checkpoint']}")


def run(args) -> int:
    from ..trainer.config import load_plan

    configs = load_plan(args.recipe, args.overrides)  # parse here, so a bad key fails before any launch
    if args.nproc > 1 or args.max_restarts > 0:
        from ..trainer.distributed import launch

        program = ["-m", "plasticlm.cli", "train", args.recipe, *args.overrides]
        if args.no_progress:
            program.append("--no-progress")
        return launch(args.nproc, args.max_restarts, program)

    from ..trainer.loop import Stopped, TrainingError, run_plan

    try:
        summaries = run_plan(configs, progress=not args.no_progress)
    except Stopped as e:
        print(f"plasticlm train: {e}; run the same command to resume", file=sys.stderr)
        return 143
    except TrainingError as e:
        print(f"plasticlm train: error: {e}", file=sys.stderr)
        return 1
    for s in summaries:
        if s:  # ranks other than 0 print nothing
            print(summary_line(s))
    return 0
