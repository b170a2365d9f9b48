"""Token-by-token recurrences: the ground truth every faster path is tested against.

Layout follows fla: q, k, log_a are (B, T, H, K), v is (B, T, H, V), states are (B, H, K, V).
Computation runs in at least float32 (float64 stays float64), so this path can serve as a
float64 reference.
"""
from __future__ import annotations

import torch


def naive_recurrence(q, k, v, log_a, initial_state=None, average: bool = True):
    """S_t = diag(a_t) S_{t-1} + diag(w_t) k_t v_t^T,  o_t = S_t^T q_t.

    w_t = 1 - a_t for the gated average (``average=True``), w_t = 1 for the plain decay (GLA).
    Returns (o in v's dtype, final state in the compute dtype).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = torch.promote_types(q.dtype, torch.float32)
    out_dtype = v.dtype
    q, k, v, log_a = (x.to(dtype) for x in (q, k, v, log_a))
    if initial_state is None:
        S = q.new_zeros(B, H, K, V)
    else:
        S = initial_state.to(dtype)
    outs = []
    for t in range(T):
        g = log_a[:, t]  # (B, H, K)
        kt = k[:, t] * -torch.expm1(g) if average else k[:, t]  # 1 - a without cancellation
        S = g.exp().unsqueeze(-1) * S + kt.unsqueeze(-1) * v[:, t].unsqueeze(-2)  # (B, H, K, V)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(B, 0, H, V, dtype=dtype)  # (B, T, H, V)
    return o.to(out_dtype), S
