"""Every suite runs end to end, with the same code, on plasticlm and on an unrelated LM."""
import json

import pytest
import torch
from conftest import UnigramLM, untrained_plastic

from plasticlm.eval import Context, evaluate
from plasticlm.eval.adapt import DynamicEval, finetune, restored, trainable
from plasticlm.eval.registry import SUITES, make_config

TINY = ["probes.held_out=2", "probes.max_dialogues=2", "probes.max_occurrences=2", "probes.pre_sentences=2",
        "qa.max_questions=2", "qa.max_answer_tokens=4", "bleu.max_sentences=2", "bleu.max_new_tokens=6",
        "oneshot.tokens_read=256", "oneshot.eval_tokens=64", "oneshot.first_checkpoint=128",
        "listops.test_examples=8", "listops.steps=2", "listops.batch_size=4", "mqar.test_examples=4",
        "mqar.max_steps=2", "mqar.batch_size=4", "perplexity.max_docs=3", "perplexity.max_doc_tokens=100"]


@pytest.mark.parametrize("name", ["bigram", "plasticlm"])
def test_every_suite_runs_on_both_lms(name, tok, bigram, plastic, tmp_path):
    lm = {"bigram": bigram, "plasticlm": plastic}[name]
    before = {k: v.clone() for k, v in trainable(lm).module.state_dict().items()}
    untrained = untrained_plastic if name == "plasticlm" else (lambda: UnigramLM({}))
    ctx = Context(lm=lm, tokenizer=tok, seed=0, out_dir=tmp_path, progress=False, untrained=untrained)
    # mqar trains a model of the LM's architecture on the task: the bigram cache LM has none.
    suites = [s for s in SUITES if s != "mqar" or name == "plasticlm"]
    doc = evaluate(ctx, suites, "smoke", TINY, tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["suites"]) == set(suites)
    for suite, entry in saved["suites"].items():
        assert entry["config"] and entry["results"]["plots"], suite
        for png in entry["results"]["plots"]:
            assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    r = doc["suites"]
    assert r["perplexity"]["results"]["bits_per_byte"] > 0
    assert set(r["qa"]["results"]["orders"]) == {"read_first", "question_first", "read_twice", "no_context"}
    assert set(r["probes"]["results"]["template"]["curves"]) == {"model/stream", "model/shuffled",
                                                                 "untrained/stream", "untrained/shuffled"}
    assert set(r["oneshot"]["results"]["curves"]) == {"read", "dynamic"}
    if name == "plasticlm":
        assert r["mqar"]["results"]["state_size"] > 0 and set(r["mqar"]["results"]["by_lr"]) == {"0.003"}
        assert set(r["mqar"]["results"]["by_query"]) == set(r["mqar"]["results"]["accuracy"])
    else:
        with pytest.raises(ValueError, match="mqar trains the model on the task with plasticlm's trainer"):
            evaluate(ctx, ["mqar"], "smoke", TINY, tmp_path / "m.json")
    # Fine-tuning and dynamic evaluation left the weights as they were.
    for k, v in trainable(lm).module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reading_changes_predictions_of_the_cache_lm(tok, bigram, tmp_path):
    """The probes see an effect where there is one: reading the dialogues raises the cache LM's
    probability of the template's reply. A unigram cache cannot tell the order of what it read, so
    after the whole shuffled control (the same pieces) it scores exactly as after the stream."""
    ctx = Context(lm=bigram, tokenizer=tok, out_dir=tmp_path, progress=False)
    cfg = make_config("probes", overrides={"probes.probes": ["template"], "probes.max_dialogues": 32,
                                           "probes.held_out": 4})
    from plasticlm.eval import probes

    res = probes.run(ctx, cfg)["template"]["curves"]
    lp = {k: v[32]["logp_per_token"] for k, v in res.items()}
    assert lp["model/stream"] > res["model/stream"][0]["logp_per_token"] + 0.1
    assert lp["model/stream"] == pytest.approx(lp["model/shuffled"], abs=1e-9)
    assert res["model/stream"][8]["logp_per_token"] != pytest.approx(res["model/shuffled"][8]["logp_per_token"], abs=1e-6)


@pytest.mark.parametrize("name", ["bigram", "plasticlm"])
def test_dynamic_evaluation(name, tok, bigram, plastic):
    lm = {"bigram": bigram, "plasticlm": plastic}[name]
    ids = torch.tensor([list(b"dynamic evaluation adapts the weights to the text it reads. " * 2)])
    x, y = ids[:, :-1], ids[:, 1:]
    module = trainable(lm).module
    w0 = [p.detach().clone() for p in module.parameters()]
    # lr 0, decay 0: the same scores as reading with the LM's own score.
    with restored(module):
        nll0, _ = DynamicEval(lm, 0.0, 0.0, segment=16).read(x, y, lm.init_state(1))
    ref = -lm.score(x, lm.init_state(1))[0].gather(-1, y.unsqueeze(-1)).squeeze(-1).double()
    torch.testing.assert_close(nll0, ref, rtol=1e-5, atol=1e-5)
    with restored(module):
        nll1, _ = DynamicEval(lm, {"bigram": 0.5, "plasticlm": 0.1}[name], 0.0, segment=16).read(x, y, lm.init_state(1))
        assert any(not torch.equal(p, q) for p, q in zip(module.parameters(), w0))
        # The first segment is scored before any update; later ones after: the repeat is learned.
        torch.testing.assert_close(nll1[:, :16], nll0[:, :16], rtol=1e-5, atol=1e-5)
        assert nll1[:, 60:].mean() < nll0[:, 60:].mean()
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), w0))


def test_dynamic_decay_pulls_back_to_the_original_weights(bigram):
    module = trainable(bigram).module
    w0 = module.logits.detach().clone()
    x = torch.tensor([list(b"abababababababab")])
    with restored(module):
        dyn = DynamicEval(bigram, 0.0, 0.5, segment=4)
        with torch.no_grad():
            module.logits.add_(1.0)  # as if earlier steps had moved the weights
        dyn.read(x[:, :-1], x[:, 1:], bigram.init_state(1))  # 4 segments, no gradient step, decay 0.5 each
        torch.testing.assert_close(module.logits, w0 + 0.5 ** 4)


def test_finetune_learns_and_needs_a_module(bigram):
    x = torch.tensor([list(b"xyxyxyxyxy")])
    y = torch.full_like(x, -100)
    y[0, ::2] = ord("q")  # after every x comes q, which the bigram never saw
    with restored(trainable(bigram).module):
        losses = finetune(bigram, lambda s: (x, y), steps=20, lr=0.1)
    assert losses[-1] < losses[0] - 1
    with pytest.raises(TypeError, match="unigram.*no torch module"):
        trainable(UnigramLM({}))


class MirrorBytes:
    """A new language for the tests: byte b becomes 255 - b; control tokens stay. Its ``rosetta``
    returns a ready header (a token list), the other form the oneshot suite accepts."""

    def __init__(self, sep: int):
        self.sep = sep

    def apply(self, ids):
        return [255 - i if i < 256 else i for i in ids]

    def invert(self, ids):
        return self.apply(ids)

    def rosetta(self, n=2000, top=10000):
        out = []
        for b in list(b"etaoinshrdlu ")[:n]:
            out += [b, self.sep, 255 - b, self.sep]
        return out


def test_oneshot_on_a_language_given_by_the_caller(tok, bigram, tmp_path):
    from plasticlm.eval import oneshot

    lang = MirrorBytes(tok.token_id("[SEP]"))
    assert lang.invert(lang.apply(list(range(272)))) == list(range(272))
    ctx = Context(lm=bigram, tokenizer=tok, out_dir=tmp_path, progress=False, extras={"language": lang})
    cfg = make_config("oneshot", "smoke", ["oneshot.tokens_read=2048", "oneshot.eval_tokens=256"])
    res = oneshot.run(ctx, cfg)
    assert res["language"] == "MirrorBytes" and res["header_tokens"] == 4 * 13
    read = res["curves"]["read"]
    assert list(read) == [0, 256, 512, 1024, 2048]
    # The cache LM learns the new language's unigram statistics by reading: bits per byte fall.
    assert read[2048]["bits_per_byte"] < read[0]["bits_per_byte"] - 0.1
    assert res["original_language"]["bits_per_byte"] < res["no_reading"]["bits_per_byte"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_suite_runs_on_cuda(tok, tmp_path):
    from conftest import tiny_config

    from plasticlm import PlasticLM
    from plasticlm.lm import PlasticLMAsLM

    torch.manual_seed(0)
    lm = PlasticLMAsLM(PlasticLM(tiny_config()).cuda().eval())
    ctx = Context(lm=lm, tokenizer=tok, out_dir=tmp_path, progress=False)
    doc = evaluate(ctx, list(SUITES), "smoke", TINY, tmp_path / "r.json")
    assert doc["device"].startswith("cuda") and set(doc["suites"]) == set(SUITES)
    assert doc["suites"]["perplexity"]["results"]["bits_per_byte"] > 0


def test_mqar_accuracy_against_state_size_across_runs(tmp_path):
    from plasticlm.eval.mqar import plot_vs_state_size

    files = []
    for i, (size, acc) in enumerate([(1024, 0.2), (65536, 0.9)]):
        f = tmp_path / f"r{i}.json"
        f.write_text(json.dumps({"suites": {"mqar": {"results": {"state_size": size, "accuracy": {"4": acc, "8": acc / 2}}}}}))
        files.append(str(f))
    name = plot_vs_state_size(files, str(tmp_path / "mqar_vs_state.png"))
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text(json.dumps({"suites": {}}))
    with pytest.raises(ValueError, match="bad.json: holds no mqar"):
        plot_vs_state_size([str(tmp_path / "bad.json")], str(tmp_path / "x.png"))


def test_same_seed_same_results_and_resume_reuses_finished_suites(tok, bigram, tmp_path, monkeypatch):
    from plasticlm.eval import listops, results

    ctx = Context(lm=bigram, tokenizer=tok, seed=7, out_dir=tmp_path, progress=False)
    names = ["bleu", "listops"]
    a = evaluate(ctx, names, "smoke", TINY, tmp_path / "a.json")
    b = evaluate(ctx, names, "smoke", TINY, tmp_path / "b.json")
    for n in names:  # data generation, training batches and baselines all follow the seed
        assert a["suites"][n]["results"] == b["suites"][n]["results"], n
    monkeypatch.setattr(results, "git_commit", lambda: "abc123")  # a clean tree
    evaluate(ctx, names, "smoke", TINY, tmp_path / "c.json")

    def boom(*a, **k):
        raise AssertionError("a finished suite ran again")

    monkeypatch.setattr(listops, "run", boom)
    c = evaluate(ctx, names, "smoke", TINY, tmp_path / "c.json", resume=True)
    assert all(c["suites"][n].get("reused") for n in names)
    with pytest.raises(AssertionError, match="ran again"):  # a changed setting runs the suite again
        evaluate(ctx, names, "smoke", TINY + ["listops.steps=3"], tmp_path / "c.json", resume=True)


def test_finetune_micro_batches_take_the_same_step(bigram):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 12), generator=g)
    y = torch.where(torch.rand(6, 12, generator=g) < 0.3, torch.randint(0, 256, (6, 12), generator=g), -100)
    module = trainable(bigram).module
    after = []
    for micro in (0, 1, 4):
        with restored(module):
            loss = finetune(bigram, lambda s: (x, y), steps=2, lr=0.01, micro_batch=micro)
            after.append((loss, module.logits.detach().clone()))
    for loss, w in after[1:]:
        assert loss == pytest.approx(after[0][0], rel=1e-5)
        torch.testing.assert_close(w, after[0][1], rtol=1e-5, atol=1e-6)
