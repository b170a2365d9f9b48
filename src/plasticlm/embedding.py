"""Mutable embeddings (DESIGN 1.4, RQ6): a per-sequence table the model writes while it reads.

Token id x hashes to one of m slots, j(x) = (x * 2654435761) mod m (one id per slot when
m >= vocab). Each occurrence of x reads its slot, then writes to it::

    read_t  = M[j] / (1 - P[j])                                  (before the write at t)
    M[j]   <- a_t M[j] + (1 - a_t) w_t,   P[j] <- a_t P[j]       (P = prod a, carried as log P)

w_t and a_t (a scalar per token) are functions of the last ``context`` base embeddings up to
and including x_t: a causal depthwise convolution, then a linear write and a sigmoid gate. The
slot thus holds a running average of the contexts its token was read in, which is what a code
means in the shuffled-vocabulary task (the Rosetta header puts t next to code(t); ordinary text
gives the distributional meaning). Dividing by 1 - P, as the memory's bias correction does,
makes the first write count in full. The embedding of x_t is base[x_t] + read_t; the output
head stays tied to the base table only (a head from the mutable table would need the whole
table at every position).

Why the write is driven by the layer-0 input and not by a deeper layer's output: the table then
depends only on the tokens, so it is computed for a whole piece before the blocks run, has a
parallel form and keeps the stack's segment and reversible machinery unchanged; a write from
layer L's output would make every position wait for the whole stack at the position before.

Two paths, as for the memory: :func:`table_naive` (token by token, the reference) and
:func:`table_chunk` (chunks of C tokens: the same-slot pairs inside a chunk as one masked
(C x C) product, the table carried between chunks); they agree on reads, final table and every
gradient. Every exponent is a sum of log a over positions between two same-slot occurrences,
so it is <= 0 and nothing overflows.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.conv import causal_conv, conv_tail

HASH = 2654435761  # Knuth's multiplicative constant, a prime: ids < m map one to one for any smaller m


def slots_of(tokens: torch.Tensor, m: int) -> torch.Tensor:
    return (tokens.long() * HASH) % m


def _corrected(num: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    # 1 - P is the weight written so far (0 for a slot never written, whose num is 0 too).
    return num / (-torch.expm1(log_p)).clamp_min(1e-20).unsqueeze(-1)


def table_naive(slots, w, log_a, table, log_p):
    """slots (B, T) long, w (B, T, d), log_a (B, T), table (B, m, d), log_p (B, m)
    -> (reads (B, T, d), table, log_p) after the T tokens."""
    B, T = slots.shape
    rows = torch.arange(B, device=slots.device)
    reads = []
    for t in range(T):
        j = slots[:, t]
        reads.append(_corrected(table[rows, j], log_p[rows, j]))
        a = log_a[:, t].exp()
        onehot = F.one_hot(j, table.shape[1]).to(table.dtype)  # (B, m): out of place, autograd-safe
        new = a.unsqueeze(-1) * table[rows, j] + (1 - a).unsqueeze(-1) * w[:, t]
        table = table + onehot.unsqueeze(-1) * (new - table[rows, j]).unsqueeze(1)
        log_p = log_p + onehot * log_a[:, t].unsqueeze(-1)
    return torch.stack(reads, 1), table, log_p


def table_chunk(slots, w, log_a, table, log_p, chunk_size: int = 64):
    """:func:`table_naive`, chunk by chunk."""
    B, T = slots.shape
    m = table.shape[1]
    reads = []
    for s in range(0, T, chunk_size):
        j, wc, la = slots[:, s:s + chunk_size], w[:, s:s + chunk_size], log_a[:, s:s + chunk_size]
        C = j.shape[1]
        same = j.unsqueeze(2) == j.unsqueeze(1)  # (B, C, C): [t, u] same slot
        before = same & torch.ones(C, C, dtype=torch.bool, device=j.device).tril(-1)
        # c_excl[t] = sum of log a over earlier same-slot positions of this chunk; c_incl adds t's own.
        c_excl = (before.to(la.dtype) @ la.unsqueeze(-1)).squeeze(-1)
        c_incl = c_excl + la
        # Write u reaches read t (u < t, same slot) through the gates of the same-slot writes in (u, t).
        decay = torch.where(before, (c_excl.unsqueeze(2) - c_incl.unsqueeze(1)).clamp_max(0), -torch.inf).exp()
        written = (1 - la.exp()).unsqueeze(-1) * wc  # (B, C, d)
        num = decay.to(wc.dtype) @ written + c_excl.exp().unsqueeze(-1) * table.gather(
            1, j.unsqueeze(-1).expand(-1, -1, table.shape[-1]))
        lp = log_p.gather(1, j) + c_excl
        reads.append(_corrected(num, lp))
        # Table after the chunk: each slot decayed by all its chunk gates, plus each write decayed
        # by the same-slot gates after it.
        total = torch.zeros(B, m, dtype=la.dtype, device=la.device).scatter_add(1, j, la)  # (B, m)
        after = (total.gather(1, j) - c_incl).clamp_max(0)  # (B, C)
        added = torch.zeros_like(table).scatter_add(1, j.unsqueeze(-1).expand_as(wc), after.exp().unsqueeze(-1) * written)
        table = total.exp().unsqueeze(-1) * table + added
        log_p = log_p + total
    return torch.cat(reads, 1), table, log_p


class MutableEmbedding(nn.Module):
    """The per-sequence table: its write and gate (the tied base table lives in the model).

    State parts (model-level, not per layer): 'table' (B, m, d), 'log_gate_prod' (B, m), and
    'context' (B, w - 1, d), the last base embeddings the convolution needs across calls.
    Each chunk of C tokens produces a new (B, m, d) table, which autograd keeps: a segment of L
    tokens holds L / C of them, so m wants to stay in the thousands for wide models (the default,
    one slot per id, suits byte and small vocabularies).
    """

    def __init__(self, d_model: int, slots: int, context: int, chunk_size: int):
        super().__init__()
        self.slots, self.context, self.chunk_size = slots, context, chunk_size
        self.conv = nn.Conv1d(d_model, d_model, context, groups=d_model, bias=False)
        self.write = nn.Linear(d_model, d_model, bias=False)
        self.gate = nn.Linear(d_model, 1)

    def reset_gate_bias(self) -> None:
        with torch.no_grad():
            self.gate.bias.fill_(2.2)  # a ~ 0.9 at first: a slot averages its last ~10 occurrences

    def state_shapes(self, batch_size: int, d_model: int) -> dict[str, tuple[int, ...]]:
        return {"table": (batch_size, self.slots, d_model), "log_gate_prod": (batch_size, self.slots),
                "context": (batch_size, self.context - 1, d_model)}

    def forward(self, tokens, base, E: dict, mode: str = "chunk"):
        """tokens (B, T), base (B, T, d) their base embeddings, E the table's state ->
        (what to add to the embeddings (B, T, d), the table's state after the tokens)."""
        T = tokens.shape[1]
        dtype = E["table"].dtype
        u = F.silu(causal_conv(E["context"].to(base.dtype), base, self.conv.weight))
        w = self.write(u).to(dtype)
        log_a = F.logsigmoid(self.gate(u).squeeze(-1).to(dtype))
        fn = table_naive if mode == "naive" or T == 1 else table_chunk
        kw = {} if fn is table_naive else {"chunk_size": self.chunk_size}
        reads, table, log_p = fn(slots_of(tokens, self.slots), w, log_a, E["table"], E["log_gate_prod"], **kw)
        # A copy, not a view, of the carried inputs: see Memory.inputs.
        context = conv_tail(E["context"], base).to(E["context"].dtype, copy=True)
        return reads.to(base.dtype), {"table": table, "log_gate_prod": log_p, "context": context}
