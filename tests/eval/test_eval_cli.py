"""`plasticlm eval`: one JSON with config, commit, device and seed, plots, and clear errors on bad input."""
import json
import sys
import types

import pytest
from conftest import V
from test_eval_suites import TINY

from plasticlm import ModelConfig, PlasticLM
from plasticlm.checkpoint import save_model
from plasticlm.cli import main
from plasticlm.eval.registry import SUITES


def test_eval_all_suites_on_a_tiny_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["eval", str(checkpoint), *TINY[:3], "--suite", "all", "--preset", "smoke", "--out", str(out),
               "--seed", "3", "--no-progress", "--set", *TINY[3:]])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    for key in ("date", "command", "commit", "device", "seed", "versions", "checkpoint", "preset"):
        assert key in doc, key
    assert doc["seed"] == 3 and doc["preset"] == "smoke" and doc["device"].startswith("cpu")
    assert len(doc["commit"]) >= 7 and "eval" in doc["command"]
    assert doc["checkpoint"]["config"]["vocab_size"] == V and doc["checkpoint"]["model_id"]
    assert set(doc["suites"]) == set(SUITES)
    assert doc["suites"]["qa"]["config"]["max_questions"] == 2  # the override reached the suite
    pngs = [p for s in doc["suites"].values() for p in s["results"]["plots"]]
    assert len(pngs) >= len(SUITES) and all((out / p).exists() for p in pngs)
    printed = capsys.readouterr().out
    assert "perplexity: token ppl" in printed and "results:" in printed
    md = (out / "results.md").read_text()
    assert doc["commit"] in md and "| perplexity | token ppl" in md and "![probes]" in md


def run_err(args, capsys):
    rc = main(["eval", *args])
    return rc, capsys.readouterr().err


def test_missing_checkpoint(tmp_path, capsys):
    rc, err = run_err([str(tmp_path / "nope"), "--suite", "perplexity"], capsys)
    assert rc == 2 and "no checkpoint at" in err and "nope" in err


def test_checkpoint_from_another_vocabulary(tmp_path, tok, capsys):
    model = PlasticLM(ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2))
    save_model(tmp_path / "other", model, tok)  # a 300-token model beside a 272-token tokenizer
    rc, err = run_err([str(tmp_path / "other"), "--suite", "perplexity"], capsys)
    assert rc == 1 and "272" in err and "300" in err and "other" in err  # a broken checkpoint: bad data


def test_tokenizer_of_another_vocabulary_is_refused(tok, plastic):
    from plasticlm.eval.common import check_vocab

    class Small:
        vocab_size = 100

    check_vocab(plastic, tok)
    with pytest.raises(ValueError, match="vocab_size=272 but the tokenizer has 100 tokens"):
        check_vocab(plastic, Small())


def test_unknown_suite(checkpoint, capsys):
    rc, err = run_err([str(checkpoint), "--suite", "perplexity,nosuch"], capsys)
    assert rc == 2 and "unknown suite 'nosuch'" in err and "perplexity" in err


def test_unknown_setting(checkpoint, capsys):
    rc, err = run_err([str(checkpoint), "qa.nope=1", "--suite", "qa"], capsys)
    assert rc == 2 and "'nope'" in err and "max_questions" in err
    rc, err = run_err([str(checkpoint), "--suite", "qa", "--set", "qa.orders=[sideways]"], capsys)
    assert rc == 2 and "sideways" in err


@pytest.mark.parametrize("content, needle", [
    ('{"data": [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "1", "answers": [{"text": "a"}]}]}]}]}',
     "data[0].paragraphs[0].qas[0]: missing field 'question'"),
    ('{"data": [{"paragraphs": [{"context": 5, "qas": []}]}]}', "data[0].paragraphs[0].context: expected str, got int"),
    ('{"version": "1.1"}', "top level: missing field 'data'"),
    ('{"data": [', "not JSON: line 1"),
])
def test_malformed_qa_file(checkpoint, tmp_path, capsys, content, needle):
    bad = tmp_path / "bad_squad.json"
    bad.write_text(content)
    rc, err = run_err([str(checkpoint), "--suite", "qa", "--preset", "smoke", "--out", str(tmp_path),
                       "--set", f"qa.source={bad}"], capsys)
    assert rc == 2 and "bad_squad.json" in err and needle in err


def test_hub_unreachable_says_how_to_use_local_files(checkpoint, tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("datasets")

    def load_dataset(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    rc, err = run_err([str(checkpoint), "--suite", "qa", "--preset", "smoke", "--out", str(tmp_path),
                       "--set", "qa.source=hub"], capsys)
    assert rc == 2 and "cannot load SQuAD from the Hugging Face hub" in err and "qa.source=PATH" in err
    rc, err = run_err([str(checkpoint), "--suite", "bleu", "--preset", "smoke", "--out", str(tmp_path),
                       "--set", "bleu.source=hub"], capsys)
    assert rc == 2 and "WMT16" in err and "bleu.source=PATH" in err


def test_help_lists_the_suites(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in SUITES)


def test_settings_are_type_checked():
    from plasticlm.eval.registry import make_config

    assert make_config("listops", overrides=["listops.lr=1"]).lr == 1.0  # an int may stand for a float
    for bad in ("qa.max_questions=many", "qa.orders=read_first", "oneshot.dynamic=3", "perplexity.piece=1.5"):
        with pytest.raises(ValueError, match="expected"):
            make_config(bad.split(".")[0], overrides=[bad])
    with pytest.raises(ValueError, match="suite.field=value"):
        make_config("qa", overrides=["max_questions=3"])
