"""plasticlm aunn {train,generate}: the Absolute Unit NN baseline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("aunn", help="the Absolute Unit NN baseline: train, generate",
                       description="The Absolute Unit NN: an MLP from a token's absolute index to the token, "
                                   "which reads by taking gradient steps on (index, token) pairs.")
    cmds = p.add_subparsers(dest="aunn_command", metavar="SUBCOMMAND", required=True)

    t = cmds.add_parser(
        "train", help="fit an AUNN to a text (byte tokens) offline",
        description="Train an AUNN on random (index, token) pairs of a text laid out at indices 0..N-1 "
                    "(the end of the text, valid_fraction of it, is held out as what follows). key=value "
                    "pairs set fields of AUNNRunConfig, dotted for sections, e.g. `plasticlm aunn train "
                    "model.width=128 model.depth=3 train.steps=300 train.batch_size=2048 out_dir=runs/aunn`.",
        epilog="defaults: " + _defaults(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config fields: model.*, train.*, source, "
                   "valid_fraction, out_dir, device, save_every")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir from its trainer state (key=value pairs apply on top of "
                        "its run.json, e.g. a larger train.steps)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    t.set_defaults(func=run_train)

    g = cmds.add_parser(
        "generate", help="read a prompt by gradient steps, then sample a continuation",
        description="Load an AUNN checkpoint, read PROMPT at the indices after its training stream "
                    "(k gradient steps per token), then repeatedly predict the first unseen index, sample, "
                    "and train on the sampled token, e.g. `plasticlm aunn generate runs/aunn --prompt 'The ' "
                    "--online steps=8 lr=3e-3 window=64`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("checkpoint", help="directory written by `plasticlm aunn train`")
    g.add_argument("--online", nargs="+", default=[], metavar="key=value",
                   help="OnlineConfig fields: steps, optimizer, lr, beta1, beta2, eps, decay, chunk_len, window, "
                        "grad_clip")
    g.add_argument("--prompt", default="The ", help="text to read first")
    g.add_argument("--max-new-tokens", type=int, default=100)
    g.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=0, help="seeds the sampler; the same seed gives the same text")
    g.add_argument("--device", default="auto")
    g.set_defaults(func=run_generate)


def _defaults() -> str:
    import dataclasses

    from ..aunn.config import AUNNRunConfig

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"]

    return " ".join(flat(dataclasses.asdict(AUNNRunConfig())))


def parse_overrides(items: list[str], base: dict | None = None) -> dict:
    """``a.b=value`` pairs (values parsed as YAML scalars) merged into a copy of ``base``."""
    import copy

    from ..settings import apply_overrides

    return apply_overrides(copy.deepcopy(base or {}), items, example="train.lr=1e-3")


def run_train(args) -> int:
    from ..aunn.config import AUNNRunConfig
    from ..aunn.run import RUN_CONFIG, train_run
    from ..trainer.config import from_dict

    data = parse_overrides(args.overrides)
    if args.resume:
        out = Path(data.get("out_dir", AUNNRunConfig.out_dir))
        if not (out / RUN_CONFIG).exists():
            raise FileNotFoundError(f"--resume: no run at {out} ({out / RUN_CONFIG} does not exist)")
        data = parse_overrides(args.overrides, json.loads((out / RUN_CONFIG).read_text()))
    cfg = from_dict(AUNNRunConfig, data)
    s = train_run(cfg, resume=args.resume, progress=not args.no_progress)
    nil = f"{s['next_index_loss']:.3f} nats" if s["next_index_loss"] is not None else "n/a"
    print(f"done: {s['steps']} steps in {s['seconds']:.0f}s, {s['params'] / 1e6:.2f}M params, "
          f"{s['stream_tokens']:,} tokens at indices [0, {s['next_index']:,}); memorisation loss "
          f"{s['memorisation_loss']:.3f} nats; held-out text at the next indices, unread: {nil}; "
          f"checkpoint {s['checkpoint']}")
    return 0


def run_generate(args) -> int:
    import torch

    from ..aunn import AUNNAsLM, OnlineConfig, load_aunn
    from ..trainer.config import from_dict
    from ..device import pick_device

    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    device = pick_device(args.device)
    model, tok, _ = load_aunn(args.checkpoint, device)
    lm = AUNNAsLM(model, from_dict(OnlineConfig, parse_overrides(args.online)))
    prompt = tok.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt is empty: the AUNN needs at least one token to read")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    new, _ = lm.generate(torch.tensor([prompt], device=device), lm.init_state(1), args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, generator=gen)
    print(args.prompt + tok.decode(new[0].tolist()))
    return 0
