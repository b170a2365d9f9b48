"""fla's Triton ``chunk_gla`` kernel (CUDA only; the optional ``kernels`` extra).

The gated average is GLA with k' = (1 - a) * k and g = log a, so one kernel serves all
memory variants. fla is imported lazily: a CPU install never needs it.
"""
from __future__ import annotations

import functools

import torch

INSTALL_HINT = (
    "mode='kernel' needs flash-linear-attention (fla) and a CUDA device; install it with "
    "`pip install 'plasticlm[kernels]'`, or use mode='chunk' (pure PyTorch, any device)"
)


@functools.lru_cache(maxsize=1)
def _chunk_gla():
    try:
        from fla.ops.gla import chunk_gla
    except Exception as e:  # ImportError, or Triton failing to load on a machine without CUDA
        return e
    return chunk_gla


def kernel_available() -> bool:
    return torch.cuda.is_available() and not isinstance(_chunk_gla(), Exception)


def _on_cuda(t: torch.Tensor) -> bool:
    return t.is_cuda  # a seam: tests/test_kernel_mapping.py checks the argument mapping on CPU


def kernel_recurrence(q, k, v, log_a, initial_state=None):
    """Same contract as :func:`plasticlm.ops.chunk.chunk_recurrence`, on fla's kernel.

    fla's ``chunk_gla(q, k, v, g, scale, initial_state, output_final_state)`` takes (B, T, H, K)
    layouts, g as a natural-log decay, a float32 initial state of (B, H, K, V), and one dtype for
    q, k and v; ``scale=1`` because the model applies its own query scale (and the bias
    correction's), as the naive and chunk paths assume.
    """
    fn = _chunk_gla()
    if isinstance(fn, Exception):
        raise RuntimeError(f"{INSTALL_HINT} (import failed: {fn!r})")
    if not _on_cuda(q):
        raise RuntimeError(f"mode='kernel' runs on CUDA tensors only, got device {q.device}; use mode='chunk'")
    h0 = None if initial_state is None else initial_state.float()
    o, ht = fn(q.to(v.dtype), k.to(v.dtype), v, log_a.float(), scale=1.0, initial_state=h0, output_final_state=True)
    return o.to(v.dtype), ht
