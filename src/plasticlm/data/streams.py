"""The three pretraining streams (DESIGN 4), each a resumable :class:`~plasticlm.data.stream.Stream`.

``build_stream(kind, data=..., tokenizer=..., rank=0, world_size=1, **config)`` makes one by
name: ``traditional``, ``linked`` or ``shuffled``; ``config`` fills that kind's dataclass
(:class:`TraditionalConfig`, :class:`LinkedConfig`, :class:`ShuffledConfig`), and an unknown
field is an error naming it. ``data`` is a directory written by ``plasticlm prepare`` (the split
is read from it), or, for the linked stream, a graph JSONL file too.

- **traditional**: documents ``[BOS] text [EOS]``, cut into pieces of at most ``seq_len``
  tokens, grouped by length into batches of ``batch_size`` rows padded to the longest row (up
  to a multiple of ``pad_multiple``); every row is its own sequence (``reset`` all true).
  ``stats()["padding_fraction"]`` reports the padding of the batches served so far and
  ``plan_padding()`` that of a whole epoch.
- **linked**: each sequence is the breadth-first citation walk from one root page
  (:mod:`.linked`), ``[BOS] page [EOS] page [EOS] ...`` with at least ``min_tokens`` tokens.
- **shuffled**: each sequence is ``[BOS] rosetta-header text...`` in a new language
  (:class:`~plasticlm.data.shuffled.VocabShuffle` seeded by ``(seed, sequence index)``), text
  drawn from the holdout split until ``min_tokens``; loss weights are ``header_weight`` on the
  header and rise from 0 to 1 over the first ``ramp_tokens`` text tokens.

Linked and shuffled sequences are far longer than a row: a batch has ``batch_size`` lanes, and
each lane reads its sequence in consecutive windows of ``seq_len`` tokens, one per batch, with
``reset`` true on the window that starts a sequence. The last window of a sequence is padded
(weight 0). So a trainer that carries each row's recurrent state across batches, resetting the
rows ``reset`` marks, reads every sequence whole.

**Sharding**: sequences (batches, for traditional) are numbered globally in a fixed order per
``seed`` and epoch; rank ``r`` of ``world_size`` takes those numbered ``r, r + W, r + 2W, ...``,
so the ranks' shares are disjoint and together complete.

**Resuming**: ``state_dict()`` holds the cursor (counters and lane positions, plus the config
and sharding so that a mismatch is caught by name); every sequence is rebuilt from its number,
so ``load_state_dict`` on a fresh stream gives the same next batches exactly.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .corpus import SkipLog
from .linked import LinkedGraph
from .stream import Batch

log = logging.getLogger("plasticlm.data")


@dataclass
class TraditionalConfig:
    seq_len: int = 32768
    """T: at most this many tokens per row; a longer document is cut into pieces of T."""
    batch_size: int = 8
    """B: rows per batch."""
    min_tokens: int = 16
    """Documents with fewer tokens are skipped (counted and logged)."""
    pad_multiple: int = 64
    """A batch's width is its longest row rounded up to this multiple (and at most seq_len)."""
    bucket_batches: int = 64
    """Pieces are sorted by length within windows of this many batches: more groups more evenly
    (less padding) but orders batches less randomly."""
    seed: int = 0


@dataclass
class LinkedConfig:
    seq_len: int = 4096
    """T: tokens per row; a sequence is read in consecutive windows of T in one lane."""
    batch_size: int = 8
    """B: lanes (rows) per batch."""
    min_tokens: int = 65536
    """A sequence is the citation walk from one root until it holds at least this many tokens;
    walks that run out of pages first are skipped (counted)."""
    max_tokens: int = 0
    """Cut sequences to at most this many tokens (0: no cut)."""
    roots: str = "citing"
    """Which pages start walks: 'citing' (pages with a citation) or 'all'."""
    seed: int = 0


@dataclass
class ShuffledConfig:
    seq_len: int = 4096
    """T: tokens per row; a sequence is read in consecutive windows of T in one lane."""
    batch_size: int = 8
    """B: lanes (rows) per batch."""
    min_tokens: int = 100_000
    """Text tokens per sequence (after the header): holdout documents are drawn until this many."""
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
    seed: int = 0


def _check(cfg) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name in ("seq_len", "batch_size", "pad_multiple", "bucket_batches", "min_tokens") and (
                not isinstance(v, int) or v < 1):
            raise ValueError(f"{type(cfg).__name__}.{f.name} must be a positive integer, got {v!r}")
    if getattr(cfg, "ramp", "linear") not in ("linear", "cosine"):
        raise ValueError(f"ShuffledConfig.ramp must be 'linear' or 'cosine', got {cfg.ramp!r}")


def _check_shard(rank: int, world_size: int) -> None:
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _to_batch(rows: list[tuple[np.ndarray, np.ndarray]], width: int, reset: list[bool], pad: int) -> Batch:
    """Rows of (tokens (n+1,), weights (n,)) -> a Batch padded to ``width``."""
    B = len(rows)
    tokens = torch.full((B, width), pad, dtype=torch.long)
    targets = torch.full((B, width), pad, dtype=torch.long)
    weights = torch.zeros(B, width)
    for b, (seq, w) in enumerate(rows):
        n = len(seq) - 1
        if n <= 0:
            continue
        s = torch.from_numpy(np.asarray(seq, dtype=np.int64))
        tokens[b, :n], targets[b, :n] = s[:-1], s[1:]
        weights[b, :n] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return Batch(tokens, targets, weights, torch.tensor(reset, dtype=torch.bool))


class _Base:
    kind = ""

    def _header(self) -> dict:
        return {"kind": self.kind, "config": dataclasses.asdict(self.cfg), "rank": self.rank,
                "world_size": self.world_size, "n_docs": self._n_docs}

    def _check_header(self, state: dict) -> None:
        mine = self._header()
        for k, v in mine.items():
            if k == "config":
                for f, fv in v.items():
                    if state["config"].get(f) != fv:
                        raise ValueError(f"{self.kind} stream state was saved with {f}={state['config'].get(f)!r}, "
                                         f"this stream has {f}={fv!r}")
            elif state.get(k) != v:
                raise ValueError(f"{self.kind} stream state was saved with {k}={state.get(k)!r}, this stream has {v!r}")

    def stats(self) -> dict:
        total = max(1, self._total)
        return {"batches": self._batches, "tokens": self._real, "positions": self._total,
                "padding_fraction": 1 - self._real / total, "skipped": self.skips.report()}


# ---- traditional -------------------------------------------------------------------------------
class TraditionalStream(_Base):
    kind = "traditional"

    def __init__(self, docs: Sequence[np.ndarray], cfg: TraditionalConfig, *, bos: int, eos: int, pad: int,
                 rank: int = 0, world_size: int = 1) -> None:
        _check(cfg)
        _check_shard(rank, world_size)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.docs, self.bos, self.eos, self.pad = docs, bos, eos, pad
        self._n_docs = len(docs)
        self.skips = SkipLog()
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
        self.n_batches = math.ceil(len(pieces) / cfg.batch_size)
        self._plan_epoch, self._plan = -1, None
        self._step = 0  # batches this rank has served
        self._batches = self._real = self._total = 0

    def _epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The batches of ``epoch``: lists of piece indices, similar lengths grouped together."""
        if epoch != self._plan_epoch:
            cfg = self.cfg
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, epoch]))
            order = rng.permutation(len(self.pieces))
            window = cfg.batch_size * cfg.bucket_batches
            batches = []
            for w in range(0, len(order), window):
                chunk = order[w:w + window]
                chunk = chunk[np.argsort(-self.pieces[chunk, 2], kind="stable")]
                batches += [chunk[b:b + cfg.batch_size] for b in range(0, len(chunk), cfg.batch_size)]
            self._plan = [batches[i] for i in rng.permutation(len(batches))]
            self._plan_epoch = epoch
        return self._plan

    def _piece(self, p: int) -> np.ndarray:
        i, s, n = self.pieces[p]
        d = np.asarray(self.docs[i], dtype=np.int64)
        full = np.concatenate([[self.bos], d, [self.eos]])
        return full[s:s + n]

    def _width(self, lengths) -> int:
        m = self.cfg.pad_multiple
        return min(self.cfg.seq_len, -(-max(lengths) // m) * m)

    def plan_padding(self, epoch: int = 0) -> float:
        """Padding fraction of all batches of ``epoch`` (every rank's)."""
        real = total = 0
        for b in self._epoch_plan(epoch):
            lens = self.pieces[b, 2] - 1
            real += int(lens.sum())
            total += self._width(lens) * self.cfg.batch_size
        return 1 - real / total

    def batch_pieces(self, step: int) -> np.ndarray:
        """Piece indices of this rank's batch number ``step``."""
        g = self.rank + self.world_size * step
        return self._epoch_plan(g // self.n_batches)[g % self.n_batches]

    def next_batch(self) -> Batch:
        B = self.cfg.batch_size
        idx = self.batch_pieces(self._step)
        rows = [self._piece(p) for p in idx]
        rows = [(r, np.ones(len(r) - 1, dtype=np.float32)) for r in rows]
        rows += [(np.zeros(0, dtype=np.int64), np.zeros(0))] * (B - len(rows))  # the epoch's last batch
        width = self._width([max(1, len(r) - 1) for r, _ in rows])
        self._step += 1
        self._batches += 1
        self._real += sum(max(0, len(r) - 1) for r, _ in rows)
        self._total += B * width
        return _to_batch(rows, width, [True] * B, self.pad)

    def state_dict(self) -> dict[str, Any]:
        return {**self._header(), "step": self._step, "batches": self._batches, "real": self._real,
                "total": self._total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_header(state)
        self._step, self._batches, self._real, self._total = (state[k] for k in ("step", "batches", "real", "total"))


# ---- lanes: long sequences read window by window -----------------------------------------------
class _LaneStream(_Base, abc.ABC):
    """Shared machinery of the linked and shuffled streams (see the module docstring)."""

    def __init__(self, cfg, *, pad: int, rank: int, world_size: int) -> None:
        _check(cfg)
        _check_shard(rank, world_size)
        self.cfg, self.rank, self.world_size, self.pad = cfg, rank, world_size, pad
        self._next = 0  # sequences this rank has opened
        self._lanes: list[list[int] | None] = [None] * cfg.batch_size  # [global sequence number, position]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._batches = self._real = self._total = 0

    @abc.abstractmethod
    def sequence(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """Global sequence ``g``: tokens (n,) and the loss weight of predicting each next token (n-1,)."""

    def _seq(self, g: int):
        if g not in self._cache:
            live = {lane[0] for lane in self._lanes if lane is not None}
            self._cache = {k: v for k, v in self._cache.items() if k in live}
            self._cache[g] = self.sequence(g)
        return self._cache[g]

    def next_batch(self) -> Batch:
        T = self.cfg.seq_len
        rows, reset = [], []
        for b in range(self.cfg.batch_size):
            if self._lanes[b] is None:
                self._lanes[b] = [self.rank + self.world_size * self._next, 0]
                self._next += 1
            g, pos = self._lanes[b]
            seq, w = self._seq(g)
            rows.append((seq[pos:pos + T + 1], w[pos:pos + T]))
            reset.append(pos == 0)
            pos += T
            self._lanes[b] = None if pos >= len(seq) - 1 else [g, pos]
        self._batches += 1
        self._real += sum(len(r) - 1 for r, _ in rows)
        self._total += T * len(rows)
        return _to_batch(rows, T, reset, self.pad)

    def state_dict(self) -> dict[str, Any]:
        return {**self._header(), "next": self._next, "lanes": [None if x is None else list(x) for x in self._lanes],
                "batches": self._batches, "real": self._real, "total": self._total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_header(state)
        self._next = state["next"]
        self._lanes = [None if x is None else list(x) for x in state["lanes"]]
        self._batches, self._real, self._total = state["batches"], state["real"], state["total"]
        self._cache = {}


class LinkedStream(_LaneStream):
    kind = "linked"

    def __init__(self, graph: LinkedGraph, cfg: LinkedConfig, *, bos: int, eos: int, pad: int,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(cfg, pad=pad, rank=rank, world_size=world_size)
        self.graph, self.bos, self.eos = graph, bos, eos
        self._n_docs = len(graph)
        self.skips = graph.skips
        walks = []
        longest = (0, None)
        for r in graph.roots(cfg.roots):
            pages, n = graph.walk(int(r), cfg.min_tokens)
            if n >= cfg.min_tokens:
                walks.append(pages)
            else:
                longest = max(longest, (n, graph.ids[r]))
                self.skips.skip(f"walk shorter than min_tokens={cfg.min_tokens}", f"root {graph.ids[r]} ({n} tokens)")
        if not walks:
            raise ValueError(f"linked stream: no walk reaches min_tokens={cfg.min_tokens} tokens (longest: "
                             f"{longest[0]} tokens from {longest[1]!r}; {len(graph)} pages); lower min_tokens or "
                             f"use a larger graph")
        if len(walks) < world_size:
            raise ValueError(f"linked stream: {len(walks)} sequences cannot be shared by {world_size} ranks")
        self.walks = walks
        log.info("linked stream: %d sequences, %s", len(walks), self.skips.summary())

    def sequence(self, g: int):
        n = len(self.walks)
        epoch, k = divmod(g, n)
        order = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, epoch])).permutation(n)
        pages = self.walks[order[k]]
        parts = [np.asarray([self.bos], dtype=np.int64)]
        for p in pages:
            parts += [np.asarray(self.graph.tokens[p], dtype=np.int64), np.asarray([self.eos], dtype=np.int64)]
        seq = np.concatenate(parts)
        if self.cfg.max_tokens:
            seq = seq[:self.cfg.max_tokens]
        return seq, np.ones(len(seq) - 1, dtype=np.float32)

    def sequence_root(self, g: int) -> str:
        """The id of the page that starts global sequence ``g``."""
        n = len(self.walks)
        epoch, k = divmod(g, n)
        order = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, epoch])).permutation(n)
        return self.graph.ids[self.walks[order[k]][0]]


class ShuffledStream(_LaneStream):
    kind = "shuffled"

    def __init__(self, docs: Sequence[np.ndarray], cfg: ShuffledConfig, stats, *, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(cfg, pad=stats.special_ids["[PAD]"], rank=rank, world_size=world_size)
        self.vocab_stats = stats
        self.bos, self.eos = stats.special_ids["[BOS]"], stats.special_ids["[EOS]"]
        self._n_docs = len(docs)
        self.skips = SkipLog()
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

    def language(self, g: int):
        """The :class:`VocabShuffle` of global sequence ``g``."""
        from .shuffled import VocabShuffle

        c = self.cfg
        return VocabShuffle(self.vocab_stats, [c.seed, g], fission=c.fission, fusion=c.fusion, pool=c.pool)

    def original_text(self, g: int) -> np.ndarray:
        """The holdout text of sequence ``g`` in the original language (documents joined by [EOS])."""
        rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, g, 1]))
        parts, n = [], 0
        for i in rng.permutation(len(self.docs)):
            parts += [np.asarray(self.docs[i], dtype=np.int64), np.asarray([self.eos], dtype=np.int64)]
            n += len(self.docs[i]) + 1
            if n >= self.cfg.min_tokens:
                break
        return np.concatenate(parts)

    def ramp_weights(self, n: int) -> np.ndarray:
        c = self.cfg
        if c.ramp_tokens <= 0:
            return np.ones(n, dtype=np.float32)
        x = np.minimum(1.0, (np.arange(n) + 1) / c.ramp_tokens)
        if c.ramp == "cosine":
            x = 0.5 - 0.5 * np.cos(np.pi * x)
        return x.astype(np.float32)

    def sequence(self, g: int):
        lang = self.language(g)
        header = lang.rosetta(self.cfg.rosetta, self.cfg.rosetta_top)
        text = lang.apply(self.original_text(g))
        seq = np.concatenate([[self.bos], header, text]).astype(np.int64)
        # Position j predicts seq[j+1]: the header's targets are seq[1 : 1+len(header)].
        w = np.concatenate([np.full(len(header), self.cfg.header_weight, dtype=np.float32),
                            self.ramp_weights(len(text))])
        return seq, w

    def header_length(self, g: int) -> int:
        return len(self.language(g).rosetta(self.cfg.rosetta, self.cfg.rosetta_top))


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


def build_stream(kind: str, *, data, tokenizer=None, split: str | None = None, rank: int = 0,
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
