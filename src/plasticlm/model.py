"""PlasticLM: a recurrent LM whose memory is a gated average of linear-attention states.

Architecture only (DESIGN section 1); training loops, distribution and checkpoints live in
``plasticlm.trainer``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .embedding import MutableEmbedding
from .ops import gated_average, gated_decay
from .ops.conv import causal_conv, conv_tail
from .ops.correction import corrected_query
from .reversible import reversible_stack
from .state import State


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def gate_bias(n: int, min_half_life: float, max_half_life: float) -> torch.Tensor:
    """logit(a) for n gates whose half-lives a^h = 1/2 are log-uniform in [min, max]."""
    h = torch.logspace(math.log10(min_half_life), math.log10(max_half_life), n, dtype=torch.float64)
    log_a = -math.log(2) / h
    return (log_a - torch.log(-torch.expm1(log_a))).float()  # log a - log(1 - a)


class Memory(nn.Module):
    """The memory process M of DESIGN 1.2. q, k, v and the gates are projections of the input only.

    Its per-layer state is a dict: 'memory' S (B, H, K, V), plus 'conv' (the last inputs of the
    short convolution) and 'log_gate_prod' (log prod a, for the bias correction) when the config
    asks for them.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, K, V = cfg.n_heads, cfg.k_dim, cfg.v_dim
        self.split = (H * K, H * K, H * V, H * V)  # q, k, v, output gate
        self.proj_in = nn.Linear(cfg.d_model, sum(self.split), bias=False)
        C = sum(self.split[:3])
        self.conv = nn.Conv1d(C, C, cfg.short_conv, groups=C, bias=False) if cfg.short_conv else None
        if cfg.memory == "linear":
            self.gate = None
        elif cfg.gate_rank:
            self.gate = nn.Sequential(nn.Linear(cfg.d_model, cfg.gate_rank, bias=False), nn.Linear(cfg.gate_rank, H * K))
        else:
            self.gate = nn.Linear(cfg.d_model, H * K)
        self.head_norm = RMSNorm(V, cfg.norm_eps)
        self.proj_out = nn.Linear(H * V, cfg.d_model, bias=False)

    def reset_gate_bias(self) -> None:
        if self.gate is not None:
            H, K = self.cfg.n_heads, self.cfg.k_dim
            # Every head gets short, moderate and long memories: channel j of head h takes
            # half-life number j * H + h of the sorted spread.
            b = gate_bias(H * K, self.cfg.min_half_life, self.cfg.longest_half_life).view(K, H).t()
            with torch.no_grad():
                (self.gate[-1] if self.cfg.gate_rank else self.gate).bias.copy_(b.reshape(-1))

    def state_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        c = self.cfg
        shapes = {"memory": (batch_size, c.n_heads, c.k_dim, c.v_dim)}
        if c.short_conv:
            shapes["conv"] = (batch_size, c.short_conv - 1, sum(self.split[:3]))
        if c.corrects_bias:
            shapes["log_gate_prod"] = (batch_size, c.n_heads, c.k_dim)
        return shapes

    def inputs(self, x, S):
        """Projections of the layer input x (B, T, d) read after state S: q, k, log_a (B, T, H, K),
        v and output gate (B, T, H, V), and the state's parts other than the memory after x."""
        B, T, _ = x.shape
        H, K, V = self.cfg.n_heads, self.cfg.k_dim, self.cfg.v_dim
        C = sum(self.split[:3])
        qkv, og = self.proj_in(x).split((C, self.split[3]), dim=-1)
        q, k, v = qkv.split(self.split[:3], dim=-1)
        carried = {}
        if self.conv is not None:
            # Causal across calls: the previous call's last w - 1 inputs come first. The tail is
            # a copy, not a view: a view would keep all of qkv alive as long as the state lives
            # (the segment trainer keeps one state per segment boundary).
            carried["conv"] = conv_tail(S["conv"], qkv).to(S["conv"].dtype, copy=True)
            qkv = F.silu(causal_conv(S["conv"], qkv, self.conv.weight))
            q, k, v = qkv.split(self.split[:3], dim=-1)
        q, k = q.reshape(B, T, H, K), k.reshape(B, T, H, K)
        if self.cfg.qk_norm:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        else:
            q = q * K ** -0.5
        if self.gate is None:
            log_a = torch.zeros_like(k)
        else:
            log_a = F.logsigmoid(self.gate(x).to(torch.promote_types(x.dtype, torch.float32))).view(B, T, H, K)  # gates in >= fp32
        if self.cfg.corrects_bias:
            # 1 - prod_{s<=t} a_s is the weight written so far, per key channel.
            q, carried["log_gate_prod"] = corrected_query(q, log_a, S["log_gate_prod"])
        return q, k, v.reshape(B, T, H, V), log_a, og.reshape(B, T, H, V), carried

    def forward(self, x, S):
        """x (B, T, d), S (this layer's state) -> (y (B, T, d), state after x)."""
        q, k, v, log_a, og, carried = self.inputs(x, S)
        fn = gated_average if self.cfg.memory == "gated_average" else gated_decay
        mode = "naive" if x.shape[1] == 1 else self.cfg.mode  # one step needs no chunking
        o, memory = fn(q, k, v, log_a, S["memory"], mode=mode, chunk_size=self.cfg.chunk_size)  # (B, T, H, V)
        o = self.head_norm(o.to(v.dtype)) * F.silu(og)
        return self.proj_out(o.flatten(2)), {"memory": memory, **carried}

    def rewind(self, x, S_end):
        """Invert the recurrence over a segment: the start state that x drives to S_end.

        S_start = diag(1 / prod a) (S_end - sum_t diag(prod_{u>t} a_u) w_t k_t v_t^T). The
        division amplifies rounding by prod(1 / a_t): exact in exact arithmetic only.
        """
        if self.conv is not None:
            raise ValueError("time reversal cannot recover the short convolution's inputs before a segment: "
                             "use reverse_every=0 with short_conv")
        _, k, v, log_a, _, _ = self.inputs(x, S_end)
        dtype = S_end["memory"].dtype
        k, v, log_a = k.to(dtype), v.to(dtype), log_a.to(dtype)
        if self.cfg.memory == "gated_average":
            k = k * -torch.expm1(log_a)
        b = log_a.cumsum(1)  # (B, T, H, K)
        total = b[:, -1]  # (B, H, K)
        U = torch.einsum("bthk,bthv->bhkv", k * (total.unsqueeze(1) - b).exp(), v)
        start = {"memory": (S_end["memory"] - U) * (-total).exp().unsqueeze(-1)}
        if "log_gate_prod" in S_end:
            start["log_gate_prod"] = S_end["log_gate_prod"] - total.to(S_end["log_gate_prod"].dtype)
        return start


class FeedForward(nn.Module):
    """SwiGLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, 2 * cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)

    def forward(self, x):
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_m, self.memory = RMSNorm(cfg.d_model, cfg.norm_eps), Memory(cfg)
        self.norm_f, self.ffn = RMSNorm(cfg.d_model, cfg.norm_eps), FeedForward(cfg)

    def mem(self, x, S):
        return self.memory(self.norm_m(x), S)

    def ff(self, x):
        return self.ffn(self.norm_f(x))

    def forward(self, x, S):
        """Plain pre-norm residual block."""
        m, S = self.mem(x, S)
        x = x + m
        return x + self.ff(x), S

    def forward_rev(self, x1, x2, S):
        """RevNet coupling: y1 = x1 + M(x2), y2 = x2 + F(y1)."""
        m, S = self.mem(x2, S)
        y1 = x1 + m
        return y1, x2 + self.ff(y1), S

    def inverse(self, y1, y2, S):
        """Inputs of forward_rev from its outputs, given the memory's start state S."""
        x2 = y2 - self.ff(y1)
        return y1 - self.mem(x2, S)[0], x2


class PlasticLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"PlasticLM expects a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)  # tied to the output head
        self.mutable = (MutableEmbedding(config.d_model, config.table_slots, config.mutable_context, config.chunk_size)
                        if config.embeddings == "mutable" else None)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        # False: the reversible coupling under plain autograd, storing every block's activations
        # instead of rebuilding them (less compute, more memory; the segment trainer bounds them).
        self.reconstruct = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Output projections are scaled down with depth, as in GPT-2.
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("proj_out.weight", "down.weight")) else std
                nn.init.normal_(p, std=s)
        for block in self.blocks:
            block.memory.reset_gate_bias()
        if self.mutable is not None:
            self.mutable.reset_gate_bias()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        """The state before any token, for ``batch_size`` sequences (at least float32)."""
        p = self.embed.weight
        dtype = dtype or (torch.float64 if p.dtype == torch.float64 else torch.float32)
        def zeros(shapes):
            return {k: torch.zeros(shape, device=device or p.device, dtype=dtype) for k, shape in shapes.items()}

        return State.from_layers([zeros(block.memory.state_shapes(batch_size)) for block in self.blocks],
                                 zeros(self._embed_shapes(batch_size)))

    def _embed_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
        return {} if self.mutable is None else self.mutable.state_shapes(batch_size, self.config.d_model)

    def embed_tokens(self, tokens, state: State):
        """The blocks' input: base embeddings, plus the mutable table's reads when there is one;
        and the table's state after the tokens."""
        x = self.embed(tokens)  # (B, T, d)
        if self.mutable is None:
            return x, {}
        mode = "naive" if self.config.mode == "naive" else "chunk"
        reads, E = self.mutable(tokens, x, state.embed, mode)
        return x + reads, E

    def hidden(self, tokens, state: State | None = None, check: bool = True):
        """Final hidden states before the head: tokens (B, T) -> (h (B, T, d), state).

        ``check=False`` skips validating tokens and state (the token range check reads the ids
        back to the host, a device sync): for callers that validated the whole batch already.
        """
        B = tokens.shape[0]
        if check:
            self._check_tokens(tokens)
            state = state if state is None else self._check_state(state, B)
        state = self.init_state(B) if state is None else state
        x, E = self.embed_tokens(tokens, state)
        parts = [state.layer(i) for i in range(len(self.blocks))]
        if self.config.reversible:
            if self.reconstruct and torch.is_grad_enabled():
                y1, y2, S = reversible_stack(self.blocks, x, x, parts)
            else:
                y1, y2, S = x, x, []
                for block, s in zip(self.blocks, parts):
                    y1, y2, s = block.forward_rev(y1, y2, s)
                    S.append(s)
            h = (y1 + y2) / 2
        else:
            h, S = x, []
            for block, s in zip(self.blocks, parts):
                h, s = block(h, s)
                S.append(s)
        return self.norm(h), State.from_layers(S, E)

    def forward(self, tokens, state: State | None = None, check: bool = True):
        """tokens (B, T) int -> (logits (B, T, vocab), final state)."""
        h, state = self.hidden(tokens, state, check)
        return F.linear(h, self.embed.weight), state

    def step(self, token, state: State):
        """One token per row: token (B,) -> (logits (B, vocab), state)."""
        if not torch.is_tensor(token) or token.dim() != 1:
            raise ValueError(f"step expects token of shape (B,), got {getattr(token, 'shape', type(token))}")
        logits, state = self(token.unsqueeze(1), state)
        return logits[:, 0], state

    def gates(self, tokens, state: State | None = None) -> list[torch.Tensor]:
        """log a_t of every layer, (B, T, H, K) each, under plain autograd (for the gradient-length
        proxy of DESIGN 3: the reversible stack's custom backward gives no gradients to
        intermediate values). Activation memory grows with T: use short probes.
        """
        return [inputs[3] for inputs in self.memory_inputs(tokens, state)]

    def memory_inputs(self, tokens, state: State | None = None) -> list[tuple]:
        """Every layer's ``Memory.inputs`` on ``tokens`` (q, k, v, log a, output gate, carried),
        under plain autograd, as :meth:`gates`."""
        self._check_tokens(tokens)
        state = self.init_state(tokens.shape[0]) if state is None else self._check_state(state, tokens.shape[0])
        x1 = x2 = self.embed_tokens(tokens, state)[0]
        out = []
        for i, block in enumerate(self.blocks):
            S = state.layer(i)
            out.append(block.memory.inputs(block.norm_m(x2 if self.config.reversible else x1), S))
            if i + 1 < len(self.blocks):
                if self.config.reversible:
                    x1, x2, _ = block.forward_rev(x1, x2, S)
                else:
                    x1, _ = block(x1, S)
                    x2 = x1
        return out

    @torch.no_grad()
    def rewind(self, tokens, state_end: State) -> State:
        """The state before ``tokens`` that leads to ``state_end`` (time reversal, DESIGN 2).

        Layer l's inputs depend only on the start states of layers below it, so the layers are
        inverted bottom-up, each then run forward to produce the next layer's inputs.
        """
        self._check_tokens(tokens)
        self._check_state(state_end, tokens.shape[0])
        if self.mutable is not None:
            raise ValueError("time reversal cannot recover the mutable embedding table before a segment: "
                             "use reverse_every=0 with embeddings='mutable'")
        x1 = x2 = self.embed(tokens)
        starts = []
        for i, block in enumerate(self.blocks):
            S_end = state_end.layer(i)
            x_mem = x2 if self.config.reversible else x1
            S0 = block.memory.rewind(block.norm_m(x_mem), S_end)
            starts.append(S0)
            if self.config.reversible:
                x1, x2, _ = block.forward_rev(x1, x2, S0)
            else:
                x1, _ = block(x1, S0)
                x2 = x1
        return State.from_layers(starts)

    def _check_tokens(self, tokens) -> None:
        if not torch.is_tensor(tokens):
            raise TypeError(f"tokens must be a torch.Tensor of shape (B, T), got {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor (torch.long), got dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got shape {tuple(tokens.shape)}")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must hold at least one row and one position, got shape {tuple(tokens.shape)}")
        lo, hi = int(tokens.min()), int(tokens.max())
        V = self.config.vocab_size
        if lo < 0 or hi >= V:
            bad = lo if lo < 0 else hi
            pos = tuple(int(i) for i in (tokens == bad).nonzero()[0])
            raise ValueError(f"token id {bad} at position {pos} is out of range [0, {V}) (vocab_size={V})")

    def _check_state(self, state: State, batch_size: int) -> State:
        if not isinstance(state, State):
            raise TypeError(f"state must be a plasticlm.State, got {type(state).__name__}")
        c = self.config
        if len(state.layers) != c.n_layers:
            raise ValueError(f"state has {len(state.layers)} layers, the model has n_layers={c.n_layers}")
        want = self.blocks[0].memory.state_shapes(batch_size)
        kinds = sorted(k for k in want if k != "memory")
        if sorted(state.extra) != kinds:
            raise ValueError(f"state carries {sorted(state.extra) or 'memories only'}, this model's layers carry "
                             f"{kinds or 'memories only'} (short_conv={c.short_conv}, "
                             f"bias_correction={c.corrects_bias})")
        for i in range(c.n_layers):
            for kind, s in state.layer(i).items():
                what = "layer" if kind == "memory" else kind
                if tuple(s.shape) != want[kind]:
                    shape = "(B, H, K, V) = " if kind == "memory" else ""
                    raise ValueError(f"state {what} {i} has shape {tuple(s.shape)}, expected {shape}{want[kind]}")
                if not s.is_floating_point():
                    raise TypeError(f"state {what} {i} must be floating point, got dtype {s.dtype}")
        want = self._embed_shapes(batch_size)
        if sorted(state.embed) != sorted(want):
            raise ValueError(f"state carries {'a mutable embedding table' if state.embed else 'no embedding table'}, "
                             f"this model (embeddings={c.embeddings!r}) "
                             f"{'needs parts ' + str(sorted(want)) if want else 'has none'}")
        for kind, s in state.embed.items():
            if tuple(s.shape) != want[kind]:
                raise ValueError(f"state embed.{kind} has shape {tuple(s.shape)}, expected {want[kind]}")
            if not s.is_floating_point():
                raise TypeError(f"state embed.{kind} must be floating point, got dtype {s.dtype}")
        return state
