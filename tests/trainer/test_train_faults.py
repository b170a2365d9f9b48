"""Non-finite steps are skipped on every rank and counted; SIGTERM saves a checkpoint and stops."""
from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time

import pytest
import torch

from plasticlm.tokenizer import ByteTokenizer
from plasticlm.trainer import run_state as ck
from plasticlm.trainer.loop import Trainer, TrainingError, train
from plasticlm.trainer.metrics import read_metrics
from plasticlm.trainer.stream_kinds import _byte_stream, register_stream

from .conftest import TINY, tiny_config


class Poisoned:
    """The bytes stream, with an infinite loss weight in the batches numbered in ``bad`` (from 1):
    the loss and every gradient of that step become NaN."""

    def __init__(self, inner, bad):
        self.inner, self.bad, self.n = inner, set(bad), 0

    def next_batch(self):
        b = self.inner.next_batch()
        self.n += 1
        if self.n in self.bad:
            b.weights[0, 0] = float("inf")
        return b

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "n": self.n}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.n = state["n"]


def _plain(data):
    """The byte stream's config without this wrapper's own option ('bad'), which it would reject."""
    return dataclasses.replace(data, options={})


def _poisoned(data, **kw):
    return Poisoned(_byte_stream(_plain(data), **kw), data.options.get("bad", []) if kw["split"] == "train" else [])


register_stream("poisoned_bytes", _poisoned, lambda data: ByteTokenizer())


def test_nan_batch_is_skipped_and_counted(tmp_path):
    # Truncated BPTT, two windows per batch: the poisoned batch 2 is windows (steps) 3 and 4.
    t = Trainer(tiny_config(tmp_path, "steps=6", "data.kind=poisoned_bytes", "data.options={bad: [2]}",
                            "data.seq_len=64", "bptt=window", "window=32"), progress=False)
    for _ in range(2):
        assert not t.train_step(t.next_batch())["skipped_step"]
    params = {k: v.clone() for k, v in t.model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in t.opt.state.values()]
    rec = t.train_step(t.next_batch())
    assert rec["skipped_step"] and rec["skipped"] == 1 and t.skipped == 1
    assert not torch.isfinite(torch.tensor(rec["loss"]))
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, params[k]), f"{k} changed on a skipped step"
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, t.opt.state.values()))
    assert all(torch.isfinite(s).all() for s in t.state.tensors())
    rec = t.train_step(t.next_batch())  # and training goes on
    assert not rec["skipped_step"] and rec["skipped"] == 1
    assert any(not torch.equal(v, params[k]) for k, v in t.model.state_dict().items())


def test_too_many_bad_steps_in_a_row_stop_with_the_last_checkpoint_intact(tmp_path):
    cfg = tiny_config(tmp_path, "steps=10", "data.kind=poisoned_bytes", "data.options={bad: [5, 6, 7]}",
                      "max_bad_steps=3", "checkpoint.every=2")
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row \(steps 5\.\.7"):
        train(cfg, progress=False)
    last = ck.latest_checkpoint(tmp_path / "checkpoints")
    assert last.name == "step_00000006"  # written at step 6: the weights are those of step 4
    ck.verify(last)
    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if r.get("skipped_step")] == [5, 6, 7]
    w4 = ck.read_tensors(last / "model.safetensors")
    clean = Trainer(tiny_config(tmp_path / "clean", "steps=10"), progress=False)  # same data, no poison
    for _ in range(4):
        clean.train_step(clean.next_batch())
    for k, v in clean.model.state_dict().items():
        assert torch.equal(v, w4[k]), k


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "plasticlm.cli", "train", "tiny", *TINY, "steps=100000",
                          f"out_dir={out}", "--no-progress"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM at step" in err
    last = ck.latest_checkpoint(out / "checkpoints")
    ck.verify(last)
    step = int(last.name.split("_")[1])
    assert step >= 3 and f"at step {step}" in err
    t = Trainer(tiny_config(out, f"steps={step + 1}", "checkpoint.allow_changed=[steps]"), progress=False)
    assert t.step == step


class Weightless(Poisoned):
    """The bytes stream with loss weight 0 everywhere in the batches numbered in ``bad`` (from 1),
    as in the windows of a Rosetta header: read, but nothing to learn."""

    def next_batch(self):
        b = self.inner.next_batch()
        self.n += 1
        if self.n in self.bad:
            b.weights.zero_()
        return b


register_stream("weightless_bytes", lambda data, **kw: Weightless(_byte_stream(_plain(data), **kw), data.options.get(
    "bad", []) if kw["split"] == "train" else []), lambda data: ByteTokenizer())


def test_weightless_batches_carry_the_state_without_a_step(tmp_path):
    # Truncated BPTT, four windows per sequence: the first batch is weightless (like a Rosetta header).
    cfg = tiny_config(tmp_path, "steps=6", "data.kind=weightless_bytes", "data.options={bad: [1]}",
                      "data.seq_len=128", "bptt=window", "window=32", "max_bad_steps=2")
    t = Trainer(cfg, progress=False)
    params = {k: v.clone() for k, v in t.model.state_dict().items()}
    for _ in range(3):
        rec = t.train_step(t.next_batch())
        assert rec["weightless"] and rec["loss"] is None and not rec["skipped_step"]
    assert t.skipped == 0 and t.bad_in_row == 0 and not t.opt.state  # no optimizer step was taken
    assert all(torch.equal(v, params[k]) for k, v in t.model.state_dict().items())
    assert any(s.abs().sum() > 0 for s in t.state.layers)  # but the windows were read into the state
    t.train_step(t.next_batch())  # the batch's last window
    rec = t.train_step(t.next_batch())
    assert rec["loss"] is not None and not rec.get("weightless") and t.opt.state
    summary = train(tiny_config(tmp_path / "run", "steps=5", "data.kind=weightless_bytes",
                                "data.options={bad: [1, 2, 3]}", "max_bad_steps=2"), progress=False)
    assert summary["skipped_steps"] == 0 and summary["first_loss"] is not None
