"""Losses beside the weighted cross-entropy (``segment.segment_loss``): the loss ramp and the
gradient-length proxy of DESIGN section 3.

Along the memory path, the Jacobian of S_t with respect to S_{t-k} is diag(a_{t-k+1} ... a_t),
and what token t-k wrote into S_{t-k} carries the write weight (1 - a) of the gated average
(1 for the 'decay' variant). So the gates tell, without any extra backward pass, how much
gradient can reach lag k: for a channel whose geometric-mean gate over a probe is
a = exp(mean log a_t), it is w a^k, and its mass in the lag band [k0, k1) is the geometric sum
w a^k0 (1 - a^(k1 - k0)) / (1 - a). Summed over the channels of a layer and normalised over the
bands, this is the layer's distribution of retention over short, moderate and long lags; the
proxy penalises its KL divergence from a target spread. ``benchmarks/gradient_lag.py`` checks
it against the measured |dL_t / dx_{t-k}|.
"""
from __future__ import annotations

import math

import torch


def ramp_weights(positions: torch.Tensor, T: int, ramp_tokens: int, shape: str = "linear") -> torch.Tensor:
    """(B, T) weights rising from 0 to 1 over the first ``ramp_tokens`` tokens of each sequence.

    ``positions`` (B,) is how many tokens of its sequence each row had read before this window.
    """
    pos = positions.view(-1, 1) + torch.arange(T, device=positions.device)  # (B, T)
    x = ((pos + 1).double() / ramp_tokens).clamp(max=1.0)
    if shape == "cosine":
        x = 0.5 * (1 - torch.cos(math.pi * x))
    return x.float()


def band_edges(horizon: int, fractions: list[float]) -> list[tuple[int, int]]:
    """Lag bands [k0, k1) covering lags 1 .. horizon, upper edges at ``fractions`` of it."""
    uppers = [max(1, round(horizon * f)) for f in fractions]
    edges, lo = [], 1
    for up in uppers:
        hi = max(up + 1, lo + 1)  # every band holds at least one lag
        edges.append((lo, hi))
        lo = hi
    return edges


def read_weight(q: torch.Tensor, k: torch.Tensor, last: int | None = None,
                rebias: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> torch.Tensor:
    """(H, K) how strongly the readout uses each memory channel: mean |q| (over the last ``last``
    positions, where a loss reads; all by default) times mean |k|, over a probe's (B, T, H, K).

    Along the memory, the gradient reaching channel c's write k steps back is w_c a_c^k times
    q_(t,c) where it is read and k_(t-k,c) where it was written, so gates alone count a channel
    the readout ignores as fully as one it relies on. Detached: the weight corrects where the
    proxy looks, the penalty still moves only the gates.

    A model with bias correction carries 1 / (1 - prod a) inside q, which at a short probe's
    positions inflates the slow channels far beyond what they weigh at the horizon the bands
    cover. ``rebias`` = (log a (B, T, H, K), log prod a before the probe (B, H, K), horizon)
    replaces it by the value a reading position ``horizon`` tokens in would have, 1 / (1 - a^horizon)
    with a the channel's geometric-mean gate.
    """
    q = q.detach().float()
    if rebias is not None:
        log_a, start, horizon = (t.detach().float() if torch.is_tensor(t) else t for t in rebias)
        at_probe = -torch.expm1(start.unsqueeze(1) + log_a.cumsum(1))  # 1 - prod a at each probe position
        at_horizon = -torch.expm1(horizon * log_a.mean(dim=(0, 1)).clamp(max=-1e-12))
        q = q * at_probe.clamp_min(1e-20) / at_horizon
    qs = q if last is None else q[:, -last:]
    return qs.abs().mean(dim=(0, 1)) * k.detach().abs().float().mean(dim=(0, 1))


def retention_mass(log_a: torch.Tensor, edges: list[tuple[int, int]], write_weighted: bool = True,
                   channel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Share of a layer's retention w_c a_c^k that falls in each lag band, over all its channels.

    log_a: (B, T, H, K) gates of one layer on a probe. ``write_weighted``: w_c = 1 - a_c (the gated
    average), else 1 (the 'decay' variant). ``channel_weight`` (H, K), e.g. :func:`read_weight`,
    multiplies each channel's w_c. Returns (n_bands,), summing to 1.
    """
    la = log_a.float().mean(dim=(0, 1)).reshape(-1).clamp(max=-1e-12)  # (H*K,) log of the geometric-mean gate
    one_minus_a = -torch.expm1(la)  # 1 - a, accurate for a close to 1
    w = one_minus_a if write_weighted else torch.ones_like(la)
    if channel_weight is not None:
        w = w * channel_weight.reshape(-1).to(w.dtype)
    masses = []
    for k0, k1 in edges:
        # w a^k0 (1 - a^(k1-k0)) / (1 - a), in a form that stays finite as a -> 1 (the sum -> k1 - k0)
        masses.append(w * torch.exp(k0 * la) * -torch.expm1((k1 - k0) * la) / one_minus_a)
    m = torch.stack(masses, dim=-1).sum(dim=0)  # (n_bands,)
    return m / m.sum()


def proxy_penalty(band_masses: list[torch.Tensor], target: list[float]) -> torch.Tensor:
    """Mean over layers of KL(target || retention distribution)."""
    t = torch.tensor(target, dtype=torch.float32, device=band_masses[0].device)
    kl = [(t * (t.clamp(min=1e-12).log() - m.clamp(min=1e-12).log())).sum() for m in band_masses]
    return torch.stack(kl).mean()
