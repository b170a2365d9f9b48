"""The short causal depthwise convolution, with its carried inputs: one autograd function.

``causal_conv(prev, x, weight)`` is ``F.conv1d(cat(prev, x), weight, groups=C)`` over the time
axis (the reference it is tested against in tests/test_ops.py), where ``prev`` holds the w - 1
inputs before ``x`` (zeros at a sequence start). It never builds ``cat(prev, x)``: each tap is
one in-place multiply-add of a shifted slice into one output buffer, and the backward the same
into one gradient buffer, where plain autograd over shifted products allocated, zero-filled and
summed a sequence-sized tensor per tap (half of a tiny model's CPU step went there).
"""
from __future__ import annotations

import torch


def conv_tail(prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The last w - 1 inputs of ``cat(prev, x)`` along time (the state the next call needs)."""
    n, T = prev.shape[1], x.shape[1]
    return x[:, T - n:] if T >= n else torch.cat((prev[:, T:], x), dim=1)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prev, x, weight):
        w, T = weight.shape[-1], x.shape[1]
        taps = weight[:, 0].to(x.dtype)  # (C, w)
        out = x * taps[:, w - 1]
        for i in range(w - 1):
            s = w - 1 - i  # tap i reads the input s steps back
            if T > s:
                out[:, s:].addcmul_(x[:, :T - s], taps[:, i])
            n = min(s, T)
            out[:, :n].addcmul_(prev[:, i:i + n].to(x.dtype), taps[:, i])
        ctx.save_for_backward(prev, x, weight)
        return out

    @staticmethod
    def backward(ctx, g):
        prev, x, weight = ctx.saved_tensors
        w, T = weight.shape[-1], x.shape[1]
        taps = weight[:, 0].to(x.dtype)
        gx = g * taps[:, w - 1]
        gprev = torch.zeros_like(prev, dtype=g.dtype)
        gw = torch.empty(weight.shape[0], w, dtype=torch.promote_types(weight.dtype, torch.float32), device=g.device)
        gw[:, w - 1] = _dot_over_time(g, x, 0)
        for i in range(w - 1):
            s = w - 1 - i
            n = min(s, T)
            gw[:, i] = (g[:, :n] * prev[:, i:i + n].to(g.dtype)).sum((0, 1)) + _dot_over_time(g, x, s)
            if T > s:
                gx[:, :T - s].addcmul_(g[:, s:], taps[:, i])
            gprev[:, i:i + n].addcmul_(g[:, :n], taps[:, i])
        return gprev.to(prev.dtype), gx, gw.to(weight.dtype).unsqueeze(1)


def _dot_over_time(g: torch.Tensor, x: torch.Tensor, s: int, step: int = 256) -> torch.Tensor:
    """sum over batch and t >= s of g_t * x_{t - s}, per channel, a block of time at a time: each
    product stays cache-sized (one sequence-sized product costs 2-4x as much on CPU)."""
    acc = torch.zeros(g.shape[-1], dtype=torch.promote_types(g.dtype, torch.float32), device=g.device)
    for a in range(s, g.shape[1], step):
        b = min(g.shape[1], a + step)
        acc += (g[:, a:b] * x[:, a - s:b - s]).sum((0, 1))
    return acc


def causal_conv(prev: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """prev (B, w - 1, C) the inputs before x, x (B, T, C), weight (C, 1, w) as
    nn.Conv1d(C, C, w, groups=C) holds it -> (B, T, C), out_t = sum_i weight_i * cat(prev, x)_{t + i}."""
    if prev.shape[1] != weight.shape[-1] - 1:
        raise ValueError(f"causal_conv: prev holds {prev.shape[1]} steps, a width-{weight.shape[-1]} "
                         f"convolution needs {weight.shape[-1] - 1}")
    return _CausalConv.apply(prev, x, weight)
