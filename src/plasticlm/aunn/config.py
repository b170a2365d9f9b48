"""Typed, validated configuration of the AUNN: architecture, offline training, online conditioning."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "adam")


@dataclass
class AUNNConfig:
    """Architecture of an Absolute Unit NN: index bits -> residual MLP -> softmax over tokens."""

    vocab_size: int = 272
    """Number of token ids (272: the byte tokenizer's 256 bytes + 16 special tokens)."""
    index_bits: int = 38
    """Width of the binary index code; indices run over [0, 2**index_bits)."""
    width: int = 256
    """Width of the residual stream."""
    depth: int = 4
    """Number of residual MLP blocks (x = x + W2 gelu(W1 norm(x)))."""
    hidden: int = 0
    """Hidden width of each block's MLP; 0 means 4 * width."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "depth"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        _require(self, "index_bits", _is_int(self.index_bits) and 1 <= self.index_bits <= 62,
                 "an integer in [1, 62] (indices are int64)")
        _require(self, "hidden", _is_int(self.hidden) and self.hidden >= 0, "a non-negative integer (0: 4 * width)")
        _require(self, "norm_eps", _is_pos_float(self.norm_eps), "a finite number > 0")

    @property
    def hidden_dim(self) -> int:
        return self.hidden or 4 * self.width

    @property
    def max_index(self) -> int:
        """One past the largest index the code can express."""
        return 1 << self.index_bits

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AUNNConfig":
        return _from_dict(cls, d)


@dataclass
class OfflineConfig:
    """Offline training: AdamW on minibatches of (index, token) pairs drawn uniformly from a stream."""

    batch_size: int = 4096
    """Pairs per optimizer step."""
    steps: int = 1000
    """Optimizer steps."""
    lr: float = 2e-3
    """Peak learning rate (linear warmup, then cosine decay to min_lr_ratio * lr)."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices. Memorisation is the goal, so none by default."""
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    seed: int = 0
    """Seeds the weight initialisation and the pair sampler."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        for name in ("warmup_steps", "seed"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 0, "a non-negative integer")
        _require(self, "lr", _is_pos_float(self.lr), "a finite number > 0")
        for name in ("weight_decay", "grad_clip"):
            _require(self, name, _is_float(getattr(self, name)) and getattr(self, name) >= 0, "a finite number >= 0")
        for name in ("beta1", "beta2", "min_lr_ratio"):
            _require(self, name, _is_float(getattr(self, name)) and 0 <= getattr(self, name) <= 1, "in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class OnlineConfig:
    """How an AUNN reads: k gradient steps on new (index, token) pairs, per row of the batch.

    Each step is ``theta <- theta - lr * update(grad) + decay * (theta_0 - theta)``, where
    theta_0 are the model's own (offline-trained, pre-reading) weights, as in dynamic
    evaluation (Krause et al., 2018): decay > 0 keeps the adapted weights near theta_0.
    """

    steps: int = 4
    """k: gradient steps taken on each group of newly read tokens."""
    optimizer: str = "adam"
    """'sgd' (plain gradient steps) or 'adam' (moments kept in the state, per row)."""
    lr: float = 1e-3
    """Step size of the online optimizer."""
    beta1: float = 0.9
    """Adam's first-moment decay (unused by sgd)."""
    beta2: float = 0.99
    """Adam's second-moment decay (unused by sgd)."""
    eps: float = 1e-8
    decay: float = 0.0
    """lambda in [0, 1): share of the distance to the pre-reading weights removed per step."""
    chunk_len: int = 1
    """Tokens scored per weight update. 1 conditions every prediction on every token before it;
    larger chunks are faster and condition each prediction on the tokens before its chunk."""
    window: int = 0
    """Each group's steps train on the last ``window`` read tokens (at least the new ones), so
    recent text is rehearsed; 0 trains on the new tokens only."""
    grad_clip: float = 0.0
    """Clip each row's gradient norm to this value before the update (0 disables)."""

    def __post_init__(self) -> None:
        for name in ("steps", "chunk_len"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        _require(self, "window", _is_int(self.window) and self.window >= 0, "a non-negative integer")
        _require(self, "optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}")
        _require(self, "lr", _is_pos_float(self.lr), "a finite number > 0")
        _require(self, "eps", _is_pos_float(self.eps), "a finite number > 0")
        for name in ("beta1", "beta2"):
            _require(self, name, _is_float(getattr(self, name)) and 0 <= getattr(self, name) < 1, "in [0, 1)")
        _require(self, "decay", _is_float(self.decay) and 0 <= self.decay < 1, "in [0, 1)")
        _require(self, "grad_clip", _is_float(self.grad_clip) and self.grad_clip >= 0, "a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AUNNRunConfig:
    """A ``plasticlm aunn train`` run: model, offline training, data and where it goes."""

    model: AUNNConfig = dataclasses.field(default_factory=AUNNConfig)
    train: OfflineConfig = dataclasses.field(default_factory=OfflineConfig)
    source: str = "builtin"
    """'builtin' (the standard-library docstring corpus) or the path of a UTF-8 text file; byte tokens."""
    valid_fraction: float = 0.02
    """Share of the text, from its end, left out of training: it is what follows the stream."""
    out_dir: str = "runs/aunn"
    """Checkpoint, trainer state (for --resume), metrics.jsonl and summary.json go here."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'."""
    save_every: int = 200
    """Write the checkpoint and trainer state every this many steps (and at the end)."""

    def __post_init__(self) -> None:
        _require(self, "valid_fraction", _is_float(self.valid_fraction) and 0 <= self.valid_fraction < 1, "in [0, 1)")
        _require(self, "save_every", _is_int(self.save_every) and self.save_every >= 1, "a positive integer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r}; known fields: {sorted(known)}")
    return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_pos_float(v: Any) -> bool:
    return _is_float(v) and v > 0


def _require(cfg: Any, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{name} must be {rule}, got {getattr(cfg, name)!r}")
