"""plasticlm eval CHECKPOINT --suite NAME[,NAME...] [suite.field=value ...]"""
from __future__ import annotations

import argparse
import sys

SUITE_HELP = ("perplexity (token/word perplexity, bits per byte, loss vs position), probes (template and "
              "drift plasticity probes), qa (read-then-ask SQuAD), oneshot (new language vs dynamic "
              "evaluation), bleu (English->German, sacrebleu), listops (LRA ListOps), mqar (associative "
              "recall); 'all' runs every suite")


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint: perplexity, plasticity probes, QA, one-shot language, BLEU, long-range",
        description="Run evaluation suites on a checkpoint and write one JSON (config, commit, device, seed, "
                    "results) plus PNG plots into --out. Suites: " + SUITE_HELP + ". Settings are overridden "
                    "as suite.field=value, right after CHECKPOINT or after --set anywhere, e.g. `plasticlm eval "
                    "runs/tiny perplexity.max_docs=50 --suite perplexity,qa --set qa.source=squad.json`. Offline, the hub-backed suites need a local "
                    "file (qa.source=PATH, bleu.source=PATH) or the shipped samples (=sample).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + tokenizer.json)")
    p.add_argument("overrides", nargs="*", metavar="suite.field=value", help="suite settings")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="suite.field=value",
                   help="more suite settings (may follow other options)")
    p.add_argument("--suite", default="perplexity", help="comma-separated suite names, or 'all'")
    p.add_argument("--preset", default="full", choices=["full", "smoke"],
                   help="sizes: 'full' (the published protocols; GPU) or 'smoke' (seconds on CPU)")
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/eval)")
    p.add_argument("--seed", type=int, default=0, help="seed of all data generation and baselines")
    p.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json to use instead of the checkpoint's")
    p.add_argument("--no-controls", action="store_true", help="skip the untrained-model controls of the probes")
    p.add_argument("--online", nargs="+", action="extend", default=[], metavar="key=value",
                   help="AUNN checkpoints: how the AUNN reads (plasticlm.aunn.config.OnlineConfig fields, "
                        "e.g. steps=2 lr=3e-5 chunk_len=64)")
    p.add_argument("--resume", action="store_true",
                   help="keep the suites already in --out/results.json (same config, seed, commit and model)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def open_checkpoint(checkpoint: str, device: str, tokenizer_path: str | None = None, seed: int = 0,
                    online: list[str] | None = None):
    """(LM, tokenizer, checkpoint info, untrained factory) for a checkpoint directory of any kind
    (plasticlm, a baseline trained by `plasticlm train`, or an AUNN)."""
    import copy

    import torch

    from ..eval.common import check_vocab
    from ..checkpoint import load_lm as load_any
    from ..tokenizer import load_tokenizer

    options = {}
    if online:
        from ..aunn.config import OnlineConfig
        from ..settings import from_dict, parse_override

        pairs = dict(parse_override(x, "steps=2") for x in online)
        options["online"] = from_dict(OnlineConfig, pairs, "online")
    lm, tok, meta = load_any(checkpoint, device, **options)
    if tokenizer_path:
        tok = load_tokenizer(tokenizer_path)
    check_vocab(lm, tok, f"checkpoint {checkpoint}" + (f" with tokenizer {tokenizer_path}" if tokenizer_path else ""))
    model = lm.model

    def untrained():
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the suites' RNG alone
            torch.manual_seed(seed)
            u = copy.copy(lm)
            u.model = type(model)(model.config).to(device).eval()
        u.name = "untrained"
        return u

    info = {"path": str(checkpoint), "arch": meta.get("arch", "plasticlm"), "model_id": meta.get("model_id"),
            "config": model.config.to_dict(), "params": sum(p.numel() for p in model.parameters())}
    if "online" in options:
        info["online"] = vars(options["online"])
    return lm, tok, info, untrained


def run(args) -> int:
    from pathlib import Path


    from ..device import pick_device
    from ..eval import Context, evaluate, parse_suites
    from ..eval.registry import make_config
    from ..eval.results import headline

    args.overrides = list(args.overrides) + list(args.set)
    suites = parse_suites(args.suite)
    for s in suites:  # reject bad settings before loading anything
        make_config(s, args.preset, args.overrides)
    device = str(pick_device(args.device))
    lm, tok, info, untrained = open_checkpoint(args.checkpoint, device, args.tokenizer, args.seed, args.online)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    ctx = Context(lm=lm, tokenizer=tok, seed=args.seed, out_dir=out, progress=not args.no_progress,
                  untrained=None if args.no_controls else untrained)
    command = ["plasticlm"] + sys.argv[1:] if sys.argv[1:2] == ["eval"] else ["plasticlm", "eval", args.checkpoint]
    try:
        doc = evaluate(ctx, suites, args.preset, args.overrides, out / "results.json", command, info, args.resume)
    except ImportError as e:  # an optional package a suite needs: say which extra installs it
        raise ValueError(str(e)) from e
    for name, s in doc["suites"].items():
        print(f"{name}: {headline(name, s['results'])} ({s['seconds']:.0f}s)")
    print(f"results: {out / 'results.json'} and {out / 'results.md'}")
    return 0
