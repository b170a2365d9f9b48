"""Baselines behind plasticlm's model interface: an SDPA Transformer and fla's GLA / Mamba-2.

Each has ``forward(tokens, state=None) -> (logits, state)``, ``hidden``, ``init_state(B)`` and
``step``, and an adapter to the evaluations' :class:`plasticlm.lm.LM` interface, so the same
trainer, benchmarks and evaluations run on all of them. They are registered in
:mod:`plasticlm.archs` ('transformer', 'gla', 'mamba2'); ``archs.sized_like(name, model_config)``
sizes one to a PlasticLM's parameter count.
"""
from .fla_models import MixerState, RecurrentAsLM, RecurrentConfig, RecurrentLM, fla_available
from .transformer import KVCache, Transformer, TransformerAsLM, TransformerConfig

__all__ = ["KVCache", "Transformer", "TransformerAsLM", "TransformerConfig", "MixerState", "RecurrentAsLM",
           "RecurrentConfig", "RecurrentLM", "fla_available"]

