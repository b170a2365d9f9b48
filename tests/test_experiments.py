"""The experiment runner and every experiment's --quick form: the code path, not the figures."""
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
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
    fields = dataclasses.asdict(make_config(name, False))
    # A misspelt PLAN_FIELDS entry would not free its field: --adopt would refuse runs it should take.
    # The runner compares leaves (runner._differing), so a section name would free nothing either.
    for dotted in getattr(mod, "PLAN_FIELDS", ()):
        node = fields
        for part in dotted.split("."):
            assert part in node, f"{name}.PLAN_FIELDS names {dotted!r}, not a field of its Config"
            node = node[part]
        assert not isinstance(node, dict), f"{name}.PLAN_FIELDS names {dotted!r}, a section, not a field"


HAS_MAN_PAGES = bool(shutil.which("groff") and shutil.which("col") and Path("/usr/share/man/man1").is_dir())


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_quick_form_runs_writes_results_and_resumes(name, tmp_path, capsys):
    if name in ("length", "proxy") and not HAS_MAN_PAGES:
        pytest.skip(f"the {name} experiment builds its corpus from man pages with groff")
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
    assert set(first["by_query"]["2"]) == {"all", "clean", "distractor", "distractor_share", "by_pair", "by_gap", "gap_counts"}
    assert len(first["by_query"]["2"]["by_pair"]) == 2


def test_adopted_runs_are_taken_over_and_other_settings_are_refused_by_name(tmp_path):
    """--adopt: the runs of a folder that differs only in which runs it plans are this plan's runs
    (not rerun, their records kept and traced); a folder trained otherwise is refused, naming why."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_experiment("mqar", quick=True, out=a, progress=False, overrides=["models=[gated_average]", "ablations=[]"])
    (rec,) = json.loads((a / "results.json").read_text())["runs"].values()
    assert main(["experiment", "mqar", "--quick", "--out", str(b), "--no-progress", "--adopt", str(a),
                 "models=[gated_average,transformer]", "ablations=[]"]) == 0
    runs = json.loads((b / "results.json").read_text())["runs"]
    assert set(runs) == {rec["id"], rec["id"].replace("gated_average", "transformer")}
    assert runs[rec["id"]] == {**rec, "adopted_from": str(a)}
    assert "adopted_from" not in runs[rec["id"].replace("gated_average", "transformer")]
    with pytest.raises(ValueError, match=r"other settings \(protocol.max_steps\)"):
        run_experiment("mqar", quick=True, out=tmp_path / "c", progress=False, adopt=[a],
                       overrides=["protocol.max_steps=3", "models=[gated_average]", "ablations=[]"])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        run_experiment("mqar", quick=True, out=tmp_path / "d", progress=False, adopt=[tmp_path / "nowhere"])


@pytest.mark.skipif(not HAS_MAN_PAGES, reason="builds its corpus from man pages with groff")
def test_length_holds_out_every_page_of_its_evaluation_walks(tmp_path):
    """No page read in the held-out streams is in the training corpus, and the streams are walks
    of the citation graph of the requested length."""
    from plasticlm.data.shards import TokenShard
    from plasticlm.experiments import length

    cfg = make_config("length", True, ["eval_streams=2", "eval_factor=8"])
    source, streams, roots = length.split_corpus(cfg, tmp_path / "work")
    assert streams.shape == (2, cfg.eval_len + 1) and len(set(roots)) == 2
    assert (streams[:, 0] == 257).all()  # the byte tokenizer's [BOS]
    train_ids = set(TokenShard(source, "train").ids) | set(TokenShard(source, "valid").ids)
    graph = [json.loads(x) for x in (tmp_path / "shared" / "offline-40" / "graph.jsonl").read_text().splitlines()]
    texts = {g["id"]: g["text"].encode() for g in graph}
    for row in streams.tolist():
        body = bytes(t for t in row if t < 256)
        read = [pid for pid, t in texts.items() if t[:200] in body]
        assert read and not set(read) & train_ids
    assert len(train_ids) + len({p for row in streams.tolist() for p in texts if texts[p][:200] in
                                 bytes(t for t in row if t < 256)}) <= len(graph)
    with pytest.raises(ValueError, match="eval_streams=50 asked for"):
        length.split_corpus(make_config("length", True, ["eval_streams=50", "eval_factor=64"]), tmp_path / "work")


@pytest.mark.skipif(not HAS_MAN_PAGES, reason="builds its corpus from man pages with groff")
def test_plasticity_on_man_pages_keeps_each_page_in_one_split(tmp_path):
    """corpus=manpages: every man page cut into runs of whole paragraphs that fit doc_bytes (a longer
    paragraph alone), nothing dropped or reordered, and all of a page's pieces in one split."""
    from plasticlm.data.corpus import read_corpus
    from plasticlm.data.shards import TokenShard
    from plasticlm.experiments import plasticity

    cfg = make_config("plasticity", True, ["corpus=manpages", "max_pages=40", "doc_bytes=250"])
    source = plasticity.prepared_corpus(cfg, tmp_path / "work")
    split_of_page, pieces = {}, {}
    for split in ("train", "valid", "test", "holdout"):
        shard = TokenShard(source, split)
        for i, doc_id in enumerate(shard.ids):
            page, n = doc_id.rsplit("#", 1)
            assert split_of_page.setdefault(page, split) == split, f"{page} straddles two splits"
            pieces.setdefault(page, {})[int(n)] = bytes(shard[i].tolist()).decode()
    assert len(set(split_of_page.values())) > 1
    for dropped, kept in json.loads((source / "meta.json").read_text())["aliases"].items():  # exact duplicates
        page, n = dropped.rsplit("#", 1)  # (boilerplate such as a bug-report paragraph) are stored once
        kept_page, m = kept.rsplit("#", 1)
        pieces.setdefault(page, {})[int(n)] = pieces[kept_page][int(m)]
    pages = list(read_corpus(tmp_path / "shared" / "offline-40" / "graph.jsonl"))
    assert len(pieces) == len(pages) and len(pages) > 20
    for page in pages:
        runs = [pieces[page.id][i] for i in range(len(pieces[page.id]))]
        assert all(len(r.encode()) <= 250 or "\n\n" not in r for r in runs)
        assert "\n\n".join(runs).split("\n\n") == [q.strip("\n") for q in page.text.split("\n\n") if q.strip()]
    with pytest.raises(ValueError, match="corpus='wiki'; known: builtin, manpages"):
        make_config("plasticity", True, ["corpus=wiki"])


@pytest.mark.skipif(not HAS_MAN_PAGES, reason="the proxy experiment builds its corpus from man pages with groff")
def test_proxy_arm_trains_with_the_penalty_and_the_plain_arm_only_logs_it(tmp_path):
    out = tmp_path / "proxy"
    run_experiment("proxy", quick=True, out=out, progress=False)
    runs = json.loads((out / "results.json").read_text())["runs"]
    plain, proxy = runs["gated_average/seed0"], runs["gated_average-proxy/seed0"]
    for r in runs.values():  # every arm logged the retention mass the penalty is computed from
        assert r["retention_logged"] and "retention/L0/band0" in r["retention_logged"][-1]
        assert r["gradient_lag"]["edges"] == [[1, 11], [11, 65], [65, 128]]
        assert sum(r["gradient_lag"]["real_band_shares"]) == pytest.approx(1)
        writes = r["gradient_lag"]["writes"]  # one per layer, measured beside both proxies
        assert len(writes) == len(r["gradient_lag"]["proxy_band_shares_per_layer"])
        for w in writes:
            for key in ("measured_band_shares", "proxy_band_shares", "read_weighted_band_shares"):
                assert sum(w[key]) == pytest.approx(1), key
    # same seed and batches: only the penalty's gradient can make the models differ
    read = runs["gated_average-proxy-read/seed0"]
    assert plain["positions"]["carried"] != proxy["positions"]["carried"] != read["positions"]["carried"]


def test_measured_gradient_is_the_embedding_gradient_by_lag():
    """Lag k of the measurement is |dL/dx_(T-1-k)| for the loss at the last position, computed
    here independently through a leaf embedding tensor."""
    import torch

    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.eval.gradient_lag import measured_gradient

    torch.manual_seed(0)
    model = PlasticLM(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, chunk_size=8))
    probes = torch.randint(0, 40, (2, 25))
    got = measured_gradient(model, probes, last=1)
    want = torch.zeros(24, dtype=torch.float64)
    for row in probes:
        x = model.embed(row[None, :-1]).detach().requires_grad_()
        embed = model.embed
        model.embed = type("Fixed", (torch.nn.Module,), {"forward": lambda self, t: x})()
        model.embed.weight = embed.weight
        try:
            logits, _ = model(row[None, :-1])
        finally:
            model.embed = embed
        torch.nn.functional.cross_entropy(logits[0, -1:], row[-1:]).backward()
        want += x.grad[0].norm(dim=-1).double().flip(0)
    assert torch.allclose(got, want / 2, rtol=1e-5)
    assert got[0] > 0 and got[-1] > 0  # the last position reads its own input and the first


def test_write_gradient_is_the_gradient_into_each_memorys_k_and_v():
    """Lag k of the write measurement is |dL/d(k, v)| at position T-1-k of each layer's input
    projection, computed here through a leaf tensor; a reversible model gives the same as under
    its own backward (the measurement switches reconstruction off and restores it)."""
    import torch

    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.eval.gradient_lag import write_gradient

    torch.manual_seed(0)
    model = PlasticLM(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, chunk_size=8, short_conv=4))
    H, K, V = model.config.n_heads, model.config.k_dim, model.config.v_dim
    probes = torch.randint(0, 40, (2, 25))
    got = write_gradient(model, probes, last=2)
    assert model.reconstruct
    want = torch.zeros(2, 24, dtype=torch.float64)
    for row in probes:
        leaves = []

        def swap(module, inp, out):
            leaf = out.detach().requires_grad_()
            leaves.append(leaf)
            return leaf

        model.reconstruct = False
        hooks = [b.memory.proj_in.register_forward_hook(swap) for b in model.blocks]
        try:
            logits, _ = model(row[None, :-1])
        finally:
            for h in hooks:
                h.remove()
            model.reconstruct = True
        torch.nn.functional.cross_entropy(logits[0, -2:], row[-2:], reduction="sum").backward()
        for i, leaf in enumerate(leaves):
            want[i] += leaf.grad[0, :, H * K:2 * H * K + H * V].norm(dim=-1).double().flip(0)
    assert torch.allclose(got, want / 2, rtol=1e-5)


def test_write_gradient_follows_the_gates_along_the_memory():
    """One layer without convolution: gates near 0 keep nothing, so no gradient reaches a write
    older than the loss's positions; gates near 1 keep it, and the gradient reaches the first."""
    import torch

    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.eval.gradient_lag import write_gradient

    torch.manual_seed(0)
    model = PlasticLM(ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, chunk_size=8, short_conv=0))
    probes = torch.randint(0, 40, (2, 33))
    gate = model.blocks[0].memory.gate
    with torch.no_grad():
        gate.weight.zero_()
        gate.bias.fill_(-30.0)  # a = sigmoid(-30): each write is gone by the next token
    short = write_gradient(model, probes, last=4)[0]
    with torch.no_grad():
        gate.bias.fill_(6.0)  # a = 0.9975: a half-life of ~280 tokens
    long = write_gradient(model, probes, last=4)[0]
    assert short[:4].min() > 0 and short[4:].max() < 1e-9 * short[:4].max()
    assert long[4:].min() > 1e-3 * long[:4].max()


def test_loss_window_reads_each_write_from_every_loss_position():
    """A write at lag k (from the last position) is read at lags k, k - 1, ..., k - last + 1 by the
    last ``last`` positions: a curve that is 1 at lag 0 only becomes 1 at lags 0 .. last - 1."""
    import torch

    from plasticlm.eval.gradient_lag import loss_window, total_variation

    assert loss_window([1.0, 0, 0, 0, 0], 3).tolist() == [1, 1, 1, 0, 0]
    assert loss_window([1.0, 2.0, 4.0], 2).tolist() == [1, 3, 6]
    assert torch.equal(loss_window([1.0, 2.0], 1), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert total_variation([0.5, 0.5, 0.0], [0.25, 0.5, 0.25]) == pytest.approx(0.25)


def test_shared_builds_take_turns(tmp_path):
    """files.locked: while one process holds the lock, another cannot take it (so two parallel runs
    never build one shared corpus at once); it is free again after the block."""
    import fcntl
    import subprocess
    import sys

    from plasticlm.files import locked

    lock = tmp_path / "shared" / "corpus.lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')")
    with locked(lock):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True, text=True).stdout
    assert (held.strip(), free.strip()) == ("held", "free")


def test_plasticity_arms_start_from_the_base_weights(tmp_path):
    """Every arm starts from the base's weights; the mutable arm adds only its table's parameters."""
    import torch

    from plasticlm import archs
    from plasticlm.checkpoint import save_model
    from plasticlm.experiments import plasticity
    from plasticlm.tokenizer import ByteTokenizer

    cfg = make_config("plasticity", True)
    base = archs.build("plasticlm", plasticity.model_config(cfg, "base"))
    save_model(tmp_path / "base", base, ByteTokenizer())
    for arm in plasticity.ARMS:
        model, mcfg = plasticity.start_model(cfg, arm, tmp_path / "base")
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in base.state_dict().items())
        assert sorted({k.split(".")[0] for k in set(own) - set(base.state_dict())}) == (
            ["mutable"] if arm == "shuffled-mutable" else [])
    other = archs.build("plasticlm", dataclasses.replace(plasticity.model_config(cfg, "base"), n_layers=2))
    save_model(tmp_path / "other", other, ByteTokenizer())
    with pytest.raises(RuntimeError, match="does not fit the plain model"):
        plasticity.start_model(cfg, "plain", tmp_path / "other")


def test_plasticity_plain_text_is_long_documents_not_paragraphs(tmp_path):
    """The base and the plain arm read rows of about their sequence length: the corpus's documents
    are runs of paragraphs of at most doc_bytes, just under a row (single paragraphs, ~150 bytes,
    made every plain row one paragraph; documents just over a row left a short tail row each)."""
    from plasticlm.experiments import plasticity
    from plasticlm.trainer.config import DataConfig
    from plasticlm.trainer.stream_kinds import build_stream

    cfg = make_config("plasticity", True, ["doc_bytes=2000", "seq_len=2048"])
    source = plasticity.prepared_corpus(cfg, tmp_path / "work")
    rows = build_stream(DataConfig(kind="traditional", source=str(source), seq_len=2048, batch_size=8)).pieces
    assert len(rows) > 200 and (rows[:, 1] == 0).mean() > 0.95  # one row per document: no tails
    assert np.median(rows[:, 2]) > 1800  # and nearly full
    base = build_stream(DataConfig(kind="traditional", source=str(source), seq_len=512, batch_size=8)).pieces[:, 2]
    assert base[base == 513].sum() / base.sum() > 0.7  # the base's pieces: mostly whole
    with pytest.raises(ValueError, match="doc_bytes=2047 must be in"):
        make_config("plasticity", True, ["doc_bytes=2047", "seq_len=2048"])


def test_oracles_score_the_rows_the_models_are_scored_on(tmp_path):
    """A model that predicts the pooled unigram of the held-out rows, read by loss_by_position, gets
    the oracle's 'global unigram' in every bin: the same rows, positions and weights."""
    import torch

    from plasticlm.experiments import plasticity
    from plasticlm.experiments.embeddings import held_out_batches, loss_by_position, oracles_by_position

    cfg = make_config("plasticity", True)
    data = plasticity.data_config(cfg, plasticity.prepared_corpus(cfg, tmp_path / "work"))
    V = plasticity.model_config(cfg, "base").vocab_size
    pooled = torch.zeros(V, dtype=torch.float64)
    for b in held_out_batches(cfg, data, 0):
        pooled += torch.bincount(b.targets[b.weights > 0], minlength=V)
    logp = ((pooled + 0.5) / (pooled.sum() + 0.5 * V)).log().float()

    class Unigram(torch.nn.Module):
        def init_state(self, batch):
            return None

        def forward(self, tokens, state):
            return logp.expand(*tokens.shape, V), state

    oracles = oracles_by_position(cfg, data, 0, V)
    model = loss_by_position(Unigram(), cfg, data, 0)
    unigram = oracles["global unigram"]
    assert unigram["bins"] == model["bins"] and unigram["text_starts"] == model["text_starts"]
    assert [x is None for x in unigram["loss"]] == [x is None for x in model["loss"]]
    assert unigram["loss"] == pytest.approx(model["loss"], abs=1e-5)
    assert unigram["mean"] == pytest.approx(model["mean"], abs=1e-5)
    assert oracles["counting"]["bins"] == model["bins"]


def test_held_out_measures_count_rows_with_text_not_padding(monkeypatch):
    """An epoch's last batch is padded with empty rows and can come first: eval_sequences=8 must
    still score 8 rows of text (it once scored 6)."""
    import types

    import torch

    from plasticlm.experiments import embeddings
    from plasticlm.trainer import stream_kinds

    def batch(texts):
        w = torch.zeros(4, 16)
        w[:texts] = 1
        return types.SimpleNamespace(tokens=torch.zeros(4, 16, dtype=torch.long), weights=w)

    batches = iter([batch(2), batch(4), batch(4), batch(4)])
    monkeypatch.setattr(stream_kinds, "build_stream", lambda data, split, seed: types.SimpleNamespace(
        next_batch=lambda: next(batches)))
    cfg = types.SimpleNamespace(eval_sequences=8)
    read = list(embeddings.held_out_batches(cfg, None, 0))
    assert [int(b.weights.any(1).sum()) for b in read] == [2, 4, 4]


def test_plasticity_fall_leaves_out_the_bin_past_the_sequence():
    """log bins of T end with [T, 2T), which holds position T alone: one token a row, not a loss
    to compare (it made a first report's 'fall with reading' -2.1 nats from one position)."""
    from plasticlm.experiments.plasticity import fall

    measure = {"bins": [[1, 2], [2, 4], [4, 8], [8, 16]], "loss": [None, 5.0, 4.0, 1.0], "text_starts": [1]}
    assert fall(measure, 8) == -1.0
    assert fall(measure, 15) == -4.0  # a sequence of 15 holds the last bin whole


def test_embeddings_report_leaves_out_the_bin_past_the_sequence():
    """Sequences of 8 end with the bin [8, 16), which holds position 8 alone: the table shows only
    the bins that lie whole inside the sequence."""
    from plasticlm.experiments.embeddings import Config, report

    cfg = Config.quick()
    cfg.seq_len = 8
    measure = {"bins": [[1, 2], [2, 4], [4, 8], [8, 16]], "loss": [None, 5.0, 4.0, 0.25], "mean": 4.5}
    record = {"params": {"embeddings": "parameter", "seed": 0}, "n_params": 10, "train": {"valid_loss": 4.0},
              "shuffled": measure, "plain": measure}
    text = report(cfg, [record], None)
    assert "| 1-1 | 2-3 | 4-7 |" in text and "8-15" not in text
    assert "| parameter | - | 5.000 | 4.000 |" in text and "0.250" not in text


def test_plasticity_arm_rebuilds_a_missing_base_where_it_looks_for_it(tmp_path):
    """An arm whose base is gone (a cleared work folder) trains it again into the shared folder."""
    from plasticlm.experiments import plasticity
    from plasticlm.experiments.runner import Run

    cfg = make_config("plasticity", True)
    work = tmp_path / "work" / "plain_seed0"
    record = plasticity.execute(cfg, Run("plain/seed0", {"arm": "plain", "seed": 0}), "cpu", work)
    assert (plasticity.base_dir(work, 0) / "manifest.json").exists() and record["train"]["steps"] == cfg.stage_steps


def test_bad_names_and_settings_are_one_clear_line(capsys):
    assert main(["experiment", "nosuch", "--quick"]) == 2
    assert "unknown experiment 'nosuch'; known: mqar" in capsys.readouterr().err
    assert main(["experiment", "mqar", "--quick", "protocol.max_stepz=3"]) == 2
    assert "unknown config key 'mqar.protocol.max_stepz'" in capsys.readouterr().err
    assert main(["experiment", "mqar", "--quick", "models=[lstm]"]) == 2
    assert "unknown models or ablations ['lstm']" in capsys.readouterr().err
    assert main(["experiment", "--list"]) == 0
    assert "mqar: Does plasticlm's memory learn" in capsys.readouterr().out


def test_a_run_another_process_holds_is_refused_by_name(tmp_path):
    """A worker left running by a launcher killed outright holds its run's lock: a second launch
    refuses that run instead of resuming the folder under it."""
    from plasticlm.files import locked

    out = tmp_path / "e"
    first = experiment_module("mqar").plan(make_config("mqar", True))[0]
    with locked(out / "work" / (first.id.replace("/", "_") + ".lock")):
        with pytest.raises(RuntimeError, match=f"run {first.id} is being run by another process"):
            run_experiment("mqar", quick=True, out=out, progress=False)
    run_experiment("mqar", quick=True, out=out, progress=False)  # free again: it runs
    assert json.loads((out / "results.json").read_text())["planned_runs"] > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_end_when_the_launcher_is_killed_outright(tmp_path):
    import os
    import signal
    import subprocess
    import time

    # The worker runs the initializer the runner gives its pool, and is busy when the launcher
    # dies (an idle pool worker leaves by itself once its task queue closes; a busy one did not).
    launcher = ("import multiprocessing, os, sys, time\n"
                "from plasticlm.experiments.runner import _die_with_parent\n"
                "if __name__ == '__main__':\n"
                "    init = (_die_with_parent, (os.getpid(),)) if sys.argv[1] == 'on' else (None, ())\n"
                "    pool = multiprocessing.get_context('spawn').Pool(1, *init)\n"
                "    pid = pool.apply(os.getpid)\n"
                "    pool.apply_async(time.sleep, (30,))\n"
                "    time.sleep(0.5)\n"
                "    print(pid, flush=True)\n"
                "    time.sleep(60)\n")
    script = tmp_path / "launch.py"
    script.write_text(launcher)
    def outlives_its_launcher(initializer: str) -> bool:
        proc = subprocess.Popen([sys.executable, str(script), initializer], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        worker = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(30):
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                return False
            time.sleep(0.1)
        os.kill(worker, signal.SIGKILL)
        return True

    assert outlives_its_launcher("off")  # the failure this guards against
    assert not outlives_its_launcher("on")


TOY_STOPPED_BY_SIGTERM = """
import os, signal, time
from dataclasses import dataclass, field
from pathlib import Path
from plasticlm.experiments.runner import Run
from plasticlm.trainer.loop import Stopped

QUESTION = "toy"

@dataclass
class Config:
    flags: str = ""
    seeds: list = field(default_factory=lambda: [0, 1])

def plan(cfg):
    return [Run(f"run{s}", {"seed": s}) for s in cfg.seeds]

def execute(cfg, run, device, work):
    asked = []
    signal.signal(signal.SIGTERM, lambda *a: asked.append(1))  # the trainer's contract: a SIGTERM
    (Path(cfg.flags) / f"{run.id}.pid").write_text(str(os.getpid()))  # saves a checkpoint, then
    while not asked:                                                    # raises Stopped
        time.sleep(0.05)
    (Path(cfg.flags) / f"{run.id}.saved").write_text("")
    raise Stopped(1, Path(cfg.flags))

def report(cfg, records, out):
    return ""

def headline(record):
    return ""
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_a_sigterm_to_the_launcher_ends_its_busy_workers_after_their_checkpoints(tmp_path):
    """Pool.terminate() SIGTERMs the workers and waits for them to end; the trainer takes that
    signal to save a checkpoint and raise Stopped, after which the worker must end too (it used
    to go back to waiting for tasks, and the launcher waited on it for ever)."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    (tmp_path / "toy_stop.py").write_text(TOY_STOPPED_BY_SIGTERM)
    script = tmp_path / "launch.py"
    script.write_text("import sys\n"
                      f"sys.path.insert(0, {str(tmp_path)!r})\n"
                      "from plasticlm.experiments import EXPERIMENTS\n"
                      "EXPERIMENTS['toy_stop'] = 'toy_stop'  # at the top: spawned workers run it too\n"
                      "if __name__ == '__main__':\n"
                      "    from plasticlm.experiments.runner import run_experiment\n"
                      "    run_experiment('toy_stop', out=sys.argv[1], jobs=2, progress=False,\n"
                      "                   overrides=[f'flags={sys.argv[2]}'])\n")
    flags = tmp_path / "flags"
    flags.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(flags)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = [flags / "run0.pid", flags / "run1.pid"]
    for _ in range(600):
        if all(p.exists() and p.read_text() for p in pids):
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the toy experiment's two runs did not start within 60 s")
    workers = [int(p.read_text()) for p in pids]
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in [proc.pid, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail("the launcher did not end within 30 s of its SIGTERM")
    assert (flags / "run0.saved").exists() and (flags / "run1.saved").exists()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_reading_repeat_option_reaches_the_training_stream_only(tmp_path, monkeypatch):
    """E3's induction positive control: the experiment's training stream writes the strings read
    twice, and the report says so (that validation stays plain is the stream's own test)."""
    from plasticlm.trainer import stream_kinds

    calls = []
    write = stream_kinds.ByteStream._write_repeats
    monkeypatch.setattr(stream_kinds.ByteStream, "_write_repeats",
                        lambda self, seq: calls.append(self.repeat.fraction) or write(self, seq))
    out = tmp_path / "reading"
    run_experiment("reading", quick=True, out=out, progress=False, overrides=['repeat={"fraction": 1.0}'])
    assert calls and set(calls) == {1.0}
    assert "100% of the training rows carry a random string written twice" in (out / "results.md").read_text()


def test_induction_scores_each_copy_of_the_string_apart():
    """A model that copies (it predicts the token L back on the second copy) reads ~0 there and
    ln V on the first; one that does not copy reads the same on both. An off-by-one in the
    measure would show as a copier scoring badly on its second copy."""
    import math

    import torch

    from plasticlm.experiments.reading import induction

    V = 272

    class Copier:
        def __init__(self, L, copies):
            self.L, self.copies = L, copies

        def init_state(self, n):
            return None

        def score(self, x, state):
            N, T = x.shape
            logits = torch.zeros(N, T, V)
            if self.copies:
                for p in range(self.L, T):  # predicting x[p + 1] = x[p + 1 - L], already read
                    logits[torch.arange(N), p, x[:, p + 1 - self.L]] = 30.0
            return torch.log_softmax(logits, -1), state

    for L in (4, 16):
        copied = induction(Copier(L, True), [L], samples=3, seed=0)[str(L)]
        assert copied["first"] == pytest.approx(math.log(V), rel=1e-3) and copied["second"] < 1e-6
        flat = induction(Copier(L, False), [L], samples=3, seed=0)[str(L)]
        assert flat["first"] == pytest.approx(flat["second"])
