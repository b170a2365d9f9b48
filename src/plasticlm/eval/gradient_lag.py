"""How much gradient reaches each lag: the measurement the gradient-length proxy is checked against.

The proxy (DESIGN 3, :mod:`plasticlm.trainer.losses`) predicts from the gates alone that the
memory path carries w_c a_c^k of channel c's gradient back k tokens, a_c the geometric-mean gate
on a probe and w_c = 1 - a_c its write weight. The measurement is the real thing on probe
sequences: |dL_t / dx_{t-k}|, the norm of the gradient of the loss at the last positions t with
respect to the input embedding k tokens earlier, through every path (memory, short convolution,
feed-forward, head), averaged over probes. ``benchmarks/gradient_lag.py`` runs it on a checkpoint;
``plasticlm experiment proxy`` on models trained with and without the proxy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trainer.losses import retention_mass


def measured_gradient(model, probes: torch.Tensor, last: int) -> torch.Tensor:
    """(T,) mean over probes (B, T + 1) of |dL/dx_{t-k}| for lags k = 0..T-1, L the summed loss
    of the last ``last`` positions. Plain autograd through the whole probe: memory grows with T."""
    B, T = probes.shape[0], probes.shape[1] - 1
    grads = torch.zeros(T, dtype=torch.float64)
    emb = {}

    def keep(module, inp, out):
        out.retain_grad()
        emb["x"] = out

    hook = model.embed.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            for row in probes:
                model.zero_grad(set_to_none=True)
                logits, _ = model(row[None, :-1])
                F.cross_entropy(logits[0, -last:].float(), row[1:][-last:], reduction="sum").backward()
                grads += emb["x"].grad[0].norm(dim=-1).double().flip(0)  # index k = lag from the last position
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    return grads / B


def proxy_curve(model, probes: torch.Tensor, weighted: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(T,) the proxy's retention by lag, sum over channels (mean over layers) of w_c a_c^k for
    k = 0..T-1 (w_c = 1 - a_c, or 1 with ``weighted=False``), and each layer's gates on the probes."""
    T = probes.shape[1] - 1
    with torch.no_grad():
        gates = model.gates(probes[:, :-1])
    k = torch.arange(T, dtype=torch.float64)
    curves = []
    for g in gates:
        la = g.double().mean(dim=(0, 1)).reshape(-1, 1)  # (channels, 1) log of the geometric-mean gate
        w = -torch.expm1(la) if weighted else torch.ones_like(la)
        curves.append((w * torch.exp(la * k)).sum(0))
    return torch.stack(curves).mean(0), gates


def band_shares(curve: torch.Tensor, edges: list[tuple[int, int]]) -> list[float]:
    """Share of ``curve`` (indexed by lag) in each band [k0, k1) of lags, over the bands."""
    m = torch.stack([curve[k0:k1].sum() for k0, k1 in edges])
    return (m / m.sum()).tolist()


def measure(model, probes: torch.Tensor, edges: list[tuple[int, int]], last: int) -> dict:
    """Measured gradient and proxy by lag and by band on the probes (bands cut at the probe length)."""
    T = probes.shape[1] - 1
    cut = [(k0, min(k1, T)) for k0, k1 in edges if k0 < T]
    real = measured_gradient(model, probes, last)
    proxy, gates = proxy_curve(model, probes, weighted=True)
    flat, _ = proxy_curve(model, probes, weighted=False)
    corr = torch.corrcoef(torch.stack([real[1:].log(), proxy[1:].log()]))[0, 1].item()
    return {"real_by_lag": real.tolist(), "proxy_by_lag": proxy.tolist(), "unweighted_by_lag": flat.tolist(),
            "edges": [list(e) for e in cut],
            "real_band_shares": band_shares(real, cut), "proxy_band_shares": band_shares(proxy, cut),
            "unweighted_band_shares": band_shares(flat, cut),
            "proxy_band_shares_per_layer": [retention_mass(g, cut).tolist() for g in gates],
            "log_log_correlation": corr}
