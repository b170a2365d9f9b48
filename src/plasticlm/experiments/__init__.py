"""Experiments: the evidence that the design does what it claims, one command each.

``plasticlm experiment NAME`` (or :func:`run_experiment`) trains fresh models through the
project's own trainer and writes ``experiments/results/NAME/`` (results.json with every curve,
results.md, PNG plots); ``EXPERIMENTS.md`` at the repository root reads them. Each experiment
is a module with a typed ``Config`` (defaults = the full form, ``Config.quick()`` = the seconds
form CI runs), ``QUESTION``, ``plan``, ``execute``, ``report`` and ``headline``.
"""
from .runner import Run, make_config, run_experiment

# name -> module, imported when asked for
EXPERIMENTS = {
    "mqar": "plasticlm.experiments.mqar",
    "bptt": "plasticlm.experiments.bptt",
    "reading": "plasticlm.experiments.reading",
    "embeddings": "plasticlm.experiments.embeddings",
    "length": "plasticlm.experiments.length",
    "plasticity": "plasticlm.experiments.plasticity",
    "proxy": "plasticlm.experiments.proxy",
}

__all__ = ["EXPERIMENTS", "Run", "make_config", "run_experiment"]
