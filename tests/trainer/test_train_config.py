"""Recipes and stage lists: every shipped recipe parses; bad keys and values are named."""
from __future__ import annotations

import json

import pytest
import torch

from plasticlm import PlasticLM
from plasticlm.trainer.config import load_config, load_plan, shipped_recipes
from plasticlm.trainer.loop import Trainer, run_plan
from plasticlm.trainer.stream_kinds import is_registered

from .conftest import TINY, final_weights

STAGE_KINDS = ("traditional", "linked", "shuffled")


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_shipped_recipe_parses(recipe):
    for cfg in load_plan(recipe):
        assert cfg.steps >= 1 and cfg.out_dir


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_recipes_stream_kind_is_registered(recipe):
    for cfg in load_plan(recipe):
        if cfg.data.kind in STAGE_KINDS and not is_registered(cfg.data.kind):
            pytest.skip(f"stream kind {cfg.data.kind!r} is not registered yet: the issue-3 pretraining streams "
                        "plug in with plasticlm.trainer.stream_kinds.register_stream")
        assert is_registered(cfg.data.kind), f"{recipe}: data.kind {cfg.data.kind!r} is not registered"


def test_model_sizes_of_small_and_base():
    def params(recipe):
        with torch.device("meta"):
            return PlasticLM(load_config(recipe).model).num_params()

    assert 10e6 <= params("small") < 100e6  # tens of millions
    gpu_short = load_config("gpu_short")  # its final weights must come back from a lent GPU
    assert gpu_short.checkpoint.export_dtype == "bfloat16" and gpu_short.checkpoint.export_shard_mib <= 16
    assert params("gpu_short") * 2 < 64 * 2 ** 20
    assert 100e6 <= params("base") < 130e6  # ~110M-125M


def test_stage_recipes_chain_init_from():
    cfgs = load_plan("stages", ["out_dir=/tmp/x", "steps=7"])
    assert [c.data.kind for c in cfgs] == list(STAGE_KINDS)
    assert [c.checkpoint.init_from for c in cfgs] == ["", "/tmp/x/1-traditional", "/tmp/x/2-linked"]
    assert all(c.steps == 7 for c in cfgs)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("model.d_modle=8", "unknown config key 'model.d_modle'"),
    ("steps=many", "steps must be of type int, got 'many'"),
    ("optim.lr=fast", "optim.lr must be of type float"),
    ("data.kind=7", "data.kind must be of type str"),
    ("backprop=magic", "backprop must be one of"),
    ("nosuch", "must look like key=value"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_config("tiny", [override])


def test_yaml_float_without_dot_is_read_as_a_number():
    assert load_config("tiny", ["optim.lr=1e-3", "model.max_half_life=1e4"]).optim.lr == 1e-3


def test_stage_list_runs_each_stage_from_the_previous_ones_weights(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(json.dumps({"out_dir": str(tmp_path / "stages"), "stages": [
        {"recipe": "tiny", "overrides": {"optim.lr": 0.01}},
        {"recipe": "tiny", "overrides": {"segment_len": 8}}]}))
    cfgs = load_plan(str(plan), [*TINY, "steps=3"])
    assert cfgs[1].checkpoint.init_from == str(tmp_path / "stages" / "1-tiny")
    run_plan(cfgs[:1], progress=False)
    second = Trainer(cfgs[1], progress=False)  # starts from stage 1's final weights, step 0
    assert second.step == 0
    for k, v in final_weights(tmp_path / "stages" / "1-tiny").items():
        assert torch.equal(second.model.state_dict()[k], v), k
    del second
    summaries = run_plan(cfgs, progress=False)  # stage 1 is done and not rerun
    assert summaries[0]["model_id"] == json.loads((tmp_path / "stages" / "1-tiny" / "summary.json").read_text())["model_id"]
    assert (tmp_path / "stages" / "2-tiny" / "model.safetensors").exists()


@pytest.mark.parametrize("recipe", ["small", "base", "traditional", "linked", "shuffled", "gpu_short"])
def test_recipes_on_the_offline_corpus_say_how_to_build_it(recipe, tmp_path):
    from plasticlm.cli import main

    cfg = load_config(recipe)
    assert cfg.data.source == "data/graph" and cfg.bptt == "whole"
    code = main(["train", recipe, f"data.source={tmp_path / 'missing'}", f"out_dir={tmp_path / 'run'}", "--no-progress"])
    assert code == 2


def test_missing_offline_corpus_message_names_the_commands(tmp_path, capsys):
    from plasticlm.cli import main

    assert main(["train", "small", f"data.source={tmp_path / 'missing'}", f"out_dir={tmp_path / 'run'}",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is not a prepared corpus directory" in err and "plasticlm build-corpus data/offline --install" in err
    assert "plasticlm prepare data/offline/graph.jsonl data/graph" in err
