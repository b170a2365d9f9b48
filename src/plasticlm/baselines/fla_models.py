"""Recurrent baselines: fla's GLA and Mamba-2 mixers in pre-norm blocks with SwiGLU.

The mixers follow fla's ``GatedLinearAttention`` and ``Mamba2`` layers (their default
choices: GLA's low-rank gate with logsigmoid / 16, swish output gate and per-head RMSNorm;
Mamba-2's short causal convolution, softplus step size, scalar per-head decay A, skip D and
gated RMSNorm) and compute their recurrences with fla's Triton kernels, ``chunk_gla`` and
``chunk_simple_gla`` (Mamba-2's SSD is simple GLA with q = C, k = dt * B, v = x, g = dt * A).

fla is imported lazily. ``backend="fla"`` needs it (and CUDA) and says how to install it
when it is missing; ``backend="torch"`` runs the same recurrences with plasticlm's own
chunkwise PyTorch path (any device; the reference the fla path is tested against);
``backend="auto"`` takes fla on CUDA when it imports.

The model interface is PlasticLM's: ``forward(tokens, state=None) -> (logits, state)``,
``hidden``, ``init_state(B)``, ``step``; the state is a :class:`MixerState` of constant size.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..lm import PiecewiseLM
from ..model import FeedForward, RMSNorm
from ..ops.chunk import chunk_recurrence
from ..ops.conv import causal_conv, conv_tail
from ..ops.naive import naive_recurrence
from .transformer import _check_tokens, _plastic, count_params, match_ffn

MIXERS = ("gla", "mamba2")
BACKENDS = ("auto", "fla", "torch")
FLA_HINT = ("backend='fla' needs flash-linear-attention (fla) and a CUDA device: install it with "
            "`pip install 'plasticlm[kernels]'`, or use backend='torch' (the same recurrence in plain PyTorch)")


@functools.lru_cache(maxsize=1)
def _fla_ops():
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # ImportError, or Triton failing to load without CUDA
        return e
    return chunk_gla, chunk_simple_gla


def fla_available() -> bool:
    return torch.cuda.is_available() and not isinstance(_fla_ops(), Exception)


def require_fla():
    ops = _fla_ops()
    if isinstance(ops, Exception):
        raise ImportError(f"{FLA_HINT} (import failed: {ops!r})")
    return ops


@dataclass
class RecurrentConfig:
    """Architecture of a GLA or Mamba-2 baseline. Defaults follow fla's layers."""

    mixer: str = "gla"
    """'gla' (fla's GatedLinearAttention) or 'mamba2' (fla's Mamba2)."""
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    """GLA heads (Mamba-2 has d_model * expand / mamba_head_dim heads instead)."""
    ffn_hidden: int = 0
    """SwiGLU hidden width; 0 means 8/3 * d_model rounded up to a multiple of 64."""
    backend: str = "auto"
    """'fla' (Triton kernels, CUDA), 'torch' (plasticlm's chunk path, any device), 'auto'."""
    norm_eps: float = 1e-6
    init_std: float = 0.02
    chunk_size: int = 64
    """Chunk length of the torch backend."""
    expand_k: float = 0.5
    """GLA: key width as a fraction of d_model."""
    expand_v: float = 1.0
    """GLA: value width as a fraction of d_model."""
    gate_low_rank_dim: int = 16
    """GLA: rank of the gate projection."""
    gate_logit_normalizer: int = 16
    """GLA: log-gates are logsigmoid(.) / this, so initial decays are slow."""
    short_conv: int = 0
    """GLA: width of a causal depthwise convolution (then SiLU) on q, k and v, fla's
    ``use_short_conv``/``conv_size`` (Zoology's GLA has one); 0 for none, fla's default."""
    expand: int = 2
    """Mamba-2: inner width as a multiple of d_model."""
    state_size: int = 128
    """Mamba-2: N, the state width per head (B and C have N channels per group)."""
    mamba_head_dim: int = 64
    """Mamba-2: P, channels of x per head."""
    n_groups: int = 1
    """Mamba-2: groups sharing B and C."""
    conv_kernel: int = 4
    """Mamba-2: width of the causal depthwise convolution."""

    def __post_init__(self) -> None:
        if self.mixer not in MIXERS:
            raise ValueError(f"RecurrentConfig.mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"RecurrentConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not (isinstance(self.short_conv, int) and self.short_conv >= 0 and self.short_conv != 1):
            raise ValueError(f"RecurrentConfig.short_conv must be 0 (none) or a width >= 2, got {self.short_conv!r}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "chunk_size", "gate_low_rank_dim",
                     "gate_logit_normalizer", "expand", "state_size", "mamba_head_dim", "n_groups", "conv_kernel"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"RecurrentConfig.{name} must be a positive integer, got {v!r}")
        if self.mixer == "gla":
            for name, width in (("expand_k", self.key_dim), ("expand_v", self.value_dim)):
                if width < self.n_heads or width % self.n_heads:
                    raise ValueError(f"RecurrentConfig.{name}={getattr(self, name)} gives width {width}, which must be "
                                     f"a positive multiple of n_heads={self.n_heads}")
        else:
            inner = self.expand * self.d_model
            if inner % self.mamba_head_dim or self.mamba_heads % self.n_groups:
                raise ValueError(f"RecurrentConfig: expand * d_model = {inner} must be a multiple of mamba_head_dim="
                                 f"{self.mamba_head_dim}, giving a number of heads divisible by n_groups={self.n_groups}")

    @property
    def key_dim(self) -> int:
        return int(self.d_model * self.expand_k)

    @property
    def value_dim(self) -> int:
        return int(self.d_model * self.expand_v)

    @property
    def mamba_heads(self) -> int:
        return self.expand * self.d_model // self.mamba_head_dim

    @property
    def ffn_dim(self) -> int:
        return self.ffn_hidden or 64 * math.ceil(8 * self.d_model / 3 / 64)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def sized_like(cls, plastic: ModelConfig, mixer: str, multiple_of: int = 64, **overrides) -> "RecurrentConfig":
        """Same vocabulary, width, depth and heads as ``plastic``, SwiGLU width set for equal parameter count."""
        base = dict(mixer=mixer, vocab_size=plastic.vocab_size, d_model=plastic.d_model, n_layers=plastic.n_layers,
                    n_heads=plastic.n_heads, norm_eps=plastic.norm_eps, init_std=plastic.init_std)
        base.update(overrides)
        target = count_params(lambda: _plastic(plastic))
        ffn = match_ffn(lambda f: count_params(lambda: RecurrentLM(cls(**base, ffn_hidden=f))), target, multiple_of)
        return cls(**base, ffn_hidden=ffn)


@dataclass
class MixerState:
    """Per-layer recurrent states (B, H, K, V) and, for Mamba-2, the last conv_kernel - 1 conv inputs."""

    layers: list[torch.Tensor]
    conv: list[torch.Tensor | None]

    @property
    def batch_size(self) -> int:
        return self.layers[0].shape[0]

    def detach(self) -> "MixerState":
        return MixerState([s.detach() for s in self.layers], [c if c is None else c.detach() for c in self.conv])

    def clone(self) -> "MixerState":
        return MixerState([s.clone() for s in self.layers], [c if c is None else c.clone() for c in self.conv])

    def to(self, *args, **kwargs) -> "MixerState":
        return MixerState([s.to(*args, **kwargs) for s in self.layers],
                          [c if c is None else c.to(*args, **kwargs) for c in self.conv])


def _recurrence(backend: str, q, k, v, g, S, chunk_size: int):
    """S_t = diag(exp g_t) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t. q, k, g (B, T, H, K), v (B, T, H, V).

    g may also be (B, T, H): one decay per head (simple GLA, Mamba-2).
    """
    if backend == "auto":
        backend = "fla" if q.is_cuda and fla_available() else "torch"
    scalar = g.dim() == 3
    if q.shape[1] == 1 or backend == "torch":  # one decoding step needs no kernel
        g_full = g.unsqueeze(-1).expand_as(k) if scalar else g
        if q.shape[1] == 1:
            return naive_recurrence(q, k, v, g_full, S, average=False)
        return chunk_recurrence(q, k, v, g_full, S, chunk_size=chunk_size)
    chunk_gla, chunk_simple_gla = require_fla()
    if not q.is_cuda:
        raise RuntimeError(f"backend='fla' runs on CUDA tensors only, got device {q.device}; use backend='torch'")
    fn = chunk_simple_gla if scalar else chunk_gla
    k = k.to(q.dtype)
    o, S = fn(q, k, v.to(q.dtype), g.float(), scale=1.0, initial_state=S.float(), output_final_state=True)
    return o.to(v.dtype), S


class GLAMixer(nn.Module):
    """fla's GatedLinearAttention: a per-channel data-dependent decay, optionally after a short convolution."""

    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.cfg = cfg
        d, K, V = cfg.d_model, cfg.key_dim, cfg.value_dim
        self.q_proj, self.k_proj = nn.Linear(d, K, bias=False), nn.Linear(d, K, bias=False)
        self.v_proj, self.g_proj = nn.Linear(d, V, bias=False), nn.Linear(d, V, bias=False)
        self.gk_proj = nn.Sequential(nn.Linear(d, cfg.gate_low_rank_dim, bias=False),
                                     nn.Linear(cfg.gate_low_rank_dim, K, bias=True))
        self.head_norm = RMSNorm(V // cfg.n_heads, cfg.norm_eps)
        self.proj_out = nn.Linear(V, d, bias=False)
        C = 2 * K + V
        self.conv1d = nn.Conv1d(C, C, cfg.short_conv, groups=C, bias=False) if cfg.short_conv else None

    def state_shape(self, B: int):
        c = self.cfg
        conv = (B, c.short_conv - 1, 2 * c.key_dim + c.value_dim) if c.short_conv else None
        return (B, c.n_heads, c.key_dim // c.n_heads, c.value_dim // c.n_heads), conv

    def forward(self, x, S, conv):
        B, T, _ = x.shape
        H, hk = self.cfg.n_heads, self.cfg.key_dim // self.cfg.n_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.conv1d is not None:
            qkv = torch.cat((q, k, v), dim=-1)
            prev, conv = conv, conv_tail(conv, qkv).to(conv.dtype, copy=True)  # a copy: a view keeps qkv alive
            qkv = F.silu(causal_conv(prev, qkv, self.conv1d.weight))  # plasticlm's own op: equal speed
            q, k, v = qkv.split((q.shape[-1], k.shape[-1], v.shape[-1]), dim=-1)
        q = q.reshape(B, T, H, hk) * hk ** -0.5
        k = k.reshape(B, T, H, hk)
        v = v.reshape(B, T, H, -1)
        g = (F.logsigmoid(self.gk_proj(x).float()) / self.cfg.gate_logit_normalizer).view(B, T, H, hk)
        o, S = _recurrence(self.cfg.backend, q, k, v, g, S, self.cfg.chunk_size)  # (B, T, H, V)
        o = self.head_norm(o) * F.silu(self.g_proj(x).view(B, T, H, -1))
        return self.proj_out(o.flatten(2)), S, conv


class Mamba2Mixer(nn.Module):
    """fla's Mamba2: conv -> SSD (scalar decay per head) -> + D x -> gated RMSNorm."""

    def __init__(self, cfg: RecurrentConfig, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        self.cfg = cfg
        d, inner, GN, H = cfg.d_model, cfg.expand * cfg.d_model, cfg.n_groups * cfg.state_size, cfg.mamba_heads
        self.split = (inner, inner + 2 * GN, H)  # z, xBC, dt
        self.in_proj = nn.Linear(d, sum(self.split), bias=False)
        self.conv1d = nn.Conv1d(inner + 2 * GN, inner + 2 * GN, cfg.conv_kernel, groups=inner + 2 * GN, bias=True)
        dt = torch.exp(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(inner))
        self.proj_out = nn.Linear(inner, d, bias=False)

    def state_shape(self, B: int):
        c = self.cfg
        conv_dim = c.expand * c.d_model + 2 * c.n_groups * c.state_size
        return (B, c.mamba_heads, c.state_size, c.mamba_head_dim), (B, c.conv_kernel - 1, conv_dim)

    def forward(self, x, S, conv):
        B, T, _ = x.shape
        c = self.cfg
        H, P, N, G = c.mamba_heads, c.mamba_head_dim, c.state_size, c.n_groups
        z, xbc, dt = self.in_proj(x).split(self.split, dim=-1)
        xbc = torch.cat((conv.to(xbc.dtype), xbc), dim=1)  # the previous inputs make the conv causal across calls
        conv = xbc[:, -(c.conv_kernel - 1):].clone()  # a copy: a view would keep all of xbc alive
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2)).transpose(1, 2))  # (B, T, inner + 2 G N)
        xs, Bm, Cm = xbc.split((H * P, G * N, G * N), dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, T, H)
        g = dt * -self.A_log.float().exp()  # log decay per head
        v = xs.reshape(B, T, H, P)
        rep = H // G
        k = (Bm.reshape(B, T, G, 1, N).expand(B, T, G, rep, N).reshape(B, T, H, N) * dt.unsqueeze(-1)).to(v.dtype)
        q = Cm.reshape(B, T, G, 1, N).expand(B, T, G, rep, N).reshape(B, T, H, N)
        y, S = _recurrence(c.backend, q, k, v, g, S, c.chunk_size)  # (B, T, H, P)
        y = y + self.D.to(y.dtype)[:, None] * v
        y = (y.reshape(B, T, H * P) * F.silu(z)).view(B, T, G, -1)  # gate, then normalise per group
        y = F.rms_norm(y, (y.shape[-1],), eps=c.norm_eps).reshape(B, T, H * P) * self.norm_weight
        return self.proj_out(y), S, conv


class RecurrentBlock(nn.Module):
    def __init__(self, cfg: RecurrentConfig):
        super().__init__()
        self.norm_m = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = GLAMixer(cfg) if cfg.mixer == "gla" else Mamba2Mixer(cfg)
        self.norm_f, self.ffn = RMSNorm(cfg.d_model, cfg.norm_eps), FeedForward(cfg)

    def forward(self, x, S, conv):
        m, S, conv = self.mixer(self.norm_m(x), S, conv)
        x = x + m
        return x + self.ffn(self.norm_f(x)), S, conv


class RecurrentLM(nn.Module):
    """A stack of GLA or Mamba-2 blocks with tied embeddings and the PlasticLM model interface."""

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        if not isinstance(config, RecurrentConfig):
            raise TypeError(f"RecurrentLM expects a RecurrentConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(RecurrentBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        std = config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = std / math.sqrt(2 * config.n_layers) if name.endswith(("proj_out.weight", "down.weight")) else std
                nn.init.normal_(p, std=s)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device=None, dtype=None) -> MixerState:
        p = self.embed.weight
        device, layers, conv = device or p.device, [], []
        for block in self.blocks:
            s_shape, c_shape = block.mixer.state_shape(batch_size)
            layers.append(torch.zeros(s_shape, device=device, dtype=dtype or torch.float32))
            conv.append(None if c_shape is None else torch.zeros(c_shape, device=device, dtype=dtype or p.dtype))
        return MixerState(layers, conv)

    def hidden(self, tokens, state: MixerState | None = None):
        """tokens (B, T) -> (h (B, T, d), state after them)."""
        _check_tokens(tokens, self.config.vocab_size)
        B = tokens.shape[0]
        state = self.init_state(B) if state is None else state
        if not isinstance(state, MixerState) or state.batch_size != B or len(state.layers) != self.config.n_layers:
            raise ValueError(f"state must be a MixerState of batch {B} with {self.config.n_layers} layers "
                             "(from init_state)")
        x = self.embed(tokens)
        layers, convs = [], []
        for block, S, conv in zip(self.blocks, state.layers, state.conv):
            x, S, conv = block(x, S, conv)
            layers.append(S)
            convs.append(conv)
        return self.norm(x), MixerState(layers, convs)

    def forward(self, tokens, state: MixerState | None = None):
        h, state = self.hidden(tokens, state)
        return F.linear(h, self.embed.weight), state

    def step(self, token, state: MixerState):
        if not torch.is_tensor(token) or token.dim() != 1:
            raise ValueError(f"step expects token of shape (B,), got {getattr(token, 'shape', type(token))}")
        logits, state = self(token.unsqueeze(1), state)
        return logits[:, 0], state


class RecurrentAsLM(PiecewiseLM):
    """A GLA or Mamba-2 baseline behind the evaluations' LM interface (constant-size state)."""

    def __init__(self, model: RecurrentLM, piece: int = 4096):
        super().__init__(model, piece)
        self.name = model.config.mixer
