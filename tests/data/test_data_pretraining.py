import json
from collections import Counter

import numpy as np
import pytest
import torch

from plasticlm.data.linked import LinkedGraph
from plasticlm.data.shuffled import VocabStats
from plasticlm.data.batch import Stream
from plasticlm.data.pretraining import (
    LinkedConfig,
    LinkedStream,
    ShuffledConfig,
    ShuffledStream,
    TraditionalConfig,
    TraditionalStream,
    pretraining_stream,
)

PAD, BOS, EOS = 0, 1, 2


def random_graph(n=30, seed=0, lo=20, hi=120):
    rng = np.random.default_rng(seed)
    ids = [f"page{i}" for i in range(n)]
    tokens = [rng.integers(16, 1000, rng.integers(lo, hi)) for _ in range(n)]
    cites = [[ids[j] for j in rng.choice(n, rng.integers(0, 4), replace=False)] for _ in range(n)]
    return LinkedGraph.build(ids, tokens, cites)


def make(kind, token_docs, bpe, rank=0, world_size=1, **over):
    if kind == "traditional":
        cfg = TraditionalConfig(**{"seq_len": 64, "batch_size": 4, "min_tokens": 4, "pad_multiple": 8,
                                   "bucket_batches": 4, **over})
        return TraditionalStream(token_docs(0, 300), cfg, bos=BOS, eos=EOS, pad=PAD, rank=rank, world_size=world_size)
    if kind == "linked":
        cfg = LinkedConfig(**{"seq_len": 1024, "batch_size": 3, "min_tokens": 300, "pad_multiple": 8,
                              "bucket_batches": 2, **over})
        return LinkedStream(random_graph(), cfg, bos=BOS, eos=EOS, pad=PAD, rank=rank, world_size=world_size)
    stats = VocabStats.from_documents(bpe, token_docs(0, 1000))
    cfg = ShuffledConfig(**{"seq_len": 2048, "batch_size": 3, "min_tokens": 600, "rosetta": 20, "rosetta_top": 100,
                            "ramp_tokens": 50, "pool": 200, "pad_multiple": 8, "bucket_batches": 2, **over})
    return ShuffledStream(token_docs(1000, 1400), cfg, stats, rank=rank, world_size=world_size)


KINDS = ["traditional", "linked", "shuffled"]


def equal(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "targets", "weights", "reset", "lengths"))


@pytest.mark.parametrize("kind", KINDS)
def test_resume_gives_the_same_next_batches(kind, token_docs, bpe):
    s = make(kind, token_docs, bpe)
    assert isinstance(s, Stream)
    for _ in range(5):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))  # a checkpoint stores it as JSON
    expected = [s.next_batch() for _ in range(12)]
    fresh = make(kind, token_docs, bpe)
    fresh.load_state_dict(state)
    got = [fresh.next_batch() for _ in range(12)]
    assert all(equal(a, b) for a, b in zip(expected, got))
    assert fresh.stats()["batches"] == s.stats()["batches"]
    other = make(kind, token_docs, bpe, seed=1)
    assert not all(equal(a, other.next_batch()) for a in [make(kind, token_docs, bpe).next_batch()])
    with pytest.raises(ValueError, match="saved with batch_size=.*this stream has batch_size="):
        make(kind, token_docs, bpe, batch_size=2).load_state_dict(state)


def batch_rows(b: torch.Tensor, pad=PAD):
    """Each row's real tokens plus its last target (the piece it was cut from)."""
    out = []
    for t, y in zip(b.tokens, b.targets):
        n = int((y != pad).sum())
        out.append(tuple(t[:n].tolist()) + ((int(y[n - 1]),) if n else ()))
    return out


def test_traditional_two_ranks_disjoint_and_complete(token_docs, bpe):
    whole = make("traditional", token_docs, bpe)
    expected = Counter()
    for d in token_docs(0, 300):
        if len(d) < 4:
            continue
        full = [BOS, *d.tolist(), EOS]
        for s in range(0, len(full) - 1, 64):
            expected[tuple(full[s:s + 65])] += 1
    got = [Counter(), Counter()]
    for r in range(2):
        s = make("traditional", token_docs, bpe, rank=r, world_size=2)
        for step in range(len(range(r, len(whole.epoch_plan(0)), 2))):
            b = s.next_batch()
            assert b.reset.all() and b.tokens.shape[1] <= 64
            got[r].update(x for x in batch_rows(b) if x)
    assert got[0] + got[1] == expected  # every piece of the epoch exactly once over both ranks


@pytest.mark.parametrize("kind", ["linked", "shuffled"])
def test_whole_sequences_once_per_epoch_over_two_ranks_and_resume_mid_epoch(kind, token_docs, bpe):
    """Each row is one whole sequence, uncut; over both ranks an epoch serves every sequence once."""
    whole = make(kind, token_docs, bpe)
    n_seq, n_batches = whole.n_sequences(0), len(whole.epoch_plan(0))
    assert n_seq >= 6
    expected = Counter(tuple(whole.sequence(0, i)[0].tolist()) for i in range(n_seq))
    got = Counter()
    for r in range(2):
        s = make(kind, token_docs, bpe, rank=r, world_size=2)
        mine = list(range(r, n_batches, 2))
        batches = []
        for j in range(len(mine)):
            if j == len(mine) // 2:  # resume mid-epoch: a fresh stream continues bit for bit
                fresh = make(kind, token_docs, bpe, rank=r, world_size=2)
                fresh.load_state_dict(json.loads(json.dumps(s.state_dict())))
                s = fresh
            batches.append(s.next_batch())
        for b in batches:
            assert b.reset.all()
            for row, n in zip(batch_rows(b), b.lengths.tolist()):
                if n:
                    assert len(row) == n + 1
                    got[row] += 1
        assert s.stats()["cut_tokens"] == 0
        nxt = s.next_batch()  # then the next epoch starts
        assert s.state_dict()["epoch"] == 1 and nxt.reset.all()
    assert got == expected


def test_sequences_longer_than_seq_len_are_cut_and_counted(token_docs, bpe):
    s = make("linked", token_docs, bpe, seq_len=100)
    b = s.next_batch()
    assert b.tokens.shape[1] == 100 and (b.lengths == 100).all()
    assert s.stats()["cut_tokens"] > 0
    assert any("sequence cut" in r for r in s.stats()["skipped"])


def test_traditional_grouping_reduces_padding(token_docs, bpe):
    grouped = make("traditional", token_docs, bpe, pad_multiple=1, bucket_batches=16, batch_size=8)
    random = make("traditional", token_docs, bpe, pad_multiple=1, bucket_batches=1, batch_size=8)
    assert grouped.plan_padding() < 0.5 * random.plan_padding() or grouped.plan_padding() < 0.05
    real = total = 0
    for _ in range(10):
        b = grouped.next_batch()
        real += int(b.weights.sum())
        total += b.weights.numel()
    assert grouped.stats()["padding_fraction"] == pytest.approx(1 - real / total)


def test_traditional_skips_short_documents(caplog):
    docs = [np.arange(16, 40), np.arange(16, 18), np.arange(16, 100)]
    with caplog.at_level("WARNING", logger="plasticlm.data"):
        s = TraditionalStream(docs, TraditionalConfig(seq_len=32, batch_size=2, min_tokens=8), bos=BOS, eos=EOS,
                              pad=PAD)
    assert s.skips.counts["document shorter than min_tokens=8"] == 1 and "document 1 (2 tokens)" in caplog.text
    with pytest.raises(ValueError, match="no document has min_tokens=500"):
        TraditionalStream(docs, TraditionalConfig(min_tokens=500), bos=BOS, eos=EOS, pad=PAD)


def test_linked_walk_order_and_graph_defects(caplog):
    ids = ["A", "B", "C", "D", "E", "A"]
    tokens = [np.full(n, 20 + i) for i, n in enumerate([10, 10, 10, 10, 10, 5])]
    cites = [["B", "C", "ghost"], ["D", "A"], ["C"], [], ["A"], []]
    with caplog.at_level("WARNING", logger="plasticlm.data"):
        g = LinkedGraph.build(ids, tokens, cites)
    assert len(g) == 5 and g.skips.counts["duplicate page id"] == 1
    assert g.n_dangling == 1 and g.n_self == 1 and "A -> ghost" in caplog.text
    assert g.pages_on_cycles() == 2  # A <-> B
    pages, n = g.walk(0, min_tokens=10_000)
    assert [g.ids[p] for p in pages] == ["A", "B", "C", "D"] and n == 1 + 4 * 11  # BFS, each page once
    s = LinkedStream(g, LinkedConfig(seq_len=16, batch_size=2, min_tokens=30, roots="all"), bos=BOS, eos=EOS,
                     pad=PAD)
    # C (its only citation is itself) and D (none) read alone hold 12 tokens: too short, counted.
    assert s.skips.counts["walk shorter than min_tokens=30"] == 2 and len(s.walks) == 3
    seq, w = s.sequence(0, 0)
    assert seq[0] == BOS and (seq == EOS).sum() >= 3 and len(seq) >= 30 and (w == 1).all()
    with pytest.raises(ValueError, match="no walk reaches min_tokens=1000 tokens \\(longest: 56 tokens from 'E'"):
        LinkedStream(g, LinkedConfig(min_tokens=1000), bos=BOS, eos=EOS, pad=PAD)
    r = g.sequence_report(30)
    assert (r["sequences"], r["roots_too_short"], r["dangling_citations"]) == (3, 0, 1)  # roots: A, B, E


def test_shuffled_sequence_weights_and_inverse(token_docs, bpe):
    s = make("shuffled", token_docs, bpe, ramp_tokens=50)
    seq, w = s.sequence(0, 3)
    h = s.header_length(0, 3)
    assert seq[0] == BOS and len(seq) - 1 - h >= 600
    assert (w[:h] == 0).all() and w[h] == pytest.approx(1 / 50) and (np.diff(w[h:h + 50]) > 0).all()
    assert (w[h + 49:] == 1).all()
    lang = s.language(0, 3)
    assert np.array_equal(lang.invert(seq[1 + h:]), s.original_text(0, 3))
    assert np.array_equal(seq[1:1 + h], lang.rosetta(20, 100))
    assert not np.array_equal(s.language(0, 4).apply(s.original_text(0, 3)), seq[1 + h:])  # a new language each
    assert not np.array_equal(s.language(1, 3).apply(s.original_text(0, 3)), seq[1 + h:])  # and each epoch
    docs = [d for g in s.packing(0) for d in g.tolist()]
    assert sorted(docs) == list(range(len(s.docs)))  # an epoch packs every holdout document once
    with pytest.raises(ValueError, match="fewer than min_tokens=1000000"):
        make("shuffled", token_docs, bpe, min_tokens=1_000_000)


def test_factory_from_prepared_directory(prepared, tmp_path, bpe):
    for kind in ("traditional", "shuffled"):
        s = pretraining_stream(kind, data=prepared, seq_len=64, batch_size=2, min_tokens=64 if kind == "traditional" else 500,
                         **({"rosetta": 10, "rosetta_top": 50, "pool": 100} if kind == "shuffled" else {}))
        b = s.next_batch()
        assert b.tokens.shape[0] == 2 and b.tokens.dtype == torch.long and b.weights.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown stream kind 'wiki'"):
        pretraining_stream("wiki", data=prepared)
    with pytest.raises(ValueError, match=r"unknown config fields \['seqlen'\]"):
        pretraining_stream("traditional", data=prepared, seqlen=3)
    with pytest.raises(ValueError, match="rank < world_size"):
        pretraining_stream("traditional", data=prepared, rank=2, world_size=2)
    graph = tmp_path / "g.jsonl"
    graph.write_text("".join(json.dumps({"id": f"p{i}", "text": "word " * 50, "cites": [f"p{(i + 1) % 10}", "missing"]})
                             + "\n" for i in range(10)))
    s = pretraining_stream("linked", data=graph, tokenizer=bpe, seq_len=32, batch_size=2, min_tokens=200)
    assert s.skips.counts["dangling citation (no page with that id)"] == 10
    assert s.next_batch().reset.all()
