"""Cross-entropy of a tied output head without materialising the full logits.

With a 32k vocabulary the logits of a 65,536-token step take 8 GiB in float32, and their
gradient as much again: often more than the whole model's activations. Here the rows are
taken ``chunk_rows`` at a time; each chunk's logits live only while that chunk's loss and
its gradients with respect to the hidden states and the head weight are formed (in the
forward pass, as Liger-Kernel's fused linear cross-entropy does), so the backward pass is a
scaling and the matmul count equals the plain path's.
"""
from __future__ import annotations

import torch


def _compute_dtype(h: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(h.device.type):  # match F.linear under autocast
        return torch.get_autocast_dtype(h.device.type)
    return torch.promote_types(h.dtype, w.dtype)


def _chunks(h, weight, targets, scale, chunk_rows, want_grads):
    """Yield per chunk (loss sum, grad_h chunk or None, grad_W contribution or None)."""
    dt = _compute_dtype(h, weight)
    W = weight.to(dt)
    acc = torch.promote_types(dt, torch.float32)
    for a in range(0, h.shape[0], chunk_rows):
        hc, y, s = h[a:a + chunk_rows].to(dt), targets[a:a + chunk_rows], scale[a:a + chunk_rows]
        logits = (hc @ W.t()).to(acc)  # (n, V)
        lse = logits.logsumexp(-1)  # (n,)
        ce = lse - logits.gather(1, y[:, None]).squeeze(1)
        loss = (ce * s).sum()
        if not want_grads:
            yield loss, None, None
            continue
        d = (logits - lse[:, None]).exp_()  # softmax, in place over the logits' buffer
        d[torch.arange(len(y), device=d.device), y] -= 1
        d = (d * s[:, None]).to(dt)  # d loss / d logits
        yield loss, d @ W, d.t() @ hc


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, scale, chunk_rows):
        gh = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        gw = torch.zeros(weight.shape, dtype=torch.promote_types(weight.dtype, torch.float32), device=weight.device)
        total = h.new_zeros((), dtype=torch.float32 if h.dtype != torch.float64 else torch.float64)
        for i, (loss, dh, dw) in enumerate(_chunks(h, weight, targets, scale, chunk_rows, True)):
            total += loss
            if gh is not None:
                gh[i * chunk_rows:i * chunk_rows + dh.shape[0]] = dh
            gw += dw
        ctx.save_for_backward(gh, gw.to(weight.dtype) if ctx.needs_input_grad[1] else None)
        return total

    @staticmethod
    def backward(ctx, g):
        gh, gw = ctx.saved_tensors
        return (None if gh is None else gh * g.to(gh.dtype), None if gw is None else gw * g.to(gw.dtype),
                None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          weights: torch.Tensor | None = None, total: torch.Tensor | float | None = None,
                          chunk_rows: int | None = None) -> torch.Tensor:
    """sum_t w_t * CE(hidden_t @ weight^T, targets_t) / total, never holding all logits at once.

    Args:
        hidden: (..., d) final hidden states; weight: (V, d) the (tied) head.
        targets: (...) integer ids; positions with weight 0 may hold any id (padding).
        weights: (...) per-token loss weights, or None for ones.
        total: the normaliser; None means the sum of the weights (a weighted mean). Pass the
            whole batch's weight sum to get :func:`plasticlm.trainer.segment.segment_loss`'s value.
        chunk_rows: rows per chunk; None picks about 2^27 logits per chunk (512 MiB in float32).
    Returns:
        a scalar in at least float32; its gradient reaches ``hidden`` and ``weight``.
    """
    d, V = hidden.shape[-1], weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != d:
        raise ValueError(f"weight must be (V, d) with d={d} (hidden's last dim), got {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {tuple(hidden.shape[:-1])} (hidden without its last dim), "
                         f"got {tuple(targets.shape)}")
    h = hidden.reshape(-1, d)
    acc = torch.promote_types(hidden.dtype, torch.float32)
    w = torch.ones(h.shape[0], device=h.device, dtype=acc) if weights is None else weights.reshape(-1).to(acc)
    if weights is not None and weights.shape != targets.shape:
        raise ValueError(f"weights must have the targets' shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
    total = w.sum() if total is None else total
    scale = w / total
    y = targets.reshape(-1).clamp(0, V - 1)
    rows = chunk_rows or max(1, 2 ** 27 // V)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCE.apply(h, weight, y, scale, rows)
    return sum(loss for loss, _, _ in _chunks(h, weight, y, scale, rows, False))
