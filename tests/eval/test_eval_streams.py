"""Every probe and task builder holds what it claims: tags, rule occurrences, labels, held-out text."""
import re
from collections import Counter

import pytest
import torch

from plasticlm.data import recall
from plasticlm.eval import listops, mqar, oneshot, probes
from plasticlm.eval.registry import make_config


@pytest.fixture
def pcfg():
    return make_config("probes", overrides={"probes.max_dialogues": 16, "probes.max_occurrences": 16,
                                            "probes.pre_sentences": 10, "probes.held_out": 6})


def test_template_stream_holds_n_tagged_dialogues_following_the_template(tok, pcfg):
    st = probes.template_stream(tok, pcfg, seed=3)
    user, ai = tok.token_id("[USER]"), tok.token_id("[AI]")
    c = Counter(st.tokens)
    assert c[user] == c[ai] == pcfg.max_dialogues == st.claims["dialogues"]
    assert sorted(st.checkpoints) == [0, 1, 2, 4, 8, 16]
    # After k dialogues exactly k [AI] tags have been read.
    for k, pos in st.checkpoints.items():
        assert st.tokens[:pos].count(ai) == k
    dialogues = re.findall(r"\[USER\] (.*)\n\[AI\] (.*)\n", st.text)
    assert len(dialogues) == pcfg.max_dialogues
    for msg, reply in dialogues:
        assert reply == f"{pcfg.marker} {probes.first_word(msg)}"
    # Held-out messages are never read, and their probes ask for the template's reply.
    for msg, p in zip(st.held_out_text, st.held_out):
        assert msg not in st.text
        assert tok.decode(p.context) == f"[USER] {msg}\n"
        assert tok.decode(p.continuation) == f"[AI] {pcfg.marker} {probes.first_word(msg)}\n"
        (a, b), (c, d) = p.parts["marker"], p.parts["copy"]  # the fixed word and the copy, scored apart
        assert tok.decode(p.continuation[a:b]) == f" {pcfg.marker}" and b == c
        assert tok.decode(p.continuation[c:d]) == f" {probes.first_word(msg)}"
    # The copied word keeps its case: a text model can copy it, no lowercasing to learn first.
    assert probes.first_word("The cat sat.") == "The" and probes.first_word("'Quote,' he said") == "Quote"


def test_shuffled_template_stream_has_the_same_pieces_without_the_template(tok, pcfg):
    st = probes.template_stream(tok, pcfg, seed=3)
    sh = probes.template_stream(tok, pcfg, seed=3, shuffled=True)
    assert Counter(sh.tokens) == Counter(st.tokens)
    assert len(re.findall(r"\[USER\] (.*)\n\[AI\] (.*)\n", sh.text)) < pcfg.max_dialogues // 2
    assert sh.held_out == st.held_out


@pytest.mark.parametrize("placement", ["before", "after"])
def test_drift_stream_introduces_the_rule_mid_stream(tok, pcfg, placement):
    pcfg.placement = placement
    st = probes.drift_stream(tok, pcfg, seed=5)
    trig, mark = pcfg.trigger, pcfg.drift_marker
    pair = rf"\b{mark} {trig}\b" if placement == "before" else rf"\b{trig} {mark}\b"
    start = len(tok.decode(st.tokens[:st.checkpoints[0]])) - len("[BOS]")
    before, after = st.text[:start], st.text[start:]
    assert before and mark not in before
    # After the rule starts, every trigger has the marker on the rule's side, as often as claimed.
    assert len(re.findall(rf"\b{trig}\b", after)) == len(re.findall(pair, after))
    assert len(re.findall(rf"\b{mark}\b", after)) == st.claims["rule_occurrences"] >= pcfg.max_occurrences
    for k, pos in st.checkpoints.items():
        assert len(re.findall(pair, tok.decode(st.tokens[:pos]))) == k
    for sent, p in zip(st.held_out_text, st.held_out):
        assert sent not in st.text
        first, then = (mark, trig) if placement == "before" else (trig, mark)
        assert tok.decode(p.context).endswith(first) and tok.decode(p.continuation) == f" {then}"


def test_shuffled_drift_stream_has_as_many_markers_but_no_rule(tok, pcfg):
    st = probes.drift_stream(tok, pcfg, seed=5)
    sh = probes.drift_stream(tok, pcfg, seed=5, shuffled=True)
    mark, trig = pcfg.drift_marker, pcfg.trigger
    assert sh.text.count(mark) == st.text.count(mark)
    # The same sentences underneath: only where the markers stand differs.
    assert sh.text.replace(f" {mark}", "").replace(f"{mark} ", "") == st.text.replace(f"{mark} ", "")
    assert len(re.findall(rf"\b{mark} {trig}\b", sh.text)) < len(re.findall(rf"\b{mark} {trig}\b", st.text)) / 2


# ---- ListOps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, value", [
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 2 9 [MAX 4 7 ] 0 ]", 0),
    ("[MED 1 5 3 ]", 3),
    ("[MED 1 2 3 4 ]", 2),       # int(median) of 2.5
    ("[SM 7 8 9 ]", 4),          # 24 mod 10
    ("[SM [MAX 9 1 ] [MED 8 2 ] ]", 4),
    ("7", 7),
])
def test_listops_values(expr, value):
    assert listops.evaluate_tree(expr.split()) == value


def test_listops_generator_follows_lra_rules():
    import random

    cfg = make_config("listops", overrides={"listops.max_depth": 4, "listops.max_args": 5,
                                            "listops.min_length": 10, "listops.max_length": 60})
    data = listops.generate(200, cfg, random.Random(0))
    assert len({" ".join(t) for t, _ in data}) == 200  # distinct
    ops = Counter()
    for toks, label in data:
        assert 10 < len(toks) < 60 and 0 <= label <= 9
        depth = max_depth = 0
        for t in toks:
            if t in listops.OPERATORS:
                depth += 1
                max_depth = max(max_depth, depth)
                ops[t] += 1
            elif t == listops.END:
                depth -= 1
            else:
                assert t in list("0123456789")
        assert depth == 0 and 1 <= max_depth <= cfg.max_depth - 1  # root at depth 1, leaves reach max_depth
    assert set(ops) == set(listops.OPERATORS)


def test_listops_rows_put_the_label_after_sep(tok):
    digits = listops.digit_tokens(tok)
    x, y = listops.encode_rows(tok, [(["[SM", "3", "4", "]"], 7), (["5"], 5)], digits)
    sep = tok.token_id("[SEP]")
    for row in range(2):
        (pos,) = (y[row] != -100).nonzero()[0]
        assert x[row, pos] == sep and tok.decode([int(y[row, pos])]) == str([7, 5][row])


# ---- MQAR ---------------------------------------------------------------------------------------

def test_mqar_follows_zoology_definition():
    x, y = recall.mqar(20, seq_len=64, pairs=6, vocab=100, power_a=0.01, seed=0)
    assert x.shape == y.shape == (20, 64)
    for row in range(20):
        keys, vals = x[row, 0:12:2].tolist(), x[row, 1:12:2].tolist()
        assert len(set(keys)) == 6 and all(1 <= k < 50 for k in keys) and all(50 <= v < 100 for v in vals)
        labelled = (y[row] != -100).nonzero().flatten().tolist()
        assert len(labelled) == 6
        for pos in labelled:
            assert pos >= 12
            k = int(x[row, pos])  # the query key sits at the labelled position; its value is the target
            assert int(y[row, pos]) == vals[keys.index(k)]


def test_mqar_distractors_are_found_and_not_keys_noise_has_none():
    """The vectorised distractor mask agrees with its definition read literally, Zoology's noise has
    distractors at a small vocabulary, and 'not_keys' noise keeps the sequence but those fillers."""
    x, y = recall.mqar(400, seq_len=64, pairs=4, vocab=64, power_a=0.01, seed=3)
    mask = recall.distractors(x, y, 4, 64)
    for row in range(len(x)):
        r = x[row].tolist()
        for q in (y[row] != -100).nonzero().flatten().tolist():
            expect = any(r[p] == r[q] and r[p + 1] >= 32 for p in range(8, q))
            assert bool(mask[row, q]) == expect
    assert not mask[y == -100].any() and mask.any()
    xk, yk = recall.mqar(400, seq_len=64, pairs=4, vocab=64, power_a=0.01, seed=3, noise="not_keys")
    assert torch.equal(yk, y) and torch.equal(xk[:, :8], x[:, :8])
    assert not recall.distractors(xk, yk, 4, 64).any()
    same = ~(x[:, :, None] == x[:, None, 0:8:2]).any(-1)  # tokens that are not one of the row's keys are kept
    assert torch.equal(xk[same], x[same])
    for row in range(len(xk)):
        keys = set(xk[row, 0:8:2].tolist())
        queries = set((yk[row] != -100).nonzero().flatten().tolist())
        assert all(int(t) not in keys for i, t in enumerate(xk[row].tolist()[8:], 8) if i not in queries)
    with pytest.raises(ValueError, match="noise must be 'vocab' or 'not_keys'"):
        recall.mqar(2, 64, 4, 64, 0.01, 0, noise="keys")


def test_mqar_test_sets_name_the_pair_each_query_asks_for():
    cfg = mqar.Config(test_examples=50)
    x, y, _, pair = mqar.test_sets(cfg, None, 0)[4]
    scored = y != -100
    assert (pair[scored] >= 0).all() and (pair[~scored] == -1).all()
    keys = x[:, 0:8:2]
    assert torch.equal(keys[scored.nonzero()[:, 0], pair[scored]], x[scored])  # the pair's key is the query


def test_mqar_maps_into_non_control_token_ids(tok):
    ids = mqar.task_ids(tok, 64)
    x, y = recall.to_tokens(*recall.mqar(4, 32, 4, 64, 0.01, 1), ids)
    assert x.max() < 256 and (y[y != -100] >= 32).all()


# ---- One-shot language --------------------------------------------------------------------------

def test_default_language_is_the_shuffled_vocabulary(tok):
    from plasticlm.data.shuffled import VocabShuffle

    lang = oneshot.default_language(tok, 0, "some text to count, and more text to count " * 50, 0.2, 0.2)
    assert isinstance(lang, VocabShuffle)
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 4)
    new = oneshot.ids(lang.apply(ids))
    assert new != ids and oneshot.ids(lang.invert(new)) == ids
    header = oneshot.header_tokens(lang, tok, 5, 10)
    assert header[0] == tok.token_id("[CTRL0]") and header[-1] == tok.token_id("[CTRL2]")
    assert header.count(tok.token_id("[SEP]")) == 5


def test_oneshot_scores_text_never_read():
    read_text, eval_text = oneshot.texts("builtin")
    assert eval_text and eval_text[:200] not in read_text and read_text[-200:] not in eval_text


def test_builtin_held_out_is_the_tiny_recipes_validation_split():
    from plasticlm.data.builtin import builtin_corpus
    from plasticlm.eval.text import HELD_OUT, builtin_held_out
    from plasticlm.trainer.config import load_config

    cfg = load_config("tiny", [])
    assert cfg.data.valid_fraction == HELD_OUT
    data = builtin_corpus().encode("utf-8")
    n_valid = max(cfg.data.seq_len + 1, int(len(data) * cfg.data.valid_fraction))  # as trainer/loop.py cuts
    assert builtin_held_out().encode("utf-8") == data[-n_valid:]
