"""The suites by name, their configs, and the context they run in.

A suite is a module with ``NAME``, a ``Config`` dataclass (documented fields, and a ``smoke()``
classmethod giving CPU-test sizes) and ``run(ctx, cfg) -> dict``. Suites see the model only
through ``ctx.lm`` (the :class:`plasticlm.lm.LM` interface) and ``ctx.tokenizer``.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..settings import parse_override

from ..lm import LM

SUITES = {
    "perplexity": "plasticlm.eval.perplexity",
    "probes": "plasticlm.eval.probes",
    "qa": "plasticlm.eval.qa",
    "oneshot": "plasticlm.eval.oneshot",
    "bleu": "plasticlm.eval.bleu",
    "listops": "plasticlm.eval.listops",
    "mqar": "plasticlm.eval.mqar",
}
PRESETS = ("full", "smoke")


@dataclass
class Context:
    """What a suite runs on."""

    lm: LM
    """The model, behind the LM interface."""
    tokenizer: Any
    """The tokenizer the model was trained with (encode, decode, token_id, vocab_size)."""
    seed: int = 0
    """Seed of every random choice a suite makes (data generation, sampling, baselines)."""
    out_dir: Path = Path("eval_out")
    """Where plots go."""
    untrained: Callable[[], LM] | None = None
    """Builds the same architecture freshly initialised (the chance level of the probes); None skips it."""
    progress: bool = True
    """Show progress bars."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Objects a suite may take instead of its defaults (e.g. ``language`` for oneshot)."""


def suite_module(name: str):
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])


def parse_suites(spec: str) -> list[str]:
    """'perplexity,qa' -> ['perplexity', 'qa']; 'all' -> every suite; an unknown name fails naming it."""
    names = list(SUITES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"no suite named in {spec!r}; known suites: {', '.join(SUITES)}")
    for n in names:
        suite_module(n)
    return names


def make_config(name: str, preset: str = "full", overrides: list[str] | dict[str, Any] | None = None):
    """The suite's config for a preset, with 'suite.field=value' overrides (others' keys are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    mod = suite_module(name)
    cfg = mod.Config.smoke() if preset == "smoke" else mod.Config()
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides or []]
    known = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in items:
        suite, _, fname = key.partition(".")
        if suite not in SUITES:
            raise ValueError(f"override {key!r}: unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
        if suite != name:
            continue
        if fname not in known:
            raise ValueError(f"override {key!r}: {name} has no setting {fname!r}; known: {', '.join(known)}")
        setattr(cfg, fname, _typed(key, getattr(cfg, fname), value))
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _typed(key: str, default: Any, value: Any) -> Any:
    """The value if it has the kind of the field's default (an int may stand for a float)."""
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"override {key!r}: expected {type(default).__name__}, got {value!r}")
    return value


def _split(item: str) -> tuple[str, Any]:
    key, value = parse_override(item, example="perplexity.max_docs=10")
    if "." not in key:
        raise ValueError(f"override {item!r} must look like suite.field=value, e.g. perplexity.max_docs=10")
    return key, value


def config_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
