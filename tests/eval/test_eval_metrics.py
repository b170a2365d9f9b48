"""Metrics against hand-computed values and against the reference implementations' own calls."""
import math

import pytest
from conftest import UnigramLM

from plasticlm.eval import Context, qa
from plasticlm.eval import perplexity as ppl
from plasticlm.eval.bleu import sacre
from plasticlm.eval.registry import make_config

LN2 = math.log(2)


def test_perplexity_by_hand(tok, tmp_path):
    # p(a) = 1/2, p(b) = 1/4, p(' ') = 1/8 at every position, whatever came before.
    lm = UnigramLM({97: 0.5, 98: 0.25, 32: 0.125})
    src = tmp_path / "docs.txt"
    src.write_text("ab\n\nb a\n")
    cfg = make_config("perplexity", overrides={"perplexity.source": str(src)})
    res = ppl.run(Context(lm=lm, tokenizer=tok, out_dir=tmp_path, progress=False), cfg)
    # LL("ab") = ln 1/2 + ln 1/4 = -3 ln 2; LL("b a") = -(2 + 3 + 1) ln 2; 5 tokens, 5 bytes, 1 + 2 words.
    assert (res["n_tokens"], res["n_bytes"], res["n_words"], res["n_docs"]) == (5, 5, 3, 2)
    assert res["bits_per_byte"] == pytest.approx(9 / 5, rel=1e-6)
    assert res["byte_perplexity"] == pytest.approx(2 ** 1.8, rel=1e-6)
    assert res["token_perplexity"] == pytest.approx(2 ** 1.8, rel=1e-6)
    assert res["word_perplexity"] == pytest.approx(8.0, rel=1e-6)
    assert res["nll_per_token"] == pytest.approx(9 * LN2 / 5, rel=1e-6)
    assert (tmp_path / res["plots"][0]).stat().st_size > 0


def test_corpus_metrics_equal_lm_eval_aggregations():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    lls, words, nbytes = [-10.0, -32.5, -7.25], [3, 9, 2], [14, 40, 9]
    ours = ppl.corpus_metrics(lls, [5, 20, 4], words, nbytes)
    assert ours["word_perplexity"] == pytest.approx(metrics.weighted_perplexity(list(zip(lls, words))), rel=1e-12)
    assert ours["byte_perplexity"] == pytest.approx(metrics.weighted_perplexity(list(zip(lls, nbytes))), rel=1e-12)
    assert ours["bits_per_byte"] == pytest.approx(metrics.bits_per_byte(list(zip(lls, nbytes))), rel=1e-12)


def test_word_and_byte_counts_follow_lm_eval():
    doc = "Ünïcode  words\nand\ttabs "
    assert ppl.count_words(doc) == 5  # re.split(r"\s+") keeps the empty string after the trailing space
    assert ppl.count_bytes(doc) == 26  # Ü and ï take two bytes each


@pytest.mark.parametrize("name", ["bigram", "plasticlm"])
def test_documents_stream_once_through_the_state(name, tok, bigram, plastic):
    """Cutting a document into pieces (state carried) or padding it in a batch changes no score;
    a reset in the middle would (the cache/state matters), so this shows no window resets."""
    lm = {"bigram": bigram, "plasticlm": plastic}[name]
    docs = [list(b"The state is carried across pieces of one long document. " * 3), list(b"short one"), list(b"mid size doc")]
    whole = ppl.document_nlls(lm, tok, docs, batch_size=1, piece=4096)
    pieces = ppl.document_nlls(lm, tok, docs, batch_size=3, piece=7)
    d_pieces = max(float((a - b).abs().max()) for a, b in zip(whole, pieces))
    # Resetting the state halfway changes the second half's scores: the state really matters.
    half = len(docs[0]) // 2
    reset = ppl.document_nlls(lm, tok, [docs[0][half:]], batch_size=1, piece=4096)[0]
    d_reset = float((reset[1:] - whole[0][half + 1:]).abs().max())
    assert d_pieces < 1e-5
    assert d_reset > 10 * max(d_pieces, 1e-6)


def test_loss_by_position_bins_cover_every_token(tok, bigram, tmp_path):
    cfg = make_config("perplexity", "smoke")
    res = ppl.run(Context(lm=bigram, tokenizer=tok, out_dir=tmp_path, progress=False), cfg)
    bins = res["loss_by_position"]
    assert sum(b["tokens"] for b in bins) == res["n_tokens"]
    assert [b["from"] for b in bins] == [2 ** i for i in range(len(bins))]
    assert bins[-1]["to"] >= cfg.max_doc_tokens > bins[-1]["from"] - 1


# ---- SQuAD v1.1 (official normalisation) -------------------------------------------------------

@pytest.mark.parametrize("raw, norm", [
    ("The Cat", "cat"),                       # lowercase, article dropped
    ("an apple a day", "apple day"),          # a / an
    ("theater", "theater"),                   # articles only as whole words
    ("U.S.A.", "usa"),                        # punctuation removed, not replaced by spaces
    ("  Mara \t Lind\n", "mara lind"),        # whitespace collapsed
    ("rock-'n'-roll!", "rocknroll"),
    ("The the THE", ""),
])
def test_squad_normalisation(raw, norm):
    assert qa.normalize_answer(raw) == norm


def test_squad_em_f1_edge_cases():
    assert qa.exact_match("the Eiffel Tower!", "Eiffel tower") == 1.0
    assert qa.exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred {cat, sat} vs gold {cat, sat, on, mat}: precision 1, recall 1/2 -> F1 2/3
    assert qa.f1("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    assert qa.f1("", "anything") == 0.0
    assert qa.f1("a the an", "the") == 0.0  # both normalise to nothing: no common token
    # bag of tokens: repeated tokens count with multiplicity
    assert qa.f1("red red red", "red") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    # several gold answers: the max over them, then the mean over questions, in percent
    s = qa.squad_scores({"q1": "Tomas", "q2": "1962"}, {"q1": ["Tomas Berg", "Berg"], "q2": ["in 1962", "1962"]})
    assert s["exact_match"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert s["questions"] == 2


def test_squad_sample_file_parses_and_answers_occur_in_context():
    arts = qa.load("sample")
    n = 0
    for a in arts:
        for p in a["paragraphs"]:
            for q in p["qas"]:
                n += 1
                assert all(ans in p["context"] for ans in q["answers"])
    assert n == 8


# ---- BLEU / chrF --------------------------------------------------------------------------------

def test_bleu_equals_sacrebleu_own_call():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["Die Datei wurde geöffnet.", "Das Programm läuft nicht.", "Hallo Welt"]
    refs = ["Die Datei konnte nicht geöffnet werden.", "Das Programm läuft.", "Hallo, Welt!"]
    got = sacre(hyps, refs)
    assert got["bleu"] == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert got["chrf"] == sacrebleu.corpus_chrf(hyps, [refs]).score
    assert got["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert got["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert sacre(refs, refs)["bleu"] == pytest.approx(100.0)
    assert 0 < got["bleu"] < 100


def test_squad_from_the_hub_is_grouped_by_article_and_context(monkeypatch):
    import sys
    import types

    rows = [{"id": "1", "title": "A", "context": "c1", "question": "q1", "answers": {"text": ["x", "y"], "answer_start": [0, 1]}},
            {"id": "2", "title": "A", "context": "c1", "question": "q2", "answers": {"text": ["z"], "answer_start": [0]}},
            {"id": "3", "title": "A", "context": "c2", "question": "q3", "answers": {"text": ["w"], "answer_start": [0]}},
            {"id": "4", "title": "B", "context": "c3", "question": "q4", "answers": {"text": ["v"], "answer_start": [0]}}]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name, split: rows if (name, split) == ("rajpurkar/squad", "validation") else None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    arts = qa.load("hub")
    assert [a["title"] for a in arts] == ["A", "B"]
    assert [[q["id"] for q in p["qas"]] for p in arts[0]["paragraphs"]] == [["1", "2"], ["3"]]
    assert arts[0]["paragraphs"][0]["qas"][0]["answers"] == ["x", "y"]
    assert [len(g) for g in qa.groups(arts, 0)] == [2, 1] and [len(g) for g in qa.groups(arts, 1)] == [1, 1, 1]


def test_generation_stops_at_separator_or_newline(tok):
    from plasticlm.eval.common import generate_until

    sep, nl = tok.token_id("[SEP]"), 10
    for probs, want in (({97: 0.5}, [97] * 5), ({nl: 0.5}, []), ({sep: 0.5}, [])):
        lm = UnigramLM(probs)
        assert generate_until(lm, lm.init_state(1), [1, 2], 5, {sep, nl}) == want


def test_wikitext_detokenizer_matches_lm_eval():
    pre = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")
    from plasticlm.eval.text import wikitext_detokenize

    pages = [" = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) "
             ", commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ playing game "
             "developed by Sega and Media.Vision for the PlayStation Portable . \n = = Gameplay = = \n",
             " It sold 1 @,@ 000 copies at 3 @.@ 5 dollars ; \" quoted text \" and ' single ' , the players ' "
             "scores , [ brackets ] { braces } 20 ° C , N items ! really ? yes . = = = = Deep = = = = \n"]
    for page in pages:
        assert wikitext_detokenize(page) == pre.wikitext_detokenizer({"page": page})
