"""The attention baseline: a causal SDPA Transformer (RoPE, RMSNorm, SwiGLU, tied embeddings).

It has the model interface of :class:`plasticlm.PlasticLM` so the same trainer, benchmarks and
evaluations run on it: ``forward(tokens, state=None) -> (logits, state)``, ``hidden``,
``init_state(B)``, ``step``. Its state is a :class:`KVCache`: the keys and values (RoPE
applied) of every position read so far, so a forward with a carried cache is exactly the
continuation of the text before it. Unlike plasticlm's memory, that state grows with the
context; :meth:`KVCache.trim` keeps a sliding window for unbounded streams.

:meth:`TransformerConfig.sized_like` sizes the feed-forward width so that the Transformer has
the parameter count of a given PlasticLM configuration (same width, depth, heads, vocabulary).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..lm import PiecewiseLM
from ..model import FeedForward, RMSNorm


@dataclass
class TransformerConfig:
    """Architecture of the SDPA Transformer baseline. Every field is checked on construction."""

    vocab_size: int = 256
    """Number of token ids; the embedding table is tied to the output head."""
    d_model: int = 128
    """Residual stream width."""
    n_layers: int = 4
    """Number of blocks (attention + SwiGLU feed-forward)."""
    n_heads: int = 4
    """Attention heads; head width is d_model // n_heads (even, for RoPE)."""
    ffn_hidden: int = 0
    """SwiGLU hidden width; 0 means 8/3 * d_model rounded up to a multiple of 64."""
    rope_base: float = 10000.0
    """Base of the rotary position frequencies."""
    norm_eps: float = 1e-6
    """Epsilon of every RMSNorm."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation (output projections scaled by 1/sqrt(2 n_layers))."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.ffn_hidden, int) and self.ffn_hidden >= 0):
            raise ValueError(f"TransformerConfig.ffn_hidden must be an integer >= 0, got {self.ffn_hidden!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"TransformerConfig.d_model={self.d_model} must be n_heads={self.n_heads} times an even "
                             "head width (RoPE rotates pairs of channels)")
        for name in ("rope_base", "norm_eps", "init_std"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"TransformerConfig.{name} must be a finite number > 0, got {v!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden or 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def sized_like(cls, plastic: ModelConfig, multiple_of: int = 64, **overrides) -> "TransformerConfig":
        """Same vocabulary, width, depth and heads as ``plastic``; the SwiGLU width is chosen so
        that the parameter count matches PlasticLM(plastic)'s (its memory has 6 d^2 weights per
        layer where attention has 4 d^2, so the Transformer gets a wider feed-forward)."""
        base = dict(vocab_size=plastic.vocab_size, d_model=plastic.d_model, n_layers=plastic.n_layers,
                    n_heads=plastic.n_heads, norm_eps=plastic.norm_eps, init_std=plastic.init_std)
        base.update(overrides)
        target = count_params(lambda: _plastic(plastic))
        ffn = match_ffn(lambda f: count_params(lambda: Transformer(cls(**base, ffn_hidden=f))), target, multiple_of)
        return cls(**base, ffn_hidden=ffn)


def _plastic(cfg: ModelConfig):
    from ..model import PlasticLM

    return PlasticLM(cfg)


def count_params(build: Callable[[], nn.Module]) -> int:
    """Parameters of the module ``build()`` makes, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def match_ffn(count: Callable[[int], int], target: int, multiple_of: int = 64) -> int:
    """The SwiGLU width f whose parameter count ``count(f)`` is nearest ``target``.

    count is affine in f, so two evaluations give its slope. f is rounded to ``multiple_of``
    (tensor-core friendly) unless that misses the target by more than 0.5%, as it can for tiny
    models; then to a multiple of 8, then to 1.
    """
    a, b = count(64), count(128)
    f_exact = 64 + (target - a) * 64 / (b - a)
    if f_exact < 1:
        raise ValueError(f"no feed-forward width reaches {target:,} parameters: the rest of the model alone has "
                         f"{a - (b - a):,}; use fewer layers or a narrower model")
    for m in (multiple_of, 8, 1):
        f = max(m, m * round(f_exact / m))
        if abs(count(f) - target) <= 0.005 * target:
            return f
    return max(1, round(f_exact))


@dataclass
class KVCache:
    """The Transformer's state: keys and values (RoPE applied) of every position read so far.

    ``keys[l]`` and ``values[l]`` are (B, H, N, head_dim) for layer l; ``position`` is the absolute
    position of the next token (more than N once :meth:`trim` dropped the oldest positions).
    ``window``: each query attends to at most the last ``window`` positions, itself included (a
    sliding window, set by :meth:`trim`); None: to every cached position.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position: int = 0
    window: int | None = None

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def detach(self) -> "KVCache":
        return KVCache([k.detach() for k in self.keys], [v.detach() for v in self.values], self.position, self.window)

    def clone(self) -> "KVCache":
        return KVCache([k.clone() for k in self.keys], [v.clone() for v in self.values], self.position, self.window)

    def to(self, *args, **kwargs) -> "KVCache":
        return KVCache([k.to(*args, **kwargs) for k in self.keys], [v.to(*args, **kwargs) for v in self.values],
                       self.position, self.window)

    def trim(self, window: int | None) -> "KVCache":
        """A sliding-window Transformer's cache: only the last ``window`` positions are kept (None
        keeps all), and from now on every query sees at most ``window`` positions, itself included,
        also inside the next piece (without that, its last query would see window + piece - 1,
        distances training never showed).

        RoPE scores depend on relative positions only, so the kept keys stay valid as they are.
        """
        if window is None:
            return self
        if self.length <= window:
            return dataclasses.replace(self, window=window)
        return KVCache([k[:, :, -window:] for k in self.keys], [v[:, :, -window:] for v in self.values],
                       self.position, window)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype):
    """cos, sin of shape (T, head_dim / 2) for absolute positions (T,).

    Angles are formed in float64: at position 10^6 a float32 angle is off by ~0.06 rad.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angle = positions.to(torch.float64)[:, None] * inv_freq  # (T, head_dim / 2)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate channel pairs (i, i + head_dim/2) of x (B, H, T, head_dim) by the position angles.

    The rotation runs in at least float32 and returns x's dtype (under autocast q, k are bf16
    while the tables are float32; SDPA needs q, k, v in one dtype)."""
    x1, x2 = x.to(torch.promote_types(x.dtype, cos.dtype)).chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj_out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, past_k, past_v, window: int | None = None):
        """x (B, T, d) after the cached (B, H, P, head_dim) keys/values -> (y (B, T, d), keys, values).
        ``window``: each query sees at most that many positions, itself included."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        P = past_k.shape[2]
        if P:
            k = torch.cat((past_k.to(k.dtype), k), dim=2)  # (B, H, P + T, hd)
            v = torch.cat((past_v.to(v.dtype), v), dim=2)
        banded = window is not None and P + T > window
        if P == 0 and not banded:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1 and not banded:  # one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            # is_causal aligns the mask top-left; with a cache query i sits at position P + i.
            lag = (P + torch.arange(T, device=x.device))[:, None] - torch.arange(P + T, device=x.device)
            mask = (lag >= 0) & (lag < window) if banded else lag >= 0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        return self.proj_out(y.transpose(1, 2).reshape(B, T, d)), k, v


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm_a, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.norm_f, self.ffn = RMSNorm(cfg.d_model, cfg.norm_eps), FeedForward(cfg)

    def forward(self, x, cos, sin, past_k, past_v, window: int | None = None):
        a, k, v = self.attn(self.norm_a(x), cos, sin, past_k, past_v, window)
        x = x + a
        return x + self.ffn(self.norm_f(x)), k, v


class Transformer(nn.Module):
    """Causal pre-norm Transformer with the PlasticLM model interface; state = :class:`KVCache`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"Transformer expects a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)  # tied to the output head
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("proj_out.weight", "down.weight")) else std
                nn.init.normal_(p, std=s)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty cache for ``batch_size`` sequences."""
        c, p = self.config, self.embed.weight
        empty = [torch.zeros(batch_size, c.n_heads, 0, c.head_dim, device=device or p.device, dtype=dtype or p.dtype)
                 for _ in range(c.n_layers)]
        return KVCache(empty, list(empty), 0)

    def hidden(self, tokens, state: KVCache | None = None):
        """Final hidden states before the head: tokens (B, T) -> (h (B, T, d), cache after them)."""
        _check_tokens(tokens, self.config.vocab_size)
        B, T = tokens.shape
        state = self.init_state(B) if state is None else state
        if not isinstance(state, KVCache):
            raise TypeError(f"state must be a KVCache (from init_state), got {type(state).__name__}")
        if state.batch_size != B or len(state.keys) != self.config.n_layers:
            raise ValueError(f"cache holds batch {state.batch_size} x {len(state.keys)} layers, tokens have batch {B} "
                             f"and the model {self.config.n_layers} layers")
        x = self.embed(tokens)  # (B, T, d)
        positions = torch.arange(state.position, state.position + T, device=tokens.device)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_base,
                               torch.promote_types(x.dtype, torch.float32))
        keys, values = [], []
        for block, pk, pv in zip(self.blocks, state.keys, state.values):
            x, k, v = block(x, cos, sin, pk, pv, state.window)
            keys.append(k)
            values.append(v)
        return self.norm(x), KVCache(keys, values, state.position + T, state.window)

    def forward(self, tokens, state: KVCache | None = None):
        """tokens (B, T) int -> (logits (B, T, vocab), cache after them)."""
        h, state = self.hidden(tokens, state)
        return F.linear(h, self.embed.weight), state

    def step(self, token, state: KVCache):
        """One token per row: token (B,) -> (logits (B, vocab), cache)."""
        if not torch.is_tensor(token) or token.dim() != 1:
            raise ValueError(f"step expects token of shape (B,), got {getattr(token, 'shape', type(token))}")
        logits, state = self(token.unsqueeze(1), state)
        return logits[:, 0], state


def _check_tokens(tokens, vocab_size: int) -> None:
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor of shape (B, T), got "
                         f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}")
    if tokens.numel() == 0:
        raise ValueError(f"tokens must hold at least one row and one position, got shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token id {lo if lo < 0 else hi} is out of range [0, {vocab_size}) (vocab_size={vocab_size})")


class TransformerAsLM(PiecewiseLM):
    """The Transformer behind the evaluations' LM interface; the state is its KV cache.

    Text is read in pieces of ``piece`` tokens with the cache carried, so scores equal one
    forward over the whole text. ``window`` (None: unbounded) makes it a sliding-window
    Transformer: every query sees the last ``window`` positions, itself included, and the cache
    keeps only those, bounding memory on long streams. Generation (``LM.generate``) decodes one
    token at a time from the cache.
    """

    name = "transformer"

    def __init__(self, model: Transformer, piece: int = 4096, window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window!r}")
        super().__init__(model, piece)
        self.window = window

    def init_state(self, batch_size: int) -> KVCache:
        return self.model.init_state(batch_size).trim(self.window)

    def _carry(self, state: KVCache) -> KVCache:
        return state.trim(self.window)
