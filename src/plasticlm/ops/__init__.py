"""The memory recurrence behind one function, three execution paths (DESIGN 1.3).

``naive`` is the token loop (ground truth, float64-capable), ``chunk`` the chunkwise-parallel
PyTorch version, ``kernel`` fla's ``chunk_gla`` on CUDA. ``auto`` picks ``kernel`` on CUDA
tensors when fla imports, else ``chunk``. All agree on o, the final state and every gradient.
"""
from __future__ import annotations

import torch

from .chunk import chunk_recurrence
from .kernel import INSTALL_HINT, kernel_available, kernel_recurrence
from .naive import naive_recurrence

MODES = ("auto", "naive", "chunk", "kernel")


def resolve_mode(mode: str, device: torch.device) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "kernel" if device.type == "cuda" and kernel_available() else "chunk"
    return mode


def _check(q, k, v, log_a, initial_state):
    for name, x in (("q", q), ("k", k), ("v", v), ("log_a", log_a)):
        if x.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, T, H, K/V), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if k.shape != q.shape or log_a.shape != q.shape:
        raise ValueError(
            f"q, k and log_a must share shape (B, T, H, K): q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"log_a {tuple(log_a.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, T, H, V) = {tuple(q.shape[:3])} + (V,), got {tuple(v.shape)}")
    if initial_state is not None:
        B, _, H, K = q.shape
        want = (B, H, K, v.shape[-1])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must have shape (B, H, K, V) = {want}, got {tuple(initial_state.shape)}")


def _run(average: bool, q, k, v, log_a, initial_state, mode, chunk_size):
    _check(q, k, v, log_a, initial_state)
    mode = resolve_mode(mode, q.device)
    if mode == "naive":
        return naive_recurrence(q, k, v, log_a, initial_state, average=average)
    if average:  # the gated average is GLA with the write weight folded into the key
        k = k * -torch.expm1(log_a.to(torch.promote_types(k.dtype, torch.float32))).to(k.dtype)
    if mode == "chunk":
        return chunk_recurrence(q, k, v, log_a, initial_state, chunk_size=chunk_size)
    return kernel_recurrence(q, k, v, log_a, initial_state)


def gated_average(q, k, v, log_a, initial_state=None, mode: str = "auto", chunk_size: int = 64):
    """The gated average: S_t = diag(a_t) S_{t-1} + diag(1 - a_t) k_t v_t^T, o_t = S_t^T q_t.

    Args:
        q, k: (B, T, H, K); v: (B, T, H, V); log_a: (B, T, H, K), log of the gate a in (0, 1].
        initial_state: (B, H, K, V) or None for zeros.
        mode: "naive" | "chunk" | "kernel" | "auto" (kernel on CUDA when fla imports, else chunk).
        chunk_size: chunk length of the chunk mode; need not divide T.
    Returns:
        (o, final_state): o (B, T, H, V) in v's dtype; final_state (B, H, K, V) in at least float32.
    """
    return _run(True, q, k, v, log_a, initial_state, mode, chunk_size)


def gated_decay(q, k, v, log_a, initial_state=None, mode: str = "auto", chunk_size: int = 64):
    """GLA's decay: S_t = diag(a_t) S_{t-1} + k_t v_t^T (write weight 1). Same contract as gated_average."""
    return _run(False, q, k, v, log_a, initial_state, mode, chunk_size)


__all__ = ["gated_average", "gated_decay", "resolve_mode", "MODES", "INSTALL_HINT", "kernel_available"]
