"""The experiment runner and every experiment's --quick form: the code path, not the figures."""
import dataclasses
import json

import pytest

from plasticlm.cli import main
from plasticlm.experiments import EXPERIMENTS, make_config
from plasticlm.experiments.runner import experiment_module, run_experiment

pytest.importorskip("matplotlib")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_config_parses_and_plans_unique_runs(name):
    mod = experiment_module(name)
    for quick in (False, True):
        cfg = make_config(name, quick)
        assert dataclasses.asdict(cfg) == dataclasses.asdict(make_config(name, quick, []))
        runs = mod.plan(cfg)
        assert runs and len({r.id for r in runs}) == len(runs)
    assert mod.QUESTION.endswith("?")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_form_runs_writes_results_and_resumes(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["experiment", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    planned = len(experiment_module(name).plan(make_config(name, True)))
    assert len(doc["runs"]) == doc["planned_runs"] == planned
    for key in ("date", "commit", "torch", "command", "device"):
        assert doc["provenance"][key], key
    assert all(r["seconds"] >= 0 and r["commit"] for r in doc["runs"].values())
    md = (out / "results.md").read_text()
    assert f"Runs: {planned} of {planned} done" in md
    for png in [line.split("(")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "work").exists()
    # a crash keeps finished runs: drop one, and the same command runs only that one again
    dropped = sorted(doc["runs"])[0]
    del doc["runs"][dropped]
    (out / "results.json").write_text(json.dumps(doc))
    before = {k: v["date"] for k, v in doc["runs"].items()}
    run_experiment(name, quick=True, out=out, progress=False)
    again = json.loads((out / "results.json").read_text())
    assert set(again["runs"]) == set(doc["runs"]) | {dropped}
    assert all(again["runs"][k]["date"] == d for k, d in before.items())  # not rerun


def test_results_of_another_config_are_never_mixed(tmp_path):
    out = tmp_path / "e"
    cfg = make_config("mqar", True)
    (out).mkdir()
    (out / "results.json").write_text(json.dumps({"config": {**dataclasses.asdict(cfg), "seeds": [5]}, "runs": {}}))
    with pytest.raises(ValueError, match=r"holds runs made with another config \(fields \['seeds'\] differ\)"):
        run_experiment("mqar", quick=True, out=out, progress=False)


def test_a_field_added_later_resumes_older_results_at_its_default(tmp_path):
    """A results file written before a config field existed resumes when the field is at its default
    (the behaviour of the code it was written with), and is refused when the field is set otherwise."""
    out = tmp_path / "e"
    out.mkdir()
    old = dataclasses.asdict(make_config("mqar", True))
    del old["protocol"]["noise"]
    (out / "results.json").write_text(json.dumps({"config": old, "runs": {}}))
    with pytest.raises(ValueError, match=r"fields \['protocol'\] differ"):
        run_experiment("mqar", quick=True, out=out, progress=False, overrides=["protocol.noise=not_keys"])
    run_experiment("mqar", quick=True, out=out, progress=False)
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["protocol"]["noise"] == "vocab" and len(doc["runs"]) == doc["planned_runs"]
    first = next(iter(doc["runs"].values()))
    assert set(first["by_query"]) == set(first["accuracy"])
    assert set(first["by_query"]["2"]) == {"all", "clean", "distractor", "distractor_share"}


def test_bad_names_and_settings_are_one_clear_line(capsys):
    assert main(["experiment", "nosuch", "--quick"]) == 2
    assert "unknown experiment 'nosuch'; known: mqar" in capsys.readouterr().err
    assert main(["experiment", "mqar", "--quick", "protocol.max_stepz=3"]) == 2
    assert "unknown config key 'mqar.protocol.max_stepz'" in capsys.readouterr().err
    assert main(["experiment", "mqar", "--quick", "models=[lstm]"]) == 2
    assert "unknown models or ablations ['lstm']" in capsys.readouterr().err
    assert main(["experiment", "--list"]) == 0
    assert "mqar: Does plasticlm's memory learn" in capsys.readouterr().out
