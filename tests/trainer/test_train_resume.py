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


# The memory's options ride along: their carried state (convolution inputs, prod a) must come back too.
OPTIONS = ["model.short_conv=4", "model.bias_correction=true"]


@pytest.mark.parametrize("extra, k", [
    (["data.seq_len=64", "data.min_len=16", *OPTIONS], 4),
    (["data.seq_len=128", "bptt=window", "window=32", "optim.schedule=wsd", "loss.ramp_tokens=40",
      "loss.proxy_weight=0.1", *OPTIONS], 5),
], ids=["whole-sequences", "window-mid-sequence"])
def test_resume_is_bit_identical(tmp_path, extra, k):
    train(tiny_config(tmp_path / "full", f"steps={N}", *extra), progress=False)

    cfg = tiny_config(tmp_path / "part", f"steps={N}", *extra)
    first = Trainer(cfg, progress=False)
    losses = [first.train_step(first.next_batch())["loss"] for _ in range(k)]
    first.save_checkpoint()
    mid = first.pending is not None
    assert mid == (cfg.bptt == "window"), "the window case must stop inside a sequence"
    if mid:  # the carried memory and the batch in progress are part of what must come back
        assert all(s.abs().sum() > 0 for s in first.state.tensors() if s.dim() == 4)
    del first

    resumed = Trainer(cfg, progress=False)
    assert resumed.step == k and resumed.resumed_from is not None
    resumed.run()
    assert losses + losses_of(tmp_path / "part", after=k) == losses_of(tmp_path / "full")
    assert_same_weights(final_weights(tmp_path / "part"), final_weights(tmp_path / "full"))


def test_stream_state_dict_gives_the_same_next_batches(tmp_path):
    from plasticlm.trainer.streams import build_stream

    data = tiny_config(tmp_path, "data.seq_len=96", "data.min_len=8").data
    a = build_stream(data, seed=3)
    for _ in range(4):
        a.next_batch()
    b = build_stream(data, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        for f in ("tokens", "targets", "weights", "reset", "lengths"):
            assert torch.equal(getattr(x, f), getattr(y, f))


def test_byte_stream_serves_whole_sequences_of_one_length_per_batch(tmp_path):
    from plasticlm.trainer.streams import build_stream, byte_ids

    s = build_stream(tiny_config(tmp_path, "data.seq_len=96", "data.min_len=24").data)
    text = byte_ids("builtin")
    widths = set()
    for _ in range(20):
        b = s.next_batch()
        B, T = b.tokens.shape
        widths.add(T)
        assert 24 <= T <= 96 and b.reset.all() and (b.weights == 1).all() and (b.lengths == T).all()
        assert torch.equal(b.tokens[:, 1:], b.targets[:, :-1])  # one contiguous span per row
        for row in b.tokens:  # a span of the text itself
            hits = (text[:len(text) - T] == row[0]).nonzero().flatten()
            assert any(torch.equal(text[i:i + T], row) for i in hits.tolist())
    assert len(widths) > 5


def test_window_mode_cuts_each_batch_into_windows_with_the_state_carried(tmp_path):
    t = Trainer(tiny_config(tmp_path, "steps=8", "data.seq_len=80", "bptt=window", "window=32"), progress=False)
    whole = t.stream.state_dict()
    windows = [t.next_batch() for _ in range(4)]
    assert [w.tokens.shape[1] for w in windows] == [32, 32, 16, 32]  # 80 = 32 + 32 + 16, then the next batch
    assert [bool(w.reset.all()) for w in windows] == [True, False, False, True]
    t.stream.load_state_dict(whole)
    b = t.stream.next_batch()
    assert torch.equal(torch.cat([w.tokens for w in windows[:3]], 1), b.tokens)
    # the state is carried from window to window (gradients stop there) and reset with a new sequence
    t2 = Trainer(tiny_config(tmp_path / "b", "steps=8", "data.seq_len=80", "bptt=window", "window=32"), progress=False)
    t2.train_step(t2.next_batch())
    carried = t2.state
    assert all(s.abs().sum() > 0 for s in carried.layers)
    assert t2.positions.tolist() == [32] * 4
