"""Typed, validated model configuration."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

MEMORIES = ("gated_average", "decay", "linear")
MODES = ("auto", "naive", "chunk", "kernel")
EMBEDDINGS = ("parameter", "mutable")


@dataclass
class ModelConfig:
    """Architecture of a PlasticLM (DESIGN section 1). Every field is checked on construction."""

    vocab_size: int = 256
    """Number of token ids; the embedding table is tied to the output head."""
    d_model: int = 128
    """Width of each residual stream (a reversible model carries two streams of this width)."""
    n_layers: int = 4
    """Number of blocks (memory process + SwiGLU feed-forward)."""
    n_heads: int = 4
    """Memory heads per block; each head keeps a (head_dim x value_dim) state."""
    head_dim: int = 0
    """Key/query width per head; 0 means d_model // n_heads."""
    value_dim: int = 0
    """Value width per head; 0 means head_dim."""
    ffn_hidden: int = 0
    """SwiGLU hidden width; 0 means 8/3 * d_model rounded up to a multiple of 64."""
    memory: str = "gated_average"
    """Memory process: 'gated_average' (write weight 1 - a), 'decay' (GLA, write weight 1),
    'linear' (a = 1, plain linear attention)."""
    reversible: bool = True
    """RevNet coupling over depth with input reconstruction; False gives plain pre-norm residuals."""
    min_half_life: float = 2.0
    """Shortest initial gate half-life, in tokens (gate biases are spread log-uniformly)."""
    max_half_life: float = 0.0
    """Longest initial gate half-life, in tokens; 0 picks it by memory: 1e5 for 'gated_average'
    (its write weight 1 - a keeps a slow channel an average, bounded however long it reads), 512
    for 'decay' (write weight 1: a channel of half-life h sums about 1.44 h tokens, so it starts
    short, as Mamba-2's dt and A give half-lives of about 0.4-700 tokens and fla's GLA about 16).
    E1 at d_model 64: cutting the gated average's to the training length (64) cost MQAR recall
    (0.871 against 0.989 at 8 pairs, best of three learning rates, one seed)."""
    short_conv: int = 4
    """Width of a causal depthwise convolution (then SiLU) over each layer's q, k and v, as in
    Mamba-2, Gated DeltaNet and Zoology's GLA; 0 for none. Its last w - 1 inputs are carried in
    the State, so pieces and steps equal one call. Default from E1's ablation (EXPERIMENTS.md):
    without it the gated average stays on MQAR's ln(pairs) plateau (0.21 / 0.12 at 4 / 8 pairs after
    2,000 steps, d_model 128); with it, it reaches 0.99 in 1,500."""
    qk_norm: bool = False
    """L2-normalise q and k per head (as DeltaNet and Gated DeltaNet) instead of scaling q by K^-0.5.
    Off for now: in E1 it solved MQAR at d_model 64 in every seed at lr 1e-3 where the design did
    not (but stayed on the plateau in one seed of three at 3e-3), and on man-page text it changed
    held-out loss by -0.007 +- 0.010 bits/byte (three seeds; EXPERIMENTS.md, E1)."""
    bias_correction: bool | None = None
    """'gated_average' only: read o_t = S_t^T q_t / (1 - prod_{s<=t} a_s) per key channel, as Adam
    corrects its moments, so every channel is a weighted average of what was written since the
    sequence began, however long its half-life (without it, a channel of half-life h holds about
    t / (1.44 h) of its final weight after t tokens). prod a is carried in the State. None: on for
    the gated average, off for the others (E1's ablation, one seed: with the convolution MQAR is
    solved in 1,250 steps against 1,500 without it at d_model 128, and at d_model 64 it lifts 8-pair
    accuracy from 0.81 to 0.99; alone it does not leave the plateau)."""
    gate_rank: int = 0
    """Rank of the gate projection: 0 for a full d_model x (heads x head_dim) matrix; r > 0 for two
    factors through r channels, as fla's GLA (rank 16). A speed option: rank 16 made the default
    mixer's CPU forward and backward 4% and 7% faster in two interleaved A/Bs (B 4, T 4,096). In E1
    at d_model 64 it cost no recall three seeds could see (8 pairs 0.976 +- 0.014 against the
    design's 0.978 +- 0.016, lr 3e-3); not the default until a run on text agrees."""
    embeddings: str = "parameter"
    """'parameter': the tied table only. 'mutable' (DESIGN 1.4, RQ6): plus a per-sequence table of
    mutable_slots slots that the model writes while it reads, held in the State
    (plasticlm.embedding says how it reads and writes)."""
    mutable_slots: int = 0
    """Slots of the mutable table (token ids hash to them); 0 means vocab_size (one id per slot)."""
    mutable_context: int = 4
    """Base embeddings (the token's and those before it) that each write of the mutable table sees."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation."""
    chunk_size: int = 64
    """Chunk length of the chunkwise-parallel memory path (a power of two)."""
    mode: str = "auto"
    """Memory execution path: 'auto' (fla kernel on CUDA when installed, else chunk), 'chunk',
    'naive', 'kernel'."""

    ADDED_LATER: typing.ClassVar[tuple[str, ...]] = ("embeddings", "mutable_slots", "mutable_context", "gate_rank")
    """Fields whose default is the model as it was before they existed: at that default they are
    not part of a checkpoint's model_id, so checkpoints written before them still verify."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "chunk_size"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "a positive integer")
        for name in ("head_dim", "value_dim", "ffn_hidden"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 0,
                     "a non-negative integer (0 picks the default)")
        if self.head_dim == 0:
            _require(self, "d_model", self.d_model % self.n_heads == 0,
                     f"divisible by n_heads={self.n_heads} when head_dim is 0")
        _require(self, "chunk_size", self.chunk_size & (self.chunk_size - 1) == 0, "a power of two")
        _require(self, "memory", self.memory in MEMORIES, f"one of {MEMORIES}")
        _require(self, "mode", self.mode in MODES, f"one of {MODES}")
        _require(self, "embeddings", self.embeddings in EMBEDDINGS, f"one of {EMBEDDINGS}")
        _require(self, "mutable_slots", _is_int(self.mutable_slots) and self.mutable_slots >= 0,
                 "a non-negative integer (0 means vocab_size)")
        _require(self, "mutable_context", _is_int(self.mutable_context) and self.mutable_context >= 1,
                 "a positive integer")
        _require(self, "gate_rank", _is_int(self.gate_rank) and self.gate_rank >= 0, "a non-negative integer (0: full rank)")
        _require(self, "gate_rank", not self.gate_rank or self.memory != "linear",
                 "0 with memory='linear' (it has no gate)")
        _require(self, "reversible", isinstance(self.reversible, bool), "a bool")
        for name in ("min_half_life", "norm_eps", "init_std"):
            v = getattr(self, name)
            _require(self, name, isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                     "a finite number > 0")
        _require(self, "max_half_life", isinstance(self.max_half_life, (int, float)) and not isinstance(
            self.max_half_life, bool) and math.isfinite(self.max_half_life) and self.max_half_life >= 0,
            "0 (by memory) or a finite number")
        _require(self, "max_half_life", self.longest_half_life >= self.min_half_life,
                 f">= min_half_life={self.min_half_life} (0 means {self.longest_half_life:g} for memory={self.memory!r})")
        _require(self, "short_conv", _is_int(self.short_conv) and self.short_conv >= 0 and self.short_conv != 1,
                 "0 (none) or a width >= 2")
        _require(self, "qk_norm", isinstance(self.qk_norm, bool), "a bool")
        _require(self, "bias_correction", self.bias_correction is None or isinstance(self.bias_correction, bool),
                 "a bool or None (on for the gated average)")
        _require(self, "bias_correction", not self.bias_correction or self.memory == "gated_average",
                 f"false unless memory='gated_average' (memory={self.memory!r})")

    @property
    def corrects_bias(self) -> bool:
        """Whether the readout is divided by 1 - prod a (bias_correction, None resolved by memory)."""
        return self.memory == "gated_average" if self.bias_correction is None else self.bias_correction

    @property
    def longest_half_life(self) -> float:
        """max_half_life, or the memory's own default when it is 0."""
        return self.max_half_life or (512.0 if self.memory == "decay" else 1e5)

    @property
    def table_slots(self) -> int:
        """Slots of the mutable table (mutable_slots, 0 resolved to vocab_size)."""
        return self.mutable_slots or self.vocab_size

    @property
    def k_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def v_dim(self) -> int:
        return self.value_dim or self.k_dim

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden or 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig has no field {unknown[0]!r}; known fields: {sorted(known)}")
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require(cfg: ModelConfig, name: str, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"ModelConfig.{name} must be {rule}, got {getattr(cfg, name)!r}")
