"""The three pretraining streams (DESIGN 4), each a resumable :class:`~plasticlm.data.batch.Stream`
of whole sequences.

``pretraining_stream(kind, data=..., tokenizer=..., rank=0, world_size=1, **config)`` makes one by
name: ``traditional``, ``linked`` or ``shuffled``; ``config`` fills that kind's dataclass
(:class:`TraditionalConfig`, :class:`LinkedConfig`, :class:`ShuffledConfig`), and an unknown
field is an error naming it. ``data`` is a directory written by ``plasticlm prepare`` (the split
is read from it), or, for the linked stream, a graph JSONL file too.

Every row of a batch is one whole sequence, ``reset`` true: the trainer backpropagates through
it exactly (``bptt: whole``) or cuts the batch into windows itself (``bptt: window``); a stream
never splits a sequence across rows or batches. A sequence longer than ``seq_len`` tokens is cut
there (the cut is counted in ``stats()``), so ``seq_len`` should exceed the longest sequence.

- **traditional**: documents ``[BOS] text [EOS]``, cut into pieces of at most ``seq_len``
  tokens; each piece is a sequence.
- **linked**: each sequence is the breadth-first citation walk from one root page
  (:mod:`.linked`), ``[BOS] page [EOS] page [EOS] ...`` with at least ``min_tokens`` tokens.
- **shuffled**: each epoch, the (shuffled) holdout documents are packed into sequences of at
  least ``min_tokens`` text tokens; sequence ``k`` of epoch ``e`` is ``[BOS] rosetta-header
  text...`` in the language :class:`~plasticlm.data.shuffled.VocabShuffle` seeded by
  ``(seed, e, k)``. Loss weights are ``header_weight`` on the header and rise from 0 to 1 over
  the first ``ramp_tokens`` text tokens.

**Batches**: each epoch, the sequences are permuted (seeded by ``seed`` and the epoch), sorted
by length within windows of ``bucket_batches`` batches, cut into batches of ``batch_size``, and
the batches permuted; a batch is padded to its longest row rounded up to ``pad_multiple``
(``plan_padding()`` gives an epoch's padding; ``stats()`` that of the batches served).

**Sharding**: rank ``r`` of ``world_size`` takes batches ``r, r + W, r + 2W, ...`` of each
epoch, so the ranks' shares are disjoint and together complete.

**Resuming**: ``state_dict()`` holds the cursor (epoch and batch, plus the config and sharding
so that a mismatch is caught by name); every sequence is rebuilt from its number, so
``load_state_dict`` on a fresh stream gives the same next batches exactly.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .corpus import SkipLog
from .linked import LinkedGraph
from .batch import Batch

log = logging.getLogger("plasticlm.data")


@dataclass
class TraditionalConfig:
    seq_len: int = 32768
    """T: at most this many tokens per sequence; a longer document is cut into pieces of T."""
    batch_size: int = 8
    """B: sequences (rows) per batch."""
    min_tokens: int = 16
    """Documents with fewer tokens are skipped (counted and logged)."""
    pad_multiple: int = 64
    """A batch's width is its longest row rounded up to this multiple (and at most seq_len)."""
    bucket_batches: int = 64
    """Sequences are sorted by length within windows of this many batches: more groups more evenly
    (less padding) but orders batches less randomly."""
    seed: int = 0


@dataclass
class LinkedConfig:
    seq_len: int = 131072
    """T: the longest row; a walk longer than this is cut there (counted)."""
    batch_size: int = 8
    """B: sequences (rows) per batch."""
    min_tokens: int = 65536
    """A sequence is the citation walk from one root until it holds at least this many tokens;
    walks that run out of pages first are skipped (counted)."""
    roots: str = "citing"
    """Which pages start walks: 'citing' (pages with a citation) or 'all'."""
    pad_multiple: int = 64
    bucket_batches: int = 16
    seed: int = 0


@dataclass
class ShuffledConfig:
    seq_len: int = 131072
    """T: the longest row; a longer sequence is cut there (counted)."""
    batch_size: int = 8
    """B: sequences (rows) per batch."""
    min_tokens: int = 100_000
    """Text tokens per sequence (after the header): each epoch's documents are packed until this many."""
    rosetta: int = 2000
    """Translations in the header."""
    rosetta_top: int = 10000
    """The header's tokens are drawn from this many most frequent."""
    ramp_tokens: int = 5000
    """Loss weight rises from 0 to 1 over this many text tokens (0: no ramp)."""
    ramp: str = "linear"
    """Shape of the ramp: 'linear' or 'cosine'."""
    header_weight: float = 0.0
    """Loss weight on the header's positions."""
    fission: float = 0.2
    """Share of the `pool` most frequent tokens written with two ids."""
    fusion: float = 0.2
    """Fused pairs, as a share of `pool` (drawn from the `pool` most frequent pairs)."""
    pool: int = 1000
    pad_multiple: int = 64
    bucket_batches: int = 16
    seed: int = 0


def _check(cfg) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("seq_len", "batch_size", "pad_multiple", "bucket_batches", "min_tokens") and (
                not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be a positive integer, got {v!r}")
    if getattr(cfg, "ramp", "linear") not in ("linear", "cosine"):
        raise ValueError(f"ShuffledConfig.ramp must be 'linear' or 'cosine', got {cfg.ramp!r}")


def _check_shard(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def to_batch(rows: list[tuple[np.ndarray, np.ndarray]], width: int, pad: int) -> Batch:
    """Whole sequences as rows of (tokens (n+1,), weights (n,)) -> a Batch padded to ``width``."""
    B = len(rows)
    tokens = torch.full((B, width), pad, dtype=torch.long)
    targets = torch.full((B, width), pad, dtype=torch.long)
    weights = torch.zeros(B, width)
    lengths = torch.zeros(B, dtype=torch.long)
    for b, (seq, w) in enumerate(rows):
        n = len(seq) - 1
        if n <= 0:
            continue
        s = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        tokens[b, :n], targets[b, :n] = s[:-1], s[1:]
        weights[b, :n] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        lengths[b] = n
    return Batch(tokens, targets, weights, torch.ones(B, dtype=torch.bool), lengths)


class SequenceStream(abc.ABC):
    """Batches of whole sequences, grouped by length, sharded and resumable (see the module docstring).

    A kind defines its epoch's sequences: :meth:`n_sequences`, :meth:`length` (the tokens of
    sequence i, used to group similar lengths) and :meth:`sequence`.
    """

    kind = ""

    def __init__(self, cfg, *, pad: int, rank: int, world_size: int) -> None:
        _check(cfg)
        _check_shard(rank, world_size)
        self.cfg, self.rank, self.world_size, self.pad = cfg, rank, world_size, pad
        self.skips = SkipLog()
        self._plan_epoch, self._plan = -1, None
        self._epoch = self._next = 0  # cursor: batch number _next of epoch _epoch (this rank's share)
        self._batches = self._real = self._total = self._cut = 0

    @abc.abstractmethod
    def n_sequences(self, epoch: int) -> int: ...

    @abc.abstractmethod
    def length(self, epoch: int, i: int) -> int:
        """Tokens of sequence i (an estimate is enough: it only groups lengths)."""

    @abc.abstractmethod
    def sequence(self, epoch: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequence i of ``epoch``: tokens (n,) and the loss weight of predicting each next token (n-1,)."""

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The batches of ``epoch`` (every rank's): arrays of sequence numbers, similar lengths together."""
        if epoch != self._plan_epoch:
            cfg = self.cfg
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
            n = self.n_sequences(epoch)
            if n < self.world_size:
                raise ValueError(f"{self.kind} stream: epoch {epoch} has {n} sequences, too few for "
                                 f"{self.world_size} ranks")
            order = rng.permutation(n)
            lengths = np.asarray([self.length(epoch, int(i)) for i in range(n)])
            window = cfg.batch_size * cfg.bucket_batches
            batches = []
            for w in range(0, n, window):
                chunk = order[w:w + window]
                chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
                batches += [chunk[b:b + cfg.batch_size] for b in range(0, len(chunk), cfg.batch_size)]
            self._plan = [batches[i] for i in rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._plan

    def _width(self, lengths) -> int:
        m = self.cfg.pad_multiple
        return min(self.cfg.seq_len, -(-max(lengths) // m) * m)

    def plan_padding(self, epoch: int = 0) -> float:
        """Padding fraction of all batches of ``epoch`` (every rank's)."""
        real = total = 0
        for b in self.epoch_plan(epoch):
            lens = [min(self.cfg.seq_len, self.length(epoch, int(i)) - 1) for i in b]
            real += sum(lens)
            total += self._width(lens) * self.cfg.batch_size
        return 1 - real / total

    def next_sequences(self) -> tuple[int, np.ndarray]:
        """(epoch, sequence numbers) of this rank's next batch; moves the cursor."""
        while True:
            plan = self.epoch_plan(self._epoch)
            j = self.rank + self.world_size * self._next
            if j < len(plan):
                self._next += 1
                return self._epoch, plan[j]
            self._epoch, self._next = self._epoch + 1, 0

    def next_batch(self) -> Batch:
        epoch, idx = self.next_sequences()
        T = self.cfg.seq_len
        rows = []
        for i in idx:
            seq, w = self.sequence(epoch, int(i))
            if len(seq) > T + 1:
                self._cut += len(seq) - (T + 1)
                self.skips.skip(f"tokens past seq_len={T} (sequence cut)", f"epoch {epoch} sequence {int(i)} "
                                f"({len(seq) - 1} tokens)")
                seq, w = seq[:T + 1], w[:T]
            rows.append((seq, w))
        rows += [(np.zeros(0, dtype=np.int64), np.zeros(0))] * (self.cfg.batch_size - len(rows))  # an epoch's last
        width = self._width([max(1, len(r) - 1) for r, _ in rows])
        self._batches += 1
        self._real += sum(max(0, len(r) - 1) for r, _ in rows)
        self._total += self.cfg.batch_size * width
        return to_batch(rows, width, self.pad)

    def _header(self) -> dict:
        return {"kind": self.kind, "config": dataclasses.asdict(self.cfg), "rank": self.rank,
                "world_size": self.world_size, "n_docs": self._n_docs}

    def _check_header(self, state: dict) -> None:
        for k, v in self._header().items():
            if k == "config":
                for f, fv in v.items():
                    if state["config"].get(f) != fv:
                        raise ValueError(f"{self.kind} stream state was saved with {f}={state['config'].get(f)!r}, "
                                         f"this stream has {f}={fv!r}")
            elif state.get(k) != v:
                raise ValueError(f"{self.kind} stream state was saved with {k}={state.get(k)!r}, this stream has {v!r}")

    def state_dict(self) -> dict[str, Any]:
        return {**self._header(), "epoch": self._epoch, "next": self._next, "batches": self._batches,
                "real": self._real, "total": self._total, "cut": self._cut}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_header(state)
        self._epoch, self._next = state["epoch"], state["next"]
        self._batches, self._real, self._total, self._cut = (state[k] for k in ("batches", "real", "total", "cut"))

    def stats(self) -> dict:
        total = max(1, self._total)
        return {"batches": self._batches, "tokens": self._real, "positions": self._total,
                "padding_fraction": 1 - self._real / total, "cut_tokens": self._cut, "skipped": self.skips.report()}


# ---- traditional -------------------------------------------------------------------------------
class TraditionalStream(SequenceStream):
    kind = "traditional"

    def __init__(self, docs: Sequence[np.ndarray], cfg: TraditionalConfig, *, bos: int, eos: int, pad: int,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, pad=pad, rank=rank, world_size=world_size)
        self.docs, self.bos, self.eos = docs, bos, eos
        self._n_docs = len(docs)
        T = cfg.seq_len
        pieces = []  # (doc, start, length): document tokens [start, start + length) of [BOS] doc [EOS]
        for i in range(len(docs)):
            n = len(docs[i])
            if n < cfg.min_tokens:
                self.skips.skip(f"document shorter than min_tokens={cfg.min_tokens}", f"document {i} ({n} tokens)")
                continue
            full = n + 2
            for s in range(0, full - 1, T):
                pieces.append((i, s, min(T + 1, full - s)))
        if not pieces:
            raise ValueError(f"traditional stream: no document has min_tokens={cfg.min_tokens} tokens "
                             f"({len(docs)} documents; {self.skips.summary()})")
        self.pieces = np.asarray(pieces, dtype=np.int64)  # (P, 3)

    def n_sequences(self, epoch: int) -> int:
        return len(self.pieces)

    def length(self, epoch: int, i: int) -> int:
        return int(self.pieces[i, 2])

    def sequence(self, epoch: int, i: int):
        d, s, n = self.pieces[i]
        full = np.concatenate([[self.bos], np.asarray(self.docs[d], dtype=np.int64), [self.eos]])
        piece = full[s:s + n]
        return piece, np.ones(len(piece) - 1, dtype=np.float32)


# ---- linked ------------------------------------------------------------------------------------
class LinkedStream(SequenceStream):
    kind = "linked"

    def __init__(self, graph: LinkedGraph, cfg: LinkedConfig, *, bos: int, eos: int, pad: int,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, pad=pad, rank=rank, world_size=world_size)
        self.graph, self.bos, self.eos = graph, bos, eos
        self._n_docs = len(graph)
        self.skips = graph.skips
        walks, lengths = [], []
        longest = (0, None)
        for r in graph.roots(cfg.roots):
            pages, n = graph.walk(int(r), cfg.min_tokens)
            if n >= cfg.min_tokens:
                walks.append(pages)
                lengths.append(n)
            else:
                longest = max(longest, (n, graph.ids[r]))
                self.skips.skip(f"walk shorter than min_tokens={cfg.min_tokens}", f"root {graph.ids[r]} ({n} tokens)")
        if not walks:
            raise ValueError(f"linked stream: no walk reaches min_tokens={cfg.min_tokens} tokens (longest: "
                             f"{longest[0]} tokens from {longest[1]!r}; {len(graph)} pages); lower min_tokens or "
                             f"use a larger graph")
        if len(walks) < world_size:
            raise ValueError(f"linked stream: {len(walks)} sequences cannot be shared by {world_size} ranks")
        self.walks, self.walk_tokens = walks, lengths
        log.info("linked stream: %d sequences, %s", len(walks), self.skips.summary())

    def n_sequences(self, epoch: int) -> int:
        return len(self.walks)

    def length(self, epoch: int, i: int) -> int:
        return self.walk_tokens[i]

    def sequence(self, epoch: int, i: int):
        parts = [np.asarray([self.bos], dtype=np.int64)]
        for p in self.walks[i]:
            parts += [np.asarray(self.graph.tokens[p], dtype=np.int64), np.asarray([self.eos], dtype=np.int64)]
        seq = np.concatenate(parts)
        return seq, np.ones(len(seq) - 1, dtype=np.float32)

    def walk_root(self, i: int) -> str:
        """The id of the page that starts walk ``i``."""
        return self.graph.ids[self.walks[i][0]]


# ---- shuffled ----------------------------------------------------------------------------------
class ShuffledStream(SequenceStream):
    kind = "shuffled"

    def __init__(self, docs: Sequence[np.ndarray], cfg: ShuffledConfig, stats, *, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(cfg, pad=stats.special_ids["[PAD]"], rank=rank, world_size=world_size)
        self.vocab_stats = stats
        self.bos, self.eos = stats.special_ids["[BOS]"], stats.special_ids["[EOS]"]
        self._n_docs = len(docs)
        self.docs = []
        for i in range(len(docs)):
            if len(docs[i]) == 0:
                self.skips.skip("empty document", f"document {i}")
            else:
                self.docs.append(docs[i])
        total = sum(len(d) + 1 for d in self.docs)
        if total < cfg.min_tokens:
            raise ValueError(f"shuffled stream: the split holds {total} tokens, fewer than min_tokens="
                             f"{cfg.min_tokens} for one sequence; lower min_tokens or use a larger holdout split")
        self._packing_epoch, self._packing = -1, None
        self._header_len = len(self.language(0, 0).rosetta(cfg.rosetta, cfg.rosetta_top))

    def packing(self, epoch: int) -> list[np.ndarray]:
        """Document indices of each sequence of ``epoch``: the shuffled documents packed in order until
        each sequence holds min_tokens text tokens (the last takes what is left), every document once."""
        if epoch != self._packing_epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, epoch, 1]))
            groups, cur, n = [], [], 0
            for i in rng.permutation(len(self.docs)):
                cur.append(int(i))
                n += len(self.docs[i]) + 1
                if n >= self.cfg.min_tokens:
                    groups.append(np.asarray(cur))
                    cur, n = [], 0
            if cur:  # too short for a sequence of its own
                groups[-1] = np.concatenate([groups[-1], cur])
            self._packing_epoch, self._packing = epoch, groups
        return self._packing

    def n_sequences(self, epoch: int) -> int:
        return len(self.packing(epoch))

    def length(self, epoch: int, i: int) -> int:
        return 1 + self._header_len + sum(len(self.docs[d]) + 1 for d in self.packing(epoch)[i])

    def language(self, epoch: int, i: int):
        """The :class:`VocabShuffle` of sequence ``i`` of ``epoch``."""
        from .shuffled import VocabShuffle

        c = self.cfg
        return VocabShuffle(self.vocab_stats, [c.seed, epoch, i], fission=c.fission, fusion=c.fusion, pool=c.pool)

    def original_text(self, epoch: int, i: int) -> np.ndarray:
        """The holdout text of sequence ``i`` of ``epoch`` in the original language (documents joined by [EOS])."""
        parts = []
        for d in self.packing(epoch)[i]:
            parts += [np.asarray(self.docs[d], dtype=np.int64), np.asarray([self.eos], dtype=np.int64)]
        return np.concatenate(parts)

    def ramp_weights(self, n: int) -> np.ndarray:
        c = self.cfg
        if c.ramp_tokens <= 0:
            return np.ones(n, dtype=np.float32)
        x = np.minimum(1.0, (np.arange(n) + 1) / c.ramp_tokens)
        if c.ramp == "cosine":
            x = 0.5 - 0.5 * np.cos(np.pi * x)
        return x.astype(np.float32)

    def sequence(self, epoch: int, i: int):
        lang = self.language(epoch, i)
        header = lang.rosetta(self.cfg.rosetta, self.cfg.rosetta_top)
        text = lang.apply(self.original_text(epoch, i))
        seq = np.concatenate([[self.bos], header, text]).astype(np.int64)
        # Position j predicts seq[j+1]: the header's targets are seq[1 : 1+len(header)].
        w = np.concatenate([np.full(len(header), self.cfg.header_weight, dtype=np.float32),
                            self.ramp_weights(len(text))])
        return seq, w

    def header_length(self, epoch: int, i: int) -> int:
        return len(self.language(epoch, i).rosetta(self.cfg.rosetta, self.cfg.rosetta_top))


# ---- the factory ---------------------------------------------------------------------------------
CONFIGS = {"traditional": TraditionalConfig, "linked": LinkedConfig, "shuffled": ShuffledConfig}
DEFAULT_SPLIT = {"traditional": "train", "linked": "train", "shuffled": "holdout"}


def make_config(kind: str, **fields):
    if kind not in CONFIGS:
        raise ValueError(f"unknown stream kind {kind!r}; choose one of {sorted(CONFIGS)}")
    cls = CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"{kind} stream: unknown config fields {unknown}; valid: {sorted(names)}")
    return cls(**fields)


def pretraining_stream(kind: str, *, data, tokenizer=None, split: str | None = None, rank: int = 0,
                 world_size: int = 1, stats=None, **config):
    """A stream of ``kind`` ('traditional', 'linked', 'shuffled') over ``data``.

    ``data``: a directory written by ``plasticlm prepare`` (its tokenizer is used unless
    ``tokenizer`` is given), or for ``linked`` also a graph JSONL file (then ``tokenizer`` is
    required). ``split`` defaults to train (holdout for shuffled). ``stats``: the
    :class:`~plasticlm.data.shuffled.VocabStats` a shuffled language is drawn from (default:
    counted on the split itself). ``config``: fields of the kind's config dataclass.
    """
    cfg = make_config(kind, **config)
    split = split or DEFAULT_SPLIT[kind]
    path = Path(data)
    if kind == "linked" and path.is_file():
        if tokenizer is None:
            raise ValueError("linked stream from a graph file needs a tokenizer (or `plasticlm prepare` the graph)")
        from .corpus import read_corpus

        skips = SkipLog()
        graph = LinkedGraph.from_documents(read_corpus(path, skips=skips), tokenizer, skips=skips)
        return LinkedStream(graph, cfg, bos=tokenizer.token_id("[BOS]"), eos=tokenizer.token_id("[EOS]"),
                            pad=tokenizer.token_id("[PAD]"), rank=rank, world_size=world_size)

    from .corpus import SPLITS
    from .shards import TokenShard, load_prepared

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {list(SPLITS)}")
    meta, prepared_tok = load_prepared(path)
    tok = tokenizer or prepared_tok
    shard = TokenShard(path, split)
    sp = {t: tok.token_id(t) for t in ("[BOS]", "[EOS]", "[PAD]")}
    if kind == "traditional":
        return TraditionalStream(shard, cfg, bos=sp["[BOS]"], eos=sp["[EOS]"], pad=sp["[PAD]"],
                                 rank=rank, world_size=world_size)
    if kind == "linked":
        graph = LinkedGraph.from_prepared(path, split)
        return LinkedStream(graph, cfg, bos=sp["[BOS]"], eos=sp["[EOS]"], pad=sp["[PAD]"],
                            rank=rank, world_size=world_size)
    if stats is None:
        from .shuffled import VocabStats

        if not hasattr(tok, "token_categories"):
            raise ValueError("the shuffled stream needs a BPE tokenizer (token categories); prepare with a BPE")
        stats = VocabStats.from_documents(tok, (shard[i] for i in range(len(shard))))
    return ShuffledStream(shard, cfg, stats, rank=rank, world_size=world_size)
