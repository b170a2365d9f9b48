"""The Absolute Unit NN: a deep residual MLP from the binary code of a position to the token there.

It has no context and no recurrent state: its input is an index i (a position in one long
list of tokens) and its output is a distribution over the token at i. It "reads" by taking
gradient steps on (index, token) pairs (``plasticlm.aunn.online``), so every row of a batch
may carry its own copy of the weights: :meth:`AUNN.forward` takes such per-row weights.

Architecture only; offline training and checkpoints live in ``plasticlm.aunn.offline``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import AUNNConfig


def encode_index(index: torch.Tensor, bits: int) -> torch.Tensor:
    """index (...) int64 in [0, 2**bits) -> code (..., bits) float32 in {-1, +1}, least significant bit first."""
    if index.dtype != torch.long:
        raise TypeError(f"index must be an int64 tensor, got {index.dtype}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= 1 << bits):
        raise ValueError(f"index out of range: the {bits}-bit code holds [0, {1 << bits}), "
                         f"got values in [{int(index.min())}, {int(index.max())}]")
    shifts = torch.arange(bits, device=index.device)
    return ((index.unsqueeze(-1) >> shifts) & 1).float() * 2 - 1  # (..., bits)


def decode_index(code: torch.Tensor) -> torch.Tensor:
    """code (..., bits) with the sign of each bit -> index (...) int64; inverts :func:`encode_index`."""
    shifts = torch.arange(code.shape[-1], device=code.device)
    return ((code > 0).long() << shifts).sum(-1)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (..., N, in) with shared w (out, in), b (out,), or x (B, N, in) with per-row w (B, out, in), b (B, out)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (B, N, out)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), None, eps) * (w if w.dim() == 1 else w.unsqueeze(1))


class Block(nn.Module):
    """x + down(gelu(up(norm(x))))."""

    def __init__(self, cfg: AUNNConfig):
        super().__init__()
        self.norm = nn.Parameter(torch.ones(cfg.width))
        self.up = nn.Linear(cfg.width, cfg.hidden_dim)
        self.down = nn.Linear(cfg.hidden_dim, cfg.width)


class AUNN(nn.Module):
    """index -> logits over the vocabulary. ``next_index`` is where reading starts: one past the
    last index of the offline training stream (the trainer sets it; checkpoints keep it)."""

    def __init__(self, config: AUNNConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Linear(config.index_bits, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.Parameter(torch.ones(config.width))
        self.head = nn.Linear(config.width, config.vocab_size)
        self.register_buffer("next_index", torch.zeros(1, dtype=torch.long))  # (1,): a 0-dim tensor cannot be hashed into the model_id
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        # Fan-in scaling keeps activations O(1) from the +-1 code on; residual branches start
        # small (1/sqrt(depth)) so a deep stack begins close to a shallow one.
        nn.init.normal_(self.embed.weight, std=cfg.index_bits ** -0.5)
        for blk in self.blocks:
            nn.init.normal_(blk.up.weight, std=cfg.width ** -0.5)
            nn.init.normal_(blk.down.weight, std=(cfg.hidden_dim * cfg.depth) ** -0.5)
            blk.norm.fill_(1.0)
        nn.init.normal_(self.head.weight, std=0.1 * cfg.width ** -0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.bias.zero_()
        self.norm.fill_(1.0)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, index: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """index (N,) or (B, N) int64 -> logits (..., N, V).

        ``params`` maps every name of ``named_parameters()`` to per-row weights (B, *shape)
        (an AUNNState's); then ``index`` must be (B, N) and row b is computed with weights b.
        None uses the module's own weights for every row.
        """
        p = dict(self.named_parameters()) if params is None else params
        if params is not None:
            B = p["embed.weight"].shape[0]
            if index.dim() != 2 or index.shape[0] != B:
                raise ValueError(f"per-row weights for {B} rows need index of shape ({B}, N), got {tuple(index.shape)}")
        eps = self.config.norm_eps
        x = _linear(encode_index(index, self.config.index_bits).to(p["embed.weight"].dtype),
                    p["embed.weight"], p["embed.bias"])  # (..., N, width)
        for i in range(self.config.depth):
            h = _rms_norm(x, p[f"blocks.{i}.norm"], eps)
            h = F.gelu(_linear(h, p[f"blocks.{i}.up.weight"], p[f"blocks.{i}.up.bias"]))  # (..., N, hidden)
            x = x + _linear(h, p[f"blocks.{i}.down.weight"], p[f"blocks.{i}.down.bias"])
        x = _rms_norm(x, p["norm"], eps)
        return _linear(x, p["head.weight"], p["head.bias"])  # (..., N, V)
