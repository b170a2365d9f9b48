"""Architectures the trainer can build, by name: PlasticLM and the baselines.

An entry names a config dataclass and a model class, as ``"module:Name"`` strings imported on
first use, so a baseline that is not installed costs nothing until a recipe asks for it.
Every model takes ``model(tokens (B, T), state) -> (logits (B, T, V), state)``.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Any

ARCHS: dict[str, tuple[str, str]] = {
    "plasticlm": ("plasticlm.config:ModelConfig", "plasticlm.model:PlasticLM"),
    "transformer": ("plasticlm.baselines.transformer:TransformerConfig", "plasticlm.baselines.transformer:Transformer"),
}


def register_arch(name: str, config_cls: str, model_cls: str) -> None:
    """Make ``arch: name`` available to recipes; both classes as ``"module:Name"``."""
    ARCHS[name] = (config_cls, model_cls)


def _load(ref: str, arch: str):
    module, name = ref.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"arch {arch!r} needs {ref}, which cannot be imported here: {e}") from None


def _classes(arch: str):
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    cfg_ref, model_ref = ARCHS[arch]
    return _load(cfg_ref, arch), _load(model_ref, arch)


def model_config(arch: str, data: Any, where: str = "model"):
    """The arch's config dataclass from a mapping (unknown keys rejected by name), or as given."""
    cfg_cls, _ = _classes(arch)
    if isinstance(data, cfg_cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping of {cfg_cls.__name__} fields, got {data!r}")
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config key '{where}.{unknown[0]}'; valid keys here: {sorted(known)}")
    from .config import _check_type

    hints = typing.get_type_hints(cfg_cls)
    return cfg_cls(**{k: _check_type(v, hints.get(k), f"{where}.{k}") for k, v in data.items()})


def build_model(arch: str, config):
    _, model_cls = _classes(arch)
    return model_cls(config)
