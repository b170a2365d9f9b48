import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasticlm.data.shuffled import (
    VocabShuffle,
    VocabStats,
    attack_recovery,
    frequency_attack,
)
from plasticlm.tokenizer import SPECIAL


@pytest.fixture(scope="module")
def stats(bpe, token_docs):
    return VocabStats.from_documents(bpe, token_docs(0, 2000))


@pytest.fixture(scope="module")
def text(token_docs):
    return np.concatenate(token_docs(2000, 3000))


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), fission=st.sampled_from([0.0, 0.2, 0.5]), fusion=st.sampled_from([0.0, 0.2, 0.5]),
       data=st.data())
def test_invert_is_exact_over_many_seeds(stats, text, seed, fission, fusion, data):
    lang = VocabShuffle(stats, seed, fission=fission, fusion=fusion, pool=300)
    # Real text, random ids, and runs of fused pairs' members (overlapping candidates).
    start = data.draw(st.integers(0, len(text) - 2000))
    x = text[start:start + data.draw(st.integers(0, 2000))]
    assert np.array_equal(lang.invert(lang.apply(x)), x)
    rnd = np.asarray(data.draw(st.lists(st.integers(0, stats.vocab_size - 1), max_size=300)), dtype=np.int64)
    assert np.array_equal(lang.invert(lang.apply(rnd)), rnd)
    if lang.n_fused:
        members = np.unique(lang.fused_pair[lang.is_fused])
        runs = np.asarray(data.draw(st.lists(st.sampled_from(members.tolist()), max_size=200)), dtype=np.int64)
        assert np.array_equal(lang.invert(lang.apply(runs)), runs)


def test_language_structure(stats, text):
    lang = VocabShuffle(stats, 7, fission=0.3, fusion=0.3, pool=500)
    assert lang.n_split == 150 and lang.n_fused == 150
    # Fusion alone splits rare tokens to make room for the fused pairs' ids.
    fusion_only = VocabShuffle(stats, 7, fission=0.0, fusion=0.2, pool=500)
    assert fusion_only.n_split == 0 and fusion_only.n_fused == 100 and fusion_only.n_room > 100
    assert np.array_equal(fusion_only.invert(fusion_only.apply(text)), text)
    cats = stats.categories
    specials = np.flatnonzero(cats == SPECIAL)
    assert np.array_equal(lang.single[specials], specials)  # specials untouched
    one = lang.single >= 0
    assert np.array_equal(cats[lang.single[one]], cats[one])  # permutation within categories
    moved = (lang.single[one] != np.flatnonzero(one)).mean()
    assert moved > 0.9
    y, src, one_to_one = lang.apply(text, return_source=True)
    assert len(y) != len(text) and not one_to_one.all()  # fission and fusion changed the stream
    assert np.array_equal(lang.apply(text), VocabShuffle(stats, 7, fission=0.3, fusion=0.3, pool=500).apply(text))
    assert not np.array_equal(lang.apply(text[:500]), VocabShuffle(stats, 8, fission=0.3, fusion=0.3,
                                                                    pool=500).apply(text[:500]))


def test_rosetta_header(stats):
    lang = VocabShuffle(stats, 3, fission=0.3, fusion=0.3, pool=500)
    sp = stats.special_ids
    h = lang.rosetta(n=200, top=400)
    assert h[0] == sp["[CTRL0]"] and h[-1] == sp["[CTRL2]"]
    entries = np.split(h[1:-1], np.flatnonzero(h[1:-1] == sp["[CTRL1]"]))
    entries = [e[e != sp["[CTRL1]"]] for e in entries]
    assert len(entries) == 200
    top = set(np.argsort(-stats.counts, kind="stable")[: 400 + 16].tolist())
    words = []
    for e in entries:
        t, sep, *code = e.tolist()
        assert sep == sp["[SEP]"] and t in top and code == lang.apply([t]).tolist()
        words.append(t)
    assert len(set(words)) == 200 and any(len(lang.code(t)) == 2 for t in words)
    assert np.array_equal(h, VocabShuffle(stats, 3, fission=0.3, fusion=0.3, pool=500).rosetta(200, 400))
    with pytest.raises(ValueError, match="cannot draw n=500"):
        lang.rosetta(500, 400)
    assert len(lang.rosetta(0)) == 0


def test_invalid_codes_are_named(stats):
    lang = VocabShuffle(stats, 1, fission=0.3, fusion=0.0, pool=500)
    p = int(np.flatnonzero(lang.is_prefix)[0])
    with pytest.raises(ValueError, match="ends inside a two-id code"):
        lang.invert([5, p])
    unused = np.flatnonzero((lang.inverse < 0) & ~lang.is_prefix & ~lang.is_fused)
    if len(unused):
        with pytest.raises(ValueError, match="position 1: id"):
            lang.invert([5, int(unused[0])])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\)"):
        lang.apply([1000])


def test_frequency_attack_weaker_with_fission_and_fusion(stats, text):
    """The attack reads a permutation-only language far better than one with fission and fusion."""
    ref = stats.counts  # the unshuffled corpus the attacker knows
    rec = {}
    for name, (fis, fus) in {"perm": (0, 0), "fis+fus": (0.2, 0.2)}.items():
        vals = []
        for seed in range(3):
            lang = VocabShuffle(stats, seed, fission=fis, fusion=fus, pool=500)
            y = lang.apply(text)
            vals.append(attack_recovery(lang, text, frequency_attack(y, ref, stats.categories)))
        rec[name] = np.mean(vals)
    # An identity language is read perfectly by the same code (the measurement can tell).
    ident = VocabShuffle(stats, 0, fission=0, fusion=0, pool=0)
    ident.single = np.arange(stats.vocab_size)
    assert attack_recovery(ident, text, np.arange(stats.vocab_size)) == 1.0
    assert rec["perm"] > 0.15
    assert rec["fis+fus"] < rec["perm"] / 2
