"""Evaluation suites (DESIGN section 5): does reading change what the model does?

Each suite is one module run on the :class:`plasticlm.lm.LM` interface only:

    perplexity  token perplexity, bits per byte, word perplexity; loss vs position
    probes      plasticity probes: dialogue template and mid-stream rule drift
    qa          read-then-ask SQuAD (read first, question first, read twice)
    oneshot     a new language read after a Rosetta header; vs no reading and dynamic evaluation
    bleu        English -> German after reading examples; sacrebleu BLEU and chrF with baselines
    listops     LRA ListOps, generated offline, as classification
    mqar        multi-query associative recall (Zoology), accuracy and state size

``evaluate`` runs a list of them and writes one JSON (config, commit, device, seed) and the plots.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write
from . import results
from .registry import PRESETS, SUITES, Context, config_dict, make_config, parse_suites, suite_module

__all__ = ["Context", "SUITES", "PRESETS", "evaluate", "make_config", "parse_suites"]


def evaluate(ctx: Context, suites: list[str], preset: str = "full", overrides: list[str] | None = None,
             out_json: Path | None = None, command: list[str] | None = None,
             checkpoint: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Run ``suites`` in order; the JSON (and a markdown summary beside it) is rewritten after each
    suite, so a crash keeps what finished. With ``resume``, a suite already in ``out_json`` with the
    same config, seed, preset, commit and model is taken from there instead of run again."""
    configs = {name: make_config(name, preset, overrides) for name in parse_suites(",".join(suites))}
    out_json = Path(out_json) if out_json else ctx.out_dir / "results.json"
    doc = results.header(command or [], ctx.lm.device, ctx.seed, checkpoint or {})
    doc["preset"] = preset
    prev = _previous(out_json, doc) if resume else {}
    for name, cfg in configs.items():
        old = prev.get(name)
        if old is not None and old.get("config") == config_dict(cfg):
            doc["suites"][name] = {**old, "reused": True}
            continue
        torch.manual_seed(ctx.seed)
        t0 = time.perf_counter()
        res = suite_module(name).run(ctx, cfg)
        doc["suites"][name] = {"config": config_dict(cfg), "seconds": round(time.perf_counter() - t0, 2),
                               "results": res}
        results.write(out_json, doc)
        text = results.markdown(doc)
        atomic_write(out_json.with_suffix(".md"), lambda p, t=text: Path(p).write_text(t))
    return doc


def _previous(out_json: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """Suites of an earlier run that may be reused: same seed, preset, commit and model."""
    import json

    if not out_json.exists():
        return {}
    try:
        old = json.loads(out_json.read_text())
    except json.JSONDecodeError:
        return {}
    same = all(old.get(k) == doc.get(k) for k in ("seed", "preset", "commit")) and \
        old.get("checkpoint", {}).get("model_id") == doc["checkpoint"].get("model_id")
    return old.get("suites", {}) if same and "dirty" not in str(doc["commit"]) else {}
