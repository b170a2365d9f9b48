"""Chunkwise-parallel gated linear attention in plain PyTorch (CPU and GPU).

The sequence is cut into chunks of C tokens; across chunks, only the (K, V) state is passed
along, one small update per chunk. Gates enter as cumulative sums b of log a from the chunk
start (b <= 0, falling). Within a chunk the outputs come from one of two exact forms:

- **masked** (fast): one (C x C) product (q e^b)(k e^-b)^T, lower triangle kept. Its factors
  e^{+-b} are finite and far from underflow only while no chunk decays by more than
  ``MASKED_LIMIT`` (e^40 in float32), which holds for the gates of every trained model we have
  measured; each factor then carries its own rounding only, so the product is as exact as the
  other form. The same k e^-b, scaled by e^{b_last}, gives each chunk's state update.
- **halving** (always safe): products over halves of blocks, every exponential taken of a
  difference b_t - b_s with s <= t, so each factor lies in (0, 1] and nothing overflows however
  strong the decay. The chunk size must be a power of two, so the halves cover every pair.

``form='auto'`` takes the masked form when the strongest chunk decay allows it, else halving.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_limit(dtype: torch.dtype) -> float:
    """The largest chunk decay -b the masked form takes: e^{+-limit} well inside the dtype's range."""
    return 0.45 * math.log(torch.finfo(dtype).max)  # float32: 40, float64: 319


def chunk_recurrence(q, k, v, log_a, initial_state=None, chunk_size: int = 64, form: str = "auto"):
    """S_t = diag(a_t) S_{t-1} + k_t v_t^T,  o_t = S_t^T q_t  (GLA form, write weight folded into k).

    Shapes as in :func:`plasticlm.ops.naive.naive_recurrence`. ``form``: the intra-chunk
    product, 'auto', 'masked' or 'halving' (module docstring). Returns (o in v's dtype, final
    state in the compute dtype, at least float32).
    """
    if form not in ("auto", "masked", "halving"):
        raise ValueError(f"form must be 'auto', 'masked' or 'halving', got {form!r}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = int(chunk_size)
    if C < 1 or C & (C - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size!r}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    out_dtype = v.dtype
    # (B, H, T, *) so the matrix products run over the trailing two dimensions.
    q, k, v, g = (x.to(dtype).transpose(1, 2) for x in (q, k, v, log_a))
    N = max(1, math.ceil(T / C))
    pad = N * C - T
    if pad:  # padded steps have a = 1 and k = 0, so they leave the state untouched
        q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    q, k, g = (x.reshape(B, H, N, C, K) for x in (q, k, g))
    v = v.reshape(B, H, N, C, V)

    b = g.cumsum(-2)  # (B, H, N, C, K) log decay from the chunk start, inclusive
    b_last = b[..., -1, :]  # (B, H, N, K)
    masked = form == "masked" or (form == "auto" and bool(b_last.min() >= -masked_limit(dtype)))
    e_b = b.exp()
    decay = b_last.exp().unsqueeze(-1)  # (B, H, N, K, 1)

    # Inter-chunk: what each chunk adds to the state, then one sequential pass over chunks.
    if masked:  # e^{b_last - b} = e^{b_last} e^{-b}: the masked form's k e^{-b} serves both products
        k_undecayed = k * (-b).exp()
        U = decay * (k_undecayed.transpose(-1, -2) @ v)  # (B, H, N, K, V)
    else:
        U = (k * (b_last.unsqueeze(-2) - b).exp()).transpose(-1, -2) @ v
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(dtype)
    starts = []
    # unbind, not decay[:, :, n]: each indexing's backward would write a zero tensor of the
    # whole (B, H, N, ...) shape, N times over.
    for d_n, U_n in zip(decay.unbind(2), U.unbind(2)):
        starts.append(S)
        S = d_n * S + U_n  # (B, H, K, V)
    q_decayed = q * e_b
    o = q_decayed @ torch.stack(starts, dim=2)  # (B, H, N, C, V)

    if masked:
        scores = (q_decayed @ k_undecayed.transpose(-1, -2)).tril()  # (B, H, N, C, C); diagonal: decay 1
        o = (o + scores @ v).reshape(B, H, N * C, V)[:, :, :T]
        return o.transpose(1, 2).to(out_dtype), S

    # Intra-chunk, by halving: at each level a block of s tokens splits into halves, and the
    # second half reads the first through the reference point r = b at the first half's last
    # token: exp(b_t - b_s) = exp(b_t - r) * exp(r - b_s), both factors <= 1. The levels s = 2,
    # 4, ..., C cover every pair s < t of the chunk once; the diagonal s = t has decay 1.
    o_intra = (q * k).sum(-1, keepdim=True) * v  # (B, H, N, C, V)
    s = 2
    while s <= C:
        h = s // 2
        qb, kb, bb = (x.reshape(B, H, N, C // s, 2, h, K) for x in (q, k, b))
        ref = bb[..., 0, -1:, :]  # (B, H, N, C/s, 1, K)
        q2 = qb[..., 1, :, :] * (bb[..., 1, :, :] - ref).exp()  # (B, H, N, C/s, h, K)
        k1 = kb[..., 0, :, :] * (ref - bb[..., 0, :, :]).exp()  # (B, H, N, C/s, h, K)
        late = (q2 @ k1.transpose(-1, -2)) @ v.reshape(B, H, N, C // s, 2, h, V)[..., 0, :, :]  # (B, H, N, C/s, h, V)
        o_intra = o_intra + torch.stack((torch.zeros_like(late), late), dim=-3).reshape(B, H, N, C, V)
        s *= 2

    o = (o + o_intra.reshape(B, H, N, C, V)).reshape(B, H, N * C, V)[:, :, :T]
    return o.transpose(1, 2).to(out_dtype), S
