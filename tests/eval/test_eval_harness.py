"""The lm-evaluation-harness adapter: request handling with fake requests, then the real harness."""
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import UnigramLM

from plasticlm.eval import harness


class Req:
    def __init__(self, *args):
        self.args = args


def manual_ll(lm, tok, context: str, continuation: str):
    # As lm-eval's hf model with a tokenizer that adds no [BOS]: [BOS] only stands in for an empty context.
    ids = ([] if context else [tok.token_id("[BOS]")]) + list(tok.encode(context + continuation))
    n = len(tok.encode(continuation))
    logp, _ = lm.score(torch.tensor([ids[:-1]]), lm.init_state(1))
    lp = logp[0, -n:].gather(-1, torch.tensor(ids[-n:]).unsqueeze(-1)).squeeze(-1)
    greedy = bool((logp[0, -n:].argmax(-1) == torch.tensor(ids[-n:])).all())
    return float(lp.sum()), greedy


@pytest.mark.parametrize("name", ["bigram", "plasticlm"])
def test_loglikelihood_requests(name, tok, bigram, plastic):
    lm = {"bigram": bigram, "plasticlm": plastic}[name]
    reqs = [Req("The cat sat on the", " mat"), Req("", "hello"), Req("abc", ""), Req("The cat sat on the ", "mat")]
    got = harness.loglikelihood(lm, tok, reqs)
    for r, (ll, greedy) in zip(reqs[:2], got):
        want_ll, want_greedy = manual_ll(lm, tok, *r.args)
        assert ll == pytest.approx(want_ll, rel=1e-5) and greedy == want_greedy
    assert got[2] == (0.0, True)
    assert got[3] == got[0]  # a trailing space of the context is scored with the continuation, as the harness does


def test_loglikelihood_greedy_flag(tok):
    lm = UnigramLM({97: 0.5, 98: 0.25})
    (ll_a, g_a), (ll_b, g_b) = harness.loglikelihood(lm, tok, [Req("x", "aa"), Req("x", "ab")])
    assert g_a and not g_b
    assert ll_a == pytest.approx(2 * math.log(0.5)) and ll_b == pytest.approx(math.log(0.5) + math.log(0.25))


def test_rolling_loglikelihood_streams_the_whole_text(tok, bigram):
    text = "A document longer than one piece is streamed through the state once. " * 40
    (ll,), = [harness.loglikelihood_rolling(bigram, tok, [Req(text)])]
    want, _ = manual_ll(bigram, tok, "", text)
    assert ll == pytest.approx(want, rel=1e-6)
    assert harness.loglikelihood_rolling(bigram, tok, [Req("")]) == [0.0]


def test_generate_until_cuts_at_the_first_stop_string(tok):
    lm = UnigramLM({97: 0.5})  # greedy: 'a' forever
    out = harness.generate_until(lm, tok, [Req("q", {"until": ["aaa"], "max_gen_toks": 10}),
                                           Req("q", {"until": "\n", "max_gen_toks": 4}),
                                           Req("q", {"max_gen_toks": 2})])
    assert out == ["", "aaaa", "aa"]


def test_real_harness_drives_plasticlm_and_agrees_with_the_perplexity_suite(tok, plastic, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from plasticlm.eval import Context
    from plasticlm.eval import perplexity as ppl
    from plasticlm.eval.registry import make_config

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "The cat sat on the mat."}\n{"text": "A second  document,\\nwith two lines."}\n')
    (tmp_path / "task.yaml").write_text(
        "task: plasticlm_local_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {docs}\ntest_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
        "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n")
    h = harness.harness_lm(plastic, tokenizer=tok)
    assert isinstance(h, lm_eval.api.model.LM)
    out = lm_eval.simple_evaluate(model=h, tasks=["plasticlm_local_ppl"], task_manager=TaskManager(include_path=str(tmp_path)))
    theirs = out["results"]["plasticlm_local_ppl"]
    ours = ppl.run(Context(lm=plastic, tokenizer=tok, out_dir=tmp_path, progress=False),
                   make_config("perplexity", overrides={"perplexity.source": str(docs)}))
    for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[m] == pytest.approx(theirs[f"{m},none"], rel=1e-6), m


def test_missing_harness_gives_a_clear_error(monkeypatch, tok, bigram):
    import builtins

    real = builtins.__import__

    def no_lm_eval(name, *a, **k):
        if name.startswith("lm_eval"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    monkeypatch.setattr(harness, "_CLASS", None)
    with pytest.raises(ImportError, match=r"pip install 'plasticlm\[lmeval\]'"):
        harness.harness_lm(bigram, tokenizer=tok)


def test_harness_hf_model_on_the_exported_folder_equals_plasticlms_adapter(tok, plastic, checkpoint, tmp_path,
                                                                          monkeypatch):
    """One local task of each kind, run by lm-eval with plasticlm's adapter and with its own `hf`
    model on the export-hf folder: the same numbers, and the rolling ones the perplexity suite's."""
    lm_eval = pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    import plasticlm.hf
    from lm_eval.tasks import TaskManager

    from plasticlm.eval import Context
    from plasticlm.eval import perplexity as ppl
    from plasticlm.eval.registry import make_config

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = plasticlm.hf.export_hf(checkpoint, tmp_path / "hf")
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "The cat sat on the mat.", "context": "The cat sat on the", "continuation": " mat"}\n'
                    '{"text": "A second  document,\\nwith two lines.", "context": "", "continuation": "A second"}\n'
                    '{"text": "ünïcode", "context": "Trailing space ", "continuation": "moves"}\n')
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {docs}\ntest_split: test\n"
    (tmp_path / "ll.yaml").write_text(
        f"task: plasticlm_local_ll\n{common}output_type: loglikelihood\ndoc_to_text: \"{{{{context}}}}\"\n"
        "doc_to_target: \"{{continuation}}\"\ntarget_delimiter: \"\"\nmetric_list:\n  - metric: perplexity\n"
        "  - metric: acc\n")
    (tmp_path / "ppl.yaml").write_text(
        f"task: plasticlm_local_rolling\n{common}output_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
        "doc_to_target: \"{{text}}\"\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n")
    tasks = ["plasticlm_local_ll", "plasticlm_local_rolling"]
    runs = {}
    for name, model, args in [("plasticlm", harness.harness_lm(plastic, tokenizer=tok), None),
                              ("hf", "hf", f"pretrained={folder},device=cpu,batch_size=1")]:
        runs[name] = lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, log_samples=True,
                                             task_manager=TaskManager(include_path=str(tmp_path)))
    ours, theirs = runs["plasticlm"], runs["hf"]
    for task in tasks:
        # Per request: the same tokens are scored; the sums differ at most by float32 rounding (one
        # forward over the whole sequence there, context then continuation with the state here).
        a = [s["resps"] for s in sorted(ours["samples"][task], key=lambda s: s["doc_id"])]
        b = [s["resps"] for s in sorted(theirs["samples"][task], key=lambda s: s["doc_id"])]
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            x, y = x[0][0], y[0][0]
            if isinstance(x, (list, tuple)):
                assert x[1] == y[1]  # is_greedy
                x, y = x[0], y[0]
            assert x == pytest.approx(y, rel=1e-5, abs=1e-5)
        for metric, value in ours["results"][task].items():
            if "stderr" not in metric and isinstance(value, float):
                assert value == pytest.approx(theirs["results"][task][metric], rel=1e-5), (task, metric)
    # The README's command line, in a process that never imported plasticlm: the same number, bit for bit.
    cli = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={folder},trust_remote_code=True", "--device", "cpu", "--tasks", "plasticlm_local_rolling",
           "--include_path", str(tmp_path), "--output_path", str(tmp_path / "cli")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = (tmp_path / "cli").rglob("results_*.json")
    got = json.loads(result.read_text())["results"]["plasticlm_local_rolling"]["bits_per_byte,none"]
    assert got == theirs["results"]["plasticlm_local_rolling"]["bits_per_byte,none"]
    suite = ppl.run(Context(lm=plastic, tokenizer=tok, out_dir=tmp_path, progress=False),
                    make_config("perplexity", overrides={"perplexity.source": str(docs)}))
    for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        # exp(-LL / words) of an untrained model is ~1e12: a float32 rounding of LL moves it by ~1e-6.
        assert suite[m] == pytest.approx(theirs["results"]["plasticlm_local_rolling"][f"{m},none"], rel=1e-5), m
