"""What the benchmark compares: model variants, how each is built, and its model FLOPs per token."""
from __future__ import annotations

import torch

from .. import archs
from ..config import ModelConfig

# Training variants: model/trainer. "segment" is plasticlm's exact constant-memory BPTT
# (boundary states on the device or in host memory); "full" is one autograd graph over the
# whole (B, T) batch, as the baselines train. Full-graph plasticlm runs with reconstruct=False.
TRAIN_VARIANTS = {
    "plasticlm-rev/segment": dict(model="plasticlm", reversible=True, trainer="segment", storage="device"),
    "plasticlm-rev/segment-host": dict(model="plasticlm", reversible=True, trainer="segment", storage="host"),
    "plasticlm-plain/segment": dict(model="plasticlm", reversible=False, trainer="segment", storage="device"),
    # The segment variants store a segment's activations when they fit, as the trainer's
    # reconstruct=auto does; this one always rebuilds each block's inputs from its outputs (the
    # memory of one block): what reconstruction costs.
    "plasticlm-rev/segment-rebuild": dict(model="plasticlm", reversible=True, trainer="segment", storage="device",
                                          reconstruct=True),
    "plasticlm-rev/full": dict(model="plasticlm", reversible=True, trainer="full"),
    "plasticlm-plain/full": dict(model="plasticlm", reversible=False, trainer="full"),
    "transformer/full": dict(model="transformer", trainer="full"),
    "gla/full": dict(model="gla", trainer="full"),
    # GLA with the short convolution plasticlm has by default (Zoology's GLA): the like-for-like speed.
    "gla-conv/full": dict(model="gla", trainer="full", baseline={"short_conv": 4}),
    # fla's GLA keys are half the width (expand_k 0.5): this one holds plasticlm's state (expand_k 1),
    # with the convolution: the same recurrence work per token.
    "gla-equal-state/full": dict(model="gla", trainer="full", baseline={"short_conv": 4, "expand_k": 1.0}),
    "mamba2/full": dict(model="mamba2", trainer="full"),
}
INFER_MODELS = ("plasticlm", "transformer", "gla", "mamba2")


def bench_model(name: str, model: dict, reversible: bool | None = None, baseline: dict | None = None):
    """Arch ``name`` (one of INFER_MODELS); ``model`` holds PlasticLM config fields, which baselines
    match in parameter count (``baseline[name]``: their own overrides)."""
    fields = dict(model)
    if reversible is not None:
        fields["reversible"] = reversible
    cfg = ModelConfig(**fields)
    return archs.build(name, archs.sized_like(name, cfg, **dict((baseline or {}).get(name, {}))))


def matmul_params(model) -> int:
    """Weights that multiply activations: every matrix but the embedding lookup, plus the tied head."""
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and not name.startswith("embed"))
    return n + model.embed.weight.numel()


def mixer_flops(model, T: int) -> float:
    """Forward FLOPs per token of the sequence mixing (what matmul_params does not cover).

    Attention (causal, average over the sequence): 2 d T per layer (QK^T and AV, each half of
    2 d T). Chunked recurrences with chunk C: 4 K V per head (read and update the state) plus
    C (K + V) for the causal products within a chunk.
    """
    c = model.config
    kind = type(model).__name__
    if kind == "Transformer":
        return c.n_layers * 2 * c.d_model * T
    if kind == "PlasticLM":
        H, K, V, C = c.n_heads, c.k_dim, c.v_dim, c.chunk_size
    elif c.mixer == "gla":
        H, K, V, C = c.n_heads, c.key_dim // c.n_heads, c.value_dim // c.n_heads, 64
    else:
        H, K, V, C = c.mamba_heads, c.state_size, c.mamba_head_dim, 64
    return c.n_layers * H * (4 * K * V + C * (K + V))


def train_flops_per_token(model, T: int) -> float:
    """Model FLOPs of one training token (forward + backward = 3 forwards).

    Recomputation (the segment trainer's extra forward, reversible reconstruction) is not
    counted: this is model FLOP/s utilisation, not hardware utilisation.
    """
    return 3 * (2 * matmul_params(model) + mixer_flops(model, T))


# bf16 dense peak per device name, for model FLOP/s utilisation (override with --peak-tflops).
# H100 and H200: the bf16 matmul rate measured on the lent machines (about 790 TFLOP/s, 2026-11),
# not the datasheet's 989; the others are datasheet figures.
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0, "L4": 121.0}


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                       seconds: float = 1.0) -> float:
    """The device's measured dense matmul rate (best of repeated n x n products): the CPU's peak
    for model FLOP/s utilisation, where no datasheet figure applies. On shared cores it is the
    share this process gets, which is also what the jobs get."""
    import time

    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
