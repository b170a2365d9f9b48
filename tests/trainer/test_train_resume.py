"""Stop and resume: the per-step losses and the final weights equal an uninterrupted run's."""
from __future__ import annotations

import pytest
import torch

from plasticlm.trainer.loop import Trainer, train
from plasticlm.trainer.metrics import read_metrics

from .conftest import assert_same_weights, final_weights, tiny_config

N = 8


def losses_of(run_dir, after: int = 0) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if "loss" in r and r["step"] > after]


@pytest.mark.parametrize("extra, k", [
    ([], 4),
    (["data.doc_len=128", "optim.schedule=wsd", "loss.ramp_tokens=40", "loss.proxy_weight=0.1"], 5),
], ids=["at-sequence-boundary", "mid-sequence"])
def test_resume_is_bit_identical(tmp_path, extra, k):
    train(tiny_config(tmp_path / "full", f"steps={N}", *extra), progress=False)

    cfg = tiny_config(tmp_path / "part", f"steps={N}", *extra)
    first = Trainer(cfg, progress=False)
    losses = [first.train_step(first.stream.next_batch())["loss"] for _ in range(k)]
    first.save_checkpoint()
    doc_len = cfg.data.doc_len or cfg.data.seq_len
    mid = bool(first.positions.remainder(doc_len).ne(0).any())
    assert mid == bool(extra), "the two cases must stop at / inside a sequence"
    if mid:  # the carried memory is part of what must come back
        assert all(s.abs().sum() > 0 for s in first.state.layers)
    del first

    resumed = Trainer(cfg, progress=False)
    assert resumed.step == k and resumed.resumed_from is not None
    resumed.run()
    assert losses + losses_of(tmp_path / "part", after=k) == losses_of(tmp_path / "full")
    assert_same_weights(final_weights(tmp_path / "part"), final_weights(tmp_path / "full"))


def test_stream_state_dict_gives_the_same_next_batches(tmp_path):
    from plasticlm.trainer.streams import build_stream

    data = tiny_config(tmp_path, "data.doc_len=96").data
    a = build_stream(data, seed=3)
    for _ in range(4):
        a.next_batch()
    b = build_stream(data, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        for f in ("tokens", "targets", "weights", "reset"):
            assert torch.equal(getattr(x, f), getattr(y, f))


def test_byte_stream_carries_sequences_across_windows(tmp_path):
    from plasticlm.trainer.streams import build_stream

    s = build_stream(tiny_config(tmp_path, "data.doc_len=96").data)  # 3 windows of 32 per sequence
    batches = [s.next_batch() for _ in range(4)]
    assert [bool(b.reset.all()) for b in batches] == [True, False, False, True]
    # window 2 continues window 1: its first token is window 1's last target
    assert torch.equal(batches[1].tokens[:, 0], batches[0].targets[:, -1])
