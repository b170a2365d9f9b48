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
    (["data.seq_len=64", "data.min_len=16", "loss.proxy_weight=0.1", "loss.proxy_weighting=read", *OPTIONS], 3),
], ids=["whole-sequences", "window-mid-sequence", "read-weighted-proxy"])
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
    from plasticlm.trainer.stream_kinds import build_stream

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
    from plasticlm.trainer.stream_kinds import build_stream, byte_ids

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


def test_byte_stream_repeats_write_a_random_string_twice_and_leave_the_plain_stream_alone(tmp_path):
    from plasticlm.trainer.stream_kinds import build_stream, byte_ids

    text = byte_ids("builtin").clone()
    plain = build_stream(tiny_config(tmp_path, "data.seq_len=128").data, seed=4)
    off = build_stream(tiny_config(tmp_path, "data.seq_len=128", "data.options={fraction: 0.0}").data, seed=4)
    on = build_stream(tiny_config(tmp_path, "data.seq_len=128",
                                  "data.options={fraction: 1.0, min_len: 8, max_len: 40}").data, seed=4)
    for _ in range(3):  # fraction 0 draws nothing more: the same batches as a plain stream
        assert torch.equal(plain.next_batch().tokens, off.next_batch().tokens)
    seen = set()
    for _ in range(5):
        b = on.next_batch()
        seq = torch.cat([b.tokens, b.targets[:, -1:]], 1)  # all L + 1 tokens of each row
        assert torch.equal(b.tokens[:, 1:], b.targets[:, :-1])
        for row in seq:  # some m in [8, 40] and place where m printable bytes are followed by themselves
            found = [m for m in range(8, 41) for at in range(len(row) - 2 * m + 1)
                     if torch.equal(row[at:at + m], row[at + m:at + 2 * m]) and bool((row[at:at + m] >= 32).all())
                     and bool((row[at:at + m] < 127).all())]
            assert found
            seen.add(max(found))
    assert len(seen) > 3  # the length varies
    assert torch.equal(byte_ids("builtin"), text)  # the strings go into the batch, never into the text
    valid = build_stream(tiny_config(tmp_path, "data.seq_len=128", "data.options={fraction: 1.0}").data,
                         split="valid")
    assert torch.equal(valid.next_batch().tokens,
                       build_stream(tiny_config(tmp_path, "data.seq_len=128").data, split="valid").next_batch().tokens)
    with pytest.raises(ValueError, match="data.options.frac"):
        build_stream(tiny_config(tmp_path, "data.options={frac: 0.5}").data)
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        build_stream(tiny_config(tmp_path, "data.options={fraction: 2.0}").data)


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


class Ragged:
    """Three whole sequences of different lengths per batch, right-padded with weight 0."""

    lengths = (37, 20, 53)

    def __init__(self, seed):
        self.g, self.n = torch.Generator().manual_seed(seed), 0

    def next_batch(self):
        from plasticlm.data.batch import Batch

        T = max(self.lengths)
        seq = torch.randint(0, 256, (len(self.lengths), T + 1), generator=self.g)
        weights = torch.zeros(len(self.lengths), T)
        for r, n in enumerate(self.lengths):
            weights[r, :n] = 1.0
            seq[r, n:] = 256  # padding
        self.n += 1
        return Batch(seq[:, :-1], seq[:, 1:], weights, torch.ones(len(self.lengths), dtype=torch.bool),
                     torch.tensor(self.lengths))

    def state_dict(self):
        return {"n": self.n, "rng": self.g.get_state()}

    def load_state_dict(self, state):
        self.n = state["n"]
        self.g.set_state(state["rng"])


def test_whole_sequence_step_equals_full_autograd_and_steps_once_per_batch(tmp_path):
    """One trainer step of B whole sequences of different lengths (padding weighted 0), through
    segment_backward, has the gradient of one full autograd pass over the same batch (float64)."""
    import copy

    from plasticlm.tokenizer import ByteTokenizer
    from plasticlm.trainer.segment import segment_loss
    from plasticlm.trainer.stream_kinds import register_stream

    register_stream("ragged", lambda data, **kw: Ragged(kw["seed"]), lambda data: ByteTokenizer())
    for mode in ("whole", "window"):
        t = Trainer(tiny_config(tmp_path / mode, "data.kind=ragged", "data.seq_len=64", "segment_len=8",
                                f"bptt={mode}", "window=24", "optim.grad_clip=0", "model.short_conv=4",
                                "model.bias_correction=true"), progress=False)
        t.model.double()
        ref = copy.deepcopy(t.model)
        steps, grads = [], []
        step = t.opt.step

        def counting_step():
            steps.append(t.step)
            grads.append({n: p.grad.clone() for n, p in t.model.named_parameters()})
            step()

        t.opt.step = counting_step
        batch = t.stream.state_dict()
        n_steps = 1 if mode == "whole" else 3  # 53 tokens in windows of 24: 24 + 24 + 5
        for _ in range(n_steps):
            t.train_step(t.next_batch())
        assert len(steps) == n_steps  # one optimizer step per batch of whole sequences (per window when truncated)
        if mode == "whole":
            t.stream.load_state_dict(batch)
            b = t.stream.next_batch()
            logits, _ = ref(b.tokens)
            loss = segment_loss(logits, b.targets, b.weights.double(), b.weights.sum())
            loss.backward()
            for n, p in ref.named_parameters():
                assert ((grads[0][n] - p.grad).norm() / p.grad.norm()).item() < 1e-10, n
