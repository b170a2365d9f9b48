"""plasticlm train RECIPE [key=value ...]"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a recipe",
        description="Train a PlasticLM with exact segment-wise BPTT. RECIPE is a shipped recipe name "
                    "(tiny: the CPU default) or a YAML file; key=value pairs override its fields, "
                    "e.g. `plasticlm train tiny steps=20 model.d_model=64 optim.lr=1e-3`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("recipe", nargs="?", default="tiny", help="recipe name or path to a .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted for sections")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..trainer.config import load_config
    from ..trainer.loop import train

    cfg = load_config(args.recipe, args.overrides)
    s = train(cfg, progress=not args.no_progress)
    print(f"done: {s['steps']} steps, {s['tokens']:,} tokens in {s['seconds']:.0f}s ({s['tok_s']:,} tok/s), "
          f"{s['params'] / 1e6:.2f}M params; train loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}; "
          f"valid loss {s['valid_loss']:.3f} ({s['valid_bits_per_byte']:.3f} bits/byte); "
          f"checkpoint {s['checkpoint']}")
    return 0
