"""plasticlm bench: planning, every suite end to end on a tiny model, OOM rows, resume, budget, CLI."""
import json
from dataclasses import replace

import pytest
import torch

from plasticlm.baselines import Transformer, TransformerConfig
from plasticlm.bench import jobs as jobs_mod
from plasticlm.bench import make_config, run
from plasticlm.bench.models import matmul_params, train_flops_per_token
from plasticlm.bench.runner import plan, run_isolated
from plasticlm.cli import main

TINY = {"model": {"vocab_size": 40, "d_model": 16, "n_layers": 1, "n_heads": 2}, "steps": 1, "warmup": 0,
        "baseline": {"mamba2": {"state_size": 8, "mamba_head_dim": 8}}, "isolate": False, "threads": 1}


def tiny(tmp_path, **kw):
    return make_config("smoke", out=str(tmp_path), name="t", **{**TINY, **kw})


def test_plan_sizes_batches_and_caps_contexts():
    cfg = make_config("h100")
    jobs = plan(cfg, torch.device("cpu"))
    keys = [j["key"] for j in jobs]
    assert len(keys) == len(set(keys))
    train = {(j["variant"], j["T"]): j for j in jobs if j["suite"] == "train"}
    assert train[("transformer/full", 32768)]["B"] == 2 and train[("transformer/full", 1048576)]["B"] == 1
    assert jobs[[j["suite"] for j in jobs].index("train")]["T"] == 32768  # the headline comes first
    ctx = {(j["model_name"], j["context"]) for j in jobs if j["suite"] == "infer"}
    assert ("plasticlm", 1048576) in ctx and ("transformer", 1048576) not in ctx


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("tpu")
    with pytest.raises(ValueError, match="unknown variant"):
        make_config("cpu", variants=("rwkv/full",))
    with pytest.raises(ValueError, match="no field 'speed'"):
        make_config("cpu", speed=1)
    with pytest.raises(ValueError, match="VARIANT@T"):
        make_config("cpu", profile=("transformer/full",))


def test_transformer_flops_count_every_matrix_once():
    c = TransformerConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, ffn_hidden=24)
    m = Transformer(c)
    assert matmul_params(m) == 2 * (4 * 16 * 16 + 3 * 16 * 24) + 40 * 16
    assert train_flops_per_token(m, 100) == 6 * matmul_params(m) + 6 * 2 * 16 * 100


def test_all_suites_end_to_end(tmp_path):
    cfg = tiny(tmp_path, seq_lens=(32,), tokens_per_step=64, segment_tokens=32, contexts=(64,), gen_batches=(1,),
               paths_T=32, variants=("plasticlm-rev/segment", "plasticlm-rev/full", "transformer/full", "gla/full",
                                     "mamba2/full"), profile=("plasticlm-rev/segment@32",))
    path = run(cfg, command="test", progress=False)
    data = json.loads(path.read_text())
    rows = {r["key"]: r for r in data["rows"]}
    seg = rows["train|plasticlm-rev/segment|T32|B2"]
    assert seg["tok_s"] > 0 and seg["segment_len"] == 16 and seg["peak_GiB"] > 0 and seg["memory"] == "cpu_peak_rss"
    assert all("tok_s" in r for r in data["rows"] if r["suite"] == "train" and "profile_dir" not in r)
    inf = rows["infer|transformer|C64|B1"]
    assert inf["gen_tok_s"] > 0 and inf["state_MiB"] > 0
    assert rows["paths|chunk|T32"]["op_forward_s"] > 0
    prof = rows["profile|plasticlm-rev/segment|T32|B2"]
    assert "aten::" in open(prof["profile"]).read()
    md = path.with_suffix(".md").read_text()
    assert "plasticlm-rev/segment vs plasticlm-rev/full" in md and "## Inference" in md and "`test`" in md
    for name in ("train_tokens_per_s", "train_memory", "infer_memory", "infer_generation"):
        assert (tmp_path / f"t_{name}.png").stat().st_size > 1000


def test_out_of_memory_is_a_row_and_the_run_goes_on(tmp_path, monkeypatch):
    real = jobs_mod.RUNNERS["train"]

    def flaky(job, device):
        if job["variant"] == "transformer/full":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        if job["variant"] == "gla/full":
            raise RuntimeError("some bug")
        return real(job, device)

    monkeypatch.setitem(jobs_mod.RUNNERS, "train", flaky)
    cfg = tiny(tmp_path, suites=("train",), seq_lens=(32,), tokens_per_step=32, segment_tokens=16,
               variants=("transformer/full", "gla/full", "plasticlm-rev/segment"))
    data = json.loads(run(cfg, progress=False).read_text())
    by = {r["variant"]: r for r in data["rows"]}
    assert by["transformer/full"]["oom"] is True
    assert "RuntimeError: some bug" in by["gla/full"]["error"]
    assert by["plasticlm-rev/segment"]["tok_s"] > 0
    assert "trains; transformer OOM" in (tmp_path / "t.md").read_text()


def test_resume_skips_finished_jobs_and_budget_stops_new_ones(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(jobs_mod.RUNNERS, "train", lambda job, device: calls.append(job["key"]) or
                        {"tok_s": 1, "step_s": 1.0, "peak_GiB": 0.1})
    cfg = tiny(tmp_path, suites=("train",), seq_lens=(32, 64), variants=("transformer/full",))
    run(replace(cfg, seq_lens=(32,)), progress=False)
    assert len(calls) == 1
    run(replace(cfg, resume=True), progress=False)
    assert calls == ["train|transformer/full|T32|B8", "train|transformer/full|T64|B4"]
    path = run(replace(cfg, name="b", time_budget=1e-9), progress=False)
    rows = json.loads(path.read_text())["rows"]
    assert all(r["error"].startswith("not run: time budget") for r in rows) and len(calls) == 2


def test_isolated_job_reports_peak_rss_of_a_fresh_process():
    cfg = make_config("smoke", **{**TINY, "isolate": True})
    job = next(j for j in plan(cfg, torch.device("cpu")) if j["suite"] == "infer")
    res = run_isolated({**job, "context": 64}, timeout=300)
    assert res["peak_GiB"] >= res["base_rss_GiB"] > 0 and res["prefill_tok_s"] > 0


def test_cli_help_and_bad_preset(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--seq-lens" in out and "max_memory_allocated" in out
    assert main(["bench", "--preset", "tpu"]) == 2
    assert "unknown preset 'tpu'" in capsys.readouterr().err
