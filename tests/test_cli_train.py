"""The README's main job, shrunk: `plasticlm train` runs, logs, checkpoints, and the checkpoint loads."""
import json

import pytest
import torch

import plasticlm
from plasticlm.checkpoint import load_model
from plasticlm.cli import main

SMALL = ["steps=4", "model.d_model=32", "model.n_layers=2", "data.seq_len=64", "data.min_len=32", "data.batch_size=4",
         "segment_len=32", "eval_tokens=512"]


def test_public_api_is_exported():
    for name in ("ModelConfig", "PlasticLM", "State", "gated_average", "segment_backward"):
        assert hasattr(plasticlm, name), name


def test_train_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "tiny", f"out_dir={out}", "--no-progress", *SMALL]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("done: 4 steps") and "bits/byte" in line
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    model, tok, meta = load_model(out)
    assert model.config.d_model == 32 and tok.vocab_size == model.config.vocab_size
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_id"] == meta["model_id"]
    logits, _ = model(torch.tensor([tok.encode("The ")]))
    assert torch.isfinite(logits).all()


def test_train_is_reproducible(tmp_path):
    for name in ("a", "b"):
        assert main(["train", "tiny", f"out_dir={tmp_path / name}", "--no-progress", *SMALL]) == 0
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


@pytest.mark.parametrize("override,match", [
    ("model.depth=3", "unknown config key 'model.depth'"),
    ("optim.lr=fast", "optim.lr must be of type float"),
    ("steps=0", "TrainConfig.steps must be a positive integer"),
    ("model.d_model=-1", "ModelConfig.d_model must be a positive integer"),
    ("data.source=/nonexistent.txt", "neither 'builtin' nor an existing text file"),
])
def test_bad_config_is_one_clear_line(tmp_path, capsys, override, match):
    code = main(["train", "tiny", f"out_dir={tmp_path}", "--no-progress", *SMALL, override])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err


def test_unknown_recipe(capsys):
    assert main(["train", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
