"""The gated average's bias correction as one autograd function.

``corrected_query(q, log_a, log_prod0)`` divides each key channel of the query by the weight the
average has written since the sequence began, 1 - prod_{s<=t} a_s (ModelConfig.bias_correction),
and returns the log product at the last step for the State. ``corrected_query_reference`` is the
same expression under plain autograd; the tests compare the two.

Why a function of its own: autograd over the five elementwise steps keeps their intermediates
and runs a backward for each; this one saves the corrected query and the divisor and derives
every gradient from them. The default mixer's forward and backward on CPU (B 4, T 4,096, d_model
128) took 303 ms against 322 with the plain expression, in one process, interleaved.
"""
from __future__ import annotations

import torch

TINY = 1e-20
"""The divisor's floor: it only guards prod a = 1 exactly (a gate saturated at 1 from the start)."""


def corrected_query_reference(q, log_a, log_prod0):
    """q (B, T, H, K), log_a (B, T, H, K) float32 or wider, log_prod0 (B, H, K) ->
    (q / (1 - prod a), log prod a at the last step (B, H, K))."""
    log_prod = log_prod0.unsqueeze(1) + log_a.cumsum(1)
    return q / (-torch.expm1(log_prod)).clamp_min(TINY), log_prod[:, -1].clone()


class _CorrectedQuery(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, log_a, log_prod0):
        log_prod = log_a.cumsum(1, dtype=torch.promote_types(log_a.dtype, log_prod0.dtype)).add_(log_prod0.unsqueeze(1))
        last = log_prod[:, -1].clone()  # a copy: a view would keep the (B, T, H, K) tensor alive
        divisor = torch.expm1(log_prod).neg_().clamp_min_(TINY)
        out = q / divisor
        ctx.save_for_backward(out, divisor)
        ctx.q_dtype = q.dtype
        return out, last

    @staticmethod
    def backward(ctx, g, g_last):
        out, divisor = ctx.saved_tensors
        gq = g / divisor
        # d(1 / D)/d log_prod = e^L / D^2 with e^L = 1 - D, so d out / d log_prod = out (1 - D) / D;
        # zero where the floor acted, as the clamp's gradient is.
        g_log_prod = (gq * out).mul_(torch.where(divisor > TINY, 1 - divisor, 0))
        g_log_prod[:, -1] += g_last
        # log_prod_t = log_prod0 + sum_{s<=t} log_a_s: each log_a_s gets the sum over t >= s.
        g_log_a = g_log_prod.flip(1).cumsum(1).flip(1)
        return gq.to(ctx.q_dtype), g_log_a, g_log_a[:, 0].clone()


def corrected_query(q, log_a, log_prod0):
    """As :func:`corrected_query_reference`, with a backward of fewer passes and saved tensors."""
    return _CorrectedQuery.apply(q, log_a, log_prod0)
