"""Exact, constant-memory backpropagation through time (DESIGN section 2).

A (B, T) batch is cut into segments of L tokens. A forward sweep without a graph keeps only
the recurrent state at each segment boundary; a backward sweep, last segment first,
recomputes one segment with a graph from its start state and backpropagates its share of the
loss together with the gradient that reaches its final state from the segments after it.
Loss and gradients equal those of full-sequence autograd; activation memory is one
segment's, plus the boundary states. The last segment runs once, in the backward sweep, so a
batch of n segments costs 2n - 1 forwards and n backwards (one segment: plain autograd).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..state import State
from .chunked_ce import chunked_cross_entropy


def _check_batch(model, tokens, targets, weights, segment_len):
    if not isinstance(segment_len, int) or isinstance(segment_len, bool) or segment_len < 1:
        raise ValueError(f"segment_len must be a positive integer, got {segment_len!r}")
    model._check_tokens(tokens)
    if not torch.is_tensor(targets) or targets.shape != tokens.shape:
        raise ValueError(f"targets must be a tensor of the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(getattr(targets, 'shape', ()))}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor, got dtype {targets.dtype}")
    if weights is None:
        weights = torch.ones(tokens.shape, device=tokens.device)
    elif not torch.is_tensor(weights) or weights.shape != tokens.shape:
        raise ValueError(f"weights must be a tensor of the tokens' shape {tuple(tokens.shape)}, "
                         f"got {tuple(getattr(weights, 'shape', ()))}")
    V = model.config.vocab_size
    bad = (weights != 0) & ((targets < 0) | (targets >= V))
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"target id {int(targets[pos])} at position {pos} is out of range [0, {V}) "
                         "and has a nonzero weight")
    total = weights.sum()
    if not total > 0:
        raise ValueError(f"the weights must sum to a positive number, got {float(total)}")
    return weights, total


def segment_loss(logits, targets, weights, total):
    """sum_t w_t * CE_t / total, in at least float32 whatever the logits' dtype."""
    ce = F.cross_entropy(logits.flatten(0, 1).to(torch.promote_types(logits.dtype, torch.float32)), targets.clamp(0, logits.shape[-1] - 1).flatten(),
                         reduction="none")
    return (ce * weights.flatten().to(ce.dtype)).sum() / total


def segment_backward(model, tokens, targets, segment_len: int, weights=None, state: State | None = None, *,
                     storage: str = "device", reverse_every: int = 0, return_state: bool = False,
                     fused_loss: bool = False):
    """Exact segment-wise BPTT of the weighted next-token loss; gradients are left in ``.grad``.

    Args:
        model: a PlasticLM.
        tokens, targets: (B, T) integer tensors.
        segment_len: L, the tokens per row recomputed with a graph at a time; need not divide T.
        weights: (B, T) per-token loss weights (0 for padding), or None for ones. The loss is
            normalised by their sum over the whole batch.
        state: start state; if its tensors require grad, their gradient is accumulated in ``.grad``.
        storage: where boundary states wait for the backward sweep: "device" or "host"
            (CPU memory, pinned when the model is on CUDA).
        reverse_every: 0 keeps every boundary state (exact). K > 0 keeps one in K and recovers
            the others by inverting the recurrence (``model.rewind``); the drift this adds is
            measured by ``benchmarks/time_reversal.py``.
        return_state: also return the final state (detached), to carry into the next batch.
        fused_loss: take the loss with :func:`~plasticlm.trainer.chunked_ce.chunked_cross_entropy`
            from the hidden states and the tied head, never materialising a segment's full logits.
    Returns:
        the loss (a detached scalar), or (loss, final_state) with ``return_state``.
    """
    weights, total = _check_batch(model, tokens, targets, weights, segment_len)
    if storage not in ("device", "host"):
        raise ValueError(f"storage must be 'device' or 'host', got {storage!r}")
    if not isinstance(reverse_every, int) or reverse_every < 0:
        raise ValueError(f"reverse_every must be an integer >= 0, got {reverse_every!r}")
    B, T = tokens.shape
    bounds = [(s, min(s + segment_len, T)) for s in range(0, T, segment_len)]
    start = model.init_state(B) if state is None else model._check_state(state, B)
    init_grad = state is not None and any(s.requires_grad for s in state.tensors())
    device = start.layers[0].device

    last = len(bounds) - 1

    def keep(i):
        return reverse_every == 0 or i % reverse_every == 0 or i == last

    # Forward sweep: no graph, only boundary states. The last segment is not run here: the
    # backward sweep runs it first, with its graph, and its output is the final state.
    boundary = _Boundaries(start, sum(keep(i) for i in range(len(bounds))), storage, device)
    with torch.no_grad():
        S = start.detach()
        for i, (a, b) in enumerate(bounds):
            if keep(i):
                boundary.put(i, S)
            if i < last:
                _, S = model.hidden(tokens[:, a:b], S, check=False)

    # Backward sweep: one segment with a graph at a time, last first.
    loss = 0.0
    d_state = None  # gradient reaching the end of the current segment from the later ones
    S_end = final = None
    for i in reversed(range(len(bounds))):
        a, b = bounds[i]
        if i in boundary:
            S_in = boundary.take(i, device)
        else:
            S_in = model.rewind(tokens[:, a:b], S_end)
        need = i > 0 or init_grad
        S_in_g = S_in.map(lambda s: s.detach().requires_grad_(need))
        if fused_loss:
            h, S_out = model.hidden(tokens[:, a:b], S_in_g, check=False)
            seg = chunked_cross_entropy(h, model.embed.weight, targets[:, a:b], weights[:, a:b], total)
        else:
            logits, S_out = model(tokens[:, a:b], S_in_g, check=False)
            seg = segment_loss(logits, targets[:, a:b], weights[:, a:b], total)
        if i == last:
            final = S_out.detach()
        outs, grads = [seg], [None]
        if d_state is not None:
            outs += S_out.tensors()
            grads += d_state
        torch.autograd.backward(outs, grads)
        loss = loss + seg.detach()
        d_state = [torch.zeros_like(s) if s.grad is None else s.grad for s in S_in_g.tensors()] if need else None
        S_end = S_in
    if init_grad:
        for s, g in zip(state.tensors(), d_state):
            if s.requires_grad:
                s.grad = g if s.grad is None else s.grad + g
    return (loss, final.detach()) if return_state else loss


class _Boundaries:
    """The kept boundary states, each part of them in one preallocated (n, ...) buffer.

    A few large allocations instead of one small tensor per boundary: on CPU, small long-lived
    tensors between each segment's temporaries fragment the heap, and the first step's peak
    memory grew with T (memory_flat measured 1.3 GiB above baseline at T = 64k against 0.3 at 4k).
    With ``storage="host"`` the buffers are in CPU memory, pinned when the model is on CUDA.
    """

    def __init__(self, like: State, n: int, storage: str, device: torch.device):
        where = torch.device("cpu") if storage == "host" else device
        pin = storage == "host" and device.type == "cuda"
        self.like, self.slots = like, {}
        self.buffers = [torch.empty((n, *t.shape), dtype=t.dtype, device=where, pin_memory=pin)
                        for t in like.tensors()]

    def put(self, i: int, S: State) -> None:
        k = self.slots[i] = len(self.slots)
        for buf, t in zip(self.buffers, S.tensors()):
            buf[k].copy_(t, non_blocking=True)

    def __contains__(self, i: int) -> bool:
        return i in self.slots

    def take(self, i: int, device: torch.device) -> State:
        k = self.slots[i]  # each slot is written once, in the forward sweep, and read once
        return self.like.with_tensors([buf[k].to(device, non_blocking=True) for buf in self.buffers])


def segment_activation_bytes(model, batch_size: int, segment_len: int, probe_len: int = 64) -> int:
    """Bytes autograd saves for one segment of ``batch_size`` x ``segment_len`` tokens when the
    reversible blocks store their activations (``reconstruct`` off). Measured on probe segments of
    ``probe_len`` and twice as many tokens (every saved tensor counted once, the weights not) and
    extrapolated linearly to L: what does not grow with the tokens (autocast's copies of the
    weights) is counted once, not L / probe times."""

    def saved_bytes(n: int) -> int:
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen, total = set(), 0

        def pack(t):
            nonlocal total
            key = t.untyped_storage().data_ptr()
            if key not in weights and key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
            return t

        tokens = torch.zeros(batch_size, n, dtype=torch.long, device=model.embed.weight.device)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(tokens, check=False)
        return total

    was = model.reconstruct
    model.reconstruct = False
    try:
        one, two = saved_bytes(probe_len), saved_bytes(2 * probe_len)
    finally:
        model.reconstruct = was
    per_token = max(0, two - one) / probe_len
    return int(one - per_token * probe_len + per_token * segment_len)


def activations_fit(model, batch_size: int, segment_len: int) -> tuple[bool, int, int]:
    """(fit, need, budget): whether one segment's stored activations (:func:`segment_activation_bytes`)
    take at most a quarter of the free memory of the model's device (CUDA: free device memory;
    CPU: available RAM)."""
    from ..device import free_bytes

    need = segment_activation_bytes(model, batch_size, segment_len)
    budget = free_bytes(model.embed.weight.device) // 4
    return need <= budget, need, budget
