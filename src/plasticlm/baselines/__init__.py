"""Baselines behind plasticlm's model interface: an SDPA Transformer and fla's GLA / Mamba-2.

Each has ``forward(tokens, state=None) -> (logits, state)``, ``hidden``, ``init_state(B)`` and
``step``, and an adapter to the evaluations' :class:`plasticlm.lm.LM` interface, so the same
trainer, benchmarks and evaluations run on all of them.
"""
from .fla_models import MixerState, RecurrentAsLM, RecurrentConfig, RecurrentLM, fla_available
from .transformer import KVCache, Transformer, TransformerAsLM, TransformerConfig

__all__ = ["KVCache", "Transformer", "TransformerAsLM", "TransformerConfig", "MixerState", "RecurrentAsLM",
           "RecurrentConfig", "RecurrentLM", "fla_available", "build_baseline"]


def build_baseline(kind: str, plastic_config, **overrides):
    """A baseline of ``kind`` ('transformer', 'gla', 'mamba2') with plastic_config's parameter count."""
    if kind == "transformer":
        return Transformer(TransformerConfig.sized_like(plastic_config, **overrides))
    if kind in ("gla", "mamba2"):
        return RecurrentLM(RecurrentConfig.sized_like(plastic_config, kind, **overrides))
    raise ValueError(f"unknown baseline {kind!r}; choose 'transformer', 'gla' or 'mamba2'")
