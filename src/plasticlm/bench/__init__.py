"""``plasticlm bench``: training and inference speed and memory of plasticlm beside its baselines.

``runner`` plans and runs the jobs of a preset, ``jobs`` measures one configuration,
``models`` names the variants and counts their FLOPs, ``report`` writes JSON, markdown, PNGs.
"""
from .runner import PRESETS, BenchConfig, make_config, run

__all__ = ["PRESETS", "BenchConfig", "make_config", "run"]
