"""Run configuration: typed dataclasses, shipped YAML recipes, ``key=value`` overrides.

A recipe is a YAML file (read with ``yaml.safe_load``) whose nesting mirrors
:class:`TrainConfig`; any key the dataclasses do not declare is rejected by name, and every
value is checked against its field's type.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ModelConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class DataConfig:
    source: str = "builtin"
    """'builtin' (the embedded standard-library docstring corpus) or the path of a UTF-8 text file."""
    seq_len: int = 256
    """T: tokens per row of a batch (cut into segments of ``segment_len`` for backpropagation)."""
    batch_size: int = 16
    """B: rows per optimizer step."""
    valid_fraction: float = 0.02
    """Share of the text, taken from its end, held out for validation."""


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (norms, biases and embeddings are not decayed)."""
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 10
    """Linear warmup from 0, then cosine decay to ``min_lr_ratio * lr`` at the last step."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 60
    """Optimizer steps."""
    segment_len: int = 128
    """L: tokens per row recomputed with a graph at a time (exact segment-wise BPTT)."""
    seed: int = 0
    out_dir: str = "runs/tiny"
    """Where the checkpoint and metrics go."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'."""
    eval_tokens: int = 32768
    """Validation tokens scored at the end of the run."""

    def __post_init__(self) -> None:
        for name in ("steps", "segment_len", "eval_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.data.seq_len < 1 or self.data.batch_size < 1:
            raise ValueError(f"data.seq_len and data.batch_size must be >= 1, got {self.data.seq_len}, "
                             f"{self.data.batch_size}")
        if not 0 < self.data.valid_fraction < 1:
            raise ValueError(f"data.valid_fraction must lie in (0, 1), got {self.data.valid_fraction}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool), float: lambda v: isinstance(v, float) and math.isfinite(v),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}.get(tp)
    if ok is not None and not ok(value):
        raise ValueError(f"{where} must be of type {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls, data: dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ValueError(f"unknown config key {name!r}; valid keys here: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, name)
        else:
            kwargs[key] = _check_type(value, tp, name)
    return cls(**kwargs)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"recipe file not found: {p}")
        return p
    p = RECIPES / f"{recipe}.yaml"
    if not p.exists():
        known = sorted(x.stem for x in RECIPES.glob("*.yaml"))
        raise ValueError(f"unknown recipe {recipe!r}; shipped recipes: {known} (or pass a .yaml path)")
    return p


def load_config(recipe: str = "tiny", overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe and apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    path = recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    try:
        return from_dict(TrainConfig, data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
