"""Metrics (JSON lines, TensorBoard), `plasticlm plot`, and `plasticlm tune`."""
from __future__ import annotations

import pytest

from plasticlm.cli import main
from plasticlm.trainer.loop import Trainer, train
from plasticlm.trainer.metrics import read_metrics

from .conftest import TINY, tiny_config


def test_metrics_tensorboard_and_plot(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    train(tiny_config(run, "steps=6", "log.tensorboard=required", "loss.proxy_every=2", "log.eval_every=3"),
          progress=False)
    recs = read_metrics(run)
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(k in steps[0] for k in ("loss", "grad_norm", "lr", "tokens", "tok_s", "skipped"))
    assert [r["step"] for r in recs if "valid_loss" in r] == [3, 6]
    assert "retention/L1/band2" in steps[1] and "retention/L0/band0" not in steps[0]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events.Scalars("valid_loss")] == pytest.approx([r["valid_loss"] for r in recs
                                                                              if "valid_loss" in r])

    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    for name in ("curves.png", "retention.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_resumed_run_appends_metrics_as_one_run(tmp_path):
    cfg = tiny_config(tmp_path, "steps=5")
    t = Trainer(cfg, progress=False)
    for _ in range(3):
        t.train_step(t.stream.next_batch())
    t.save_checkpoint()
    # a metrics file that ran past the checkpoint before a crash
    (tmp_path / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "loss": 9}}\n' for i in range(1, 5)) + '{"st')
    Trainer(cfg, progress=False).run()
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in read_metrics(tmp_path) if "loss" in r][3] != 9


def test_tune_runs_prunes_and_resumes_a_study(tmp_path, capsys):
    pytest.importorskip("optuna")
    from plasticlm.trainer.tune import open_study

    base = [*TINY, "steps=6", "log.eval_every=2", "eval_tokens=128"]
    study = open_study(tmp_path)
    study.enqueue_trial({"optim.lr": 3e-3})
    study.enqueue_trial({"optim.lr": 1e-4})  # far too slow: pruned at its first report
    args = ["tune", "tiny", *base, "--param", "optim.lr=log:1e-4:1e-2", "--out", str(tmp_path)]
    assert main([*args, "--trials", "2"]) == 0
    study = open_study(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "PRUNED"]
    assert study.trials[0].intermediate_values and study.trials[1].intermediate_values
    assert main([*args, "--trials", "3"]) == 0  # resumed: one more trial
    assert len(open_study(tmp_path).trials) == 3
    assert "3 trials" in capsys.readouterr().out
