"""How much gradient reaches each lag: the measurement the gradient-length proxy is checked against.

The proxy (DESIGN 3, :mod:`plasticlm.trainer.losses`) predicts from the gates alone that the
memory path carries w_c a_c^k of channel c's gradient back k tokens, a_c the geometric-mean gate
on a probe and w_c = 1 - a_c its write weight. The measurement is the real thing on probe
sequences: |dL_t / dx_{t-k}|, the norm of the gradient of the loss at the last positions t with
respect to the input embedding k tokens earlier, through every path (memory, short convolution,
feed-forward, head), averaged over probes. Because the convolution and the feed-forward add
gradient at short lags that no gate predicts, the proxy is also checked against the path it
models: the gradient into each layer's memory writes (its k and v projections, read by nothing
but the memory), beside that layer's proxy and a read-weighted proxy that also counts how
strongly the readout uses each channel. ``benchmarks/gradient_lag.py`` runs it on a checkpoint;
``plasticlm experiment proxy`` on models trained with and without the proxy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..trainer.losses import read_weight, retention_mass


def measured_gradient(model, probes: torch.Tensor, last: int) -> torch.Tensor:
    """(T,) mean over probes (B, T + 1) of |dL/dx_{t-k}| for lags k = 0..T-1, L the summed loss
    of the last ``last`` positions. Plain autograd through the whole probe: memory grows with T."""
    return _gradients(model, probes, last)[0]


def write_gradient(model, probes: torch.Tensor, last: int) -> torch.Tensor:
    """(layers, T): as :func:`measured_gradient`, the gradient with respect to what each layer's
    memory writes at lag k, its k and v projections (before the short convolution). Only the
    memory reads them, so this is the path the proxy models, plus, below the last layer, the
    layers above reading the memory's output."""
    return _gradients(model, probes, last)[1]


def _gradients(model, probes: torch.Tensor, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = probes.shape[0], probes.shape[1] - 1
    blocks = model.blocks
    H, K, V = model.config.n_heads, model.config.k_dim, model.config.v_dim
    grads = torch.zeros(T, dtype=torch.float64)
    writes = torch.zeros(len(blocks), T, dtype=torch.float64)
    kept = {}

    def keep(name):
        def hook(module, inp, out):
            out.retain_grad()
            kept[name] = out
        return hook

    hooks = [model.embed.register_forward_hook(keep("x"))]
    hooks += [b.memory.proj_in.register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    reconstruct = model.reconstruct
    model.reconstruct = False  # the reversible stack's own backward leaves intermediate .grad empty
    try:
        with torch.enable_grad():
            for row in probes:
                model.zero_grad(set_to_none=True)
                logits, _ = model(row[None, :-1])
                F.cross_entropy(logits[0, -last:].float(), row[1:][-last:], reduction="sum").backward()
                grads += kept["x"].grad[0].norm(dim=-1).double().flip(0)  # index k = lag from the last position
                for i in range(len(blocks)):
                    kv = kept[i].grad[0, :, H * K:2 * H * K + H * V]  # columns q | k | v | output gate
                    writes[i] += kv.norm(dim=-1).double().flip(0)
    finally:
        for h in hooks:
            h.remove()
        model.reconstruct = reconstruct
        model.zero_grad(set_to_none=True)
    return grads / B, writes / B


def proxy_curves(model, probes: torch.Tensor, last: int) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """Each layer's gates on the probes, and by layer and lag k = 0..T-1 the proxy's retention:
    sum over channels of w_c a_c^k with w_c = 1 - a_c, the same with w_c = 1, and read-weighted
    (channel c also weighted by mean |q_c| over the loss's last positions times mean |k_c| over
    the probe: :func:`plasticlm.trainer.losses.read_weight`, where the reason is). One forward."""
    T = probes.shape[1] - 1
    with torch.no_grad():
        layers = model.memory_inputs(probes[:, :-1])
    gates = [log_a for _, _, _, log_a, _, _ in layers]
    plain = torch.stack([_retention(g, T) for g in gates])
    flat = torch.stack([_retention(g, T, weighted=False) for g in gates])
    read = torch.stack([_retention(log_a, T, True, read_weight(q, k, last)) for q, k, _, log_a, _, _ in layers])
    return gates, plain, flat, read


def _retention(log_a: torch.Tensor, T: int, weighted: bool = True, channel_weight=None) -> torch.Tensor:
    la = log_a.double().mean(dim=(0, 1)).reshape(-1, 1)  # (channels, 1) log of the geometric-mean gate
    w = -torch.expm1(la) if weighted else torch.ones_like(la)
    if channel_weight is not None:
        w = w * channel_weight.double().reshape(-1, 1)
    return (w * torch.exp(la * torch.arange(T, dtype=torch.float64))).sum(0)


def loss_window(curve, last: int) -> torch.Tensor:
    """A retention curve seen as the measurement sees it: the loss is summed over the last ``last``
    positions, so what is written at lag k from the last one is read from lags k, k - 1, ...,
    k - last + 1. Returns sum_(j < last) curve(k - j) by lag k."""
    c = torch.as_tensor(curve, dtype=torch.float64)
    out = torch.zeros_like(c)
    for j in range(min(last, len(c))):
        out[j:] += c[:len(c) - j]
    return out


def total_variation(p: list[float], q: list[float]) -> float:
    """Half the L1 distance of two band distributions: the share that would have to move."""
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


def band_shares(curve: torch.Tensor, edges: list[tuple[int, int]]) -> list[float]:
    """Share of ``curve`` (indexed by lag) in each band [k0, k1) of lags, over the bands."""
    m = torch.stack([curve[k0:k1].sum() for k0, k1 in edges])
    return (m / m.sum()).tolist()


def measure(model, probes: torch.Tensor, edges: list[tuple[int, int]], last: int) -> dict:
    """Measured gradient and proxy by lag and by band on the probes (bands cut at the probe length):
    into the embeddings through every path, and into each layer's memory writes beside that
    layer's proxy, plain and read-weighted."""
    T = probes.shape[1] - 1
    cut = [(k0, min(k1, T)) for k0, k1 in edges if k0 < T]
    real, writes = _gradients(model, probes, last)
    gates, layer_proxy, layer_flat, read_weighted = proxy_curves(model, probes, last)
    proxy, flat = layer_proxy.mean(0), layer_flat.mean(0)  # the whole model: mean over layers
    return {"real_by_lag": real.tolist(), "proxy_by_lag": proxy.tolist(), "unweighted_by_lag": flat.tolist(),
            "edges": [list(e) for e in cut],
            "real_band_shares": band_shares(real, cut), "proxy_band_shares": band_shares(proxy, cut),
            "unweighted_band_shares": band_shares(flat, cut),
            "proxy_band_shares_per_layer": [retention_mass(g, cut).tolist() for g in gates],
            "log_log_correlation": log_log_correlation(real, proxy),
            "writes": [{"measured_by_lag": w.tolist(), "proxy_by_lag": p.tolist(), "read_weighted_by_lag": c.tolist(),
                        "measured_band_shares": band_shares(w, cut), "proxy_band_shares": band_shares(p, cut),
                        "read_weighted_band_shares": band_shares(c, cut),
                        "proxy_log_log_correlation": log_log_correlation(w, p),
                        "read_weighted_log_log_correlation": log_log_correlation(w, c)}
                       for w, p, c in zip(writes, layer_proxy, read_weighted)]}


def log_log_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Correlation of log a and log b over lags >= 1 (lag 0 is the reading position itself)."""
    return torch.corrcoef(torch.stack([a[1:].log(), b[1:].log()]))[0, 1].item()
