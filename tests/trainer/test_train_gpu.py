"""GPU checks (skipped without CUDA): bf16 autocast, fused AdamW, the small recipe's shapes."""
from __future__ import annotations

import math

import pytest
import torch

from plasticlm.trainer.config import load_config
from plasticlm.trainer.loop import Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


# The small model on the builtin bytes (a GPU machine has no offline corpus), in both BPTT modes.
SMALL_BYTES = ["data.kind=bytes", "data.source=builtin", "model.vocab_size=272", "data.batch_size=8",
               "data.seq_len=4096", "eval_tokens=16384", "log.tensorboard=disabled"]


def test_small_recipe_trains_on_gpu_in_bf16_with_fused_adamw(tmp_path):
    cfg = load_config("small", [f"out_dir={tmp_path}", "steps=4", "checkpoint.every=2", *SMALL_BYTES])
    t = Trainer(cfg, progress=False)
    assert t.device.type == "cuda" and t.opt.defaults["fused"]
    s = t.run()
    assert math.isfinite(s["valid_loss"]) and s["last_loss"] < s["first_loss"]


def test_window_mode_resumes_with_the_carried_state_on_gpu(tmp_path):
    over = [f"out_dir={tmp_path}", "bptt=window", "window=1024", "checkpoint.every=2", *SMALL_BYTES]
    Trainer(load_config("small", ["steps=2", *over]), progress=False).run()
    resumed = Trainer(load_config("small", ["steps=4", *over]), progress=False)
    assert resumed.step == 2 and resumed.state is not None and resumed.state.layers[0].is_cuda
    resumed.run()


def test_compile_option_runs(tmp_path):
    cfg = load_config("tiny", [f"out_dir={tmp_path}", "steps=2", "compile=true", "log.tensorboard=disabled"])
    s = Trainer(cfg, progress=False).run()
    assert math.isfinite(s["valid_loss"])
