"""Shared helpers for the trainer tests: a very small byte-level config, fast on two cores."""
from __future__ import annotations

from pathlib import Path

import torch

from plasticlm.trainer.config import load_config

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.chunk_size=16",
        "data.seq_len=32", "data.min_len=0", "data.batch_size=4", "segment_len=16", "eval_tokens=256",
        "optim.warmup_steps=2", "log.tensorboard=disabled", "loss.proxy_every=1000"]


def tiny_config(out: Path, *overrides: str):
    return load_config("tiny", [*TINY, f"out_dir={out}", *overrides])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs"

