"""Synthetic recall tasks, the positive controls of a memory: generators and their streams.

- **MQAR**, multi-query associative recall as Zoology defines it (Arora et al. 2023): a sequence
  of ``seq_len`` tokens starts with ``pairs`` key-value pairs (keys from one half of the task
  vocabulary without id 0, values from the other half, no key repeated); each key is queried
  once later, at a gap drawn from a power law (``power_a``), and the target after each query is
  its value. Every other position holds a random token. Only the value positions are scored.
  With Zoology's vocabulary of 8k a random token is almost never a key; with a small task
  vocabulary it often is, and a key that reappears among the fillers followed by a value-range
  token before its query is a *distractor* (:func:`distractors`): ``noise='not_keys'`` draws the
  fillers without the row's keys, so every query has one answer.
- **Gap recall**, for exact against truncated BPTT: ``pairs`` key-value pairs, then ``gap``
  random filler tokens (from a third range of the vocabulary, so they never look like keys),
  then every key once more in a random order, each followed by its value. Only the values after
  the queries are scored, so the loss needs what was written ``gap`` tokens earlier.

Both are in task ids ``0..vocab-1``; :func:`to_tokens` maps them into a tokenizer's ids.
:class:`RecallStream` serves them as trainer batches (whole sequences, weight 1 at the scored
positions and 0 elsewhere), one batch per seeded draw, so its cursor is one counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .batch import Batch

IGNORE = -100  # target of an unscored position in the generators' output


def mqar(n: int, seq_len: int, pairs: int, vocab: int, power_a: float, seed,
         noise: str = "vocab") -> tuple[torch.Tensor, torch.Tensor]:
    """Zoology's generator in task ids: (inputs (n, T), targets (n, T) with IGNORE off the values).
    ``noise``: 'vocab' fills the free positions from the whole task vocabulary (Zoology's), 'not_keys'
    from it less the row's keys (the draw is the same; only fillers that hit a key are drawn again)."""
    if noise not in ("vocab", "not_keys"):
        raise ValueError(f"mqar noise must be 'vocab' or 'not_keys', got {noise!r}")
    rng = np.random.default_rng(seed)
    context = 2 * pairs
    keys = np.stack([rng.choice(np.arange(1, vocab // 2), pairs, replace=False) for _ in range(n)])
    values = np.stack([rng.choice(np.arange(vocab // 2, vocab), pairs, replace=False) for _ in range(n)])
    kvs = np.zeros((n, context), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values
    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np.stack([rng.choice(space, pairs, replace=False, p=p) for _ in range(n)])
    queries = np.zeros((n, seq_len - context + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((n, seq_len + 1), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context + 1, values, axis=1)
    x, y = torch.from_numpy(examples[:, :-1]), torch.from_numpy(labels[:, 1:])
    fill = torch.from_numpy(rng.integers(0, vocab, x.shape))
    if noise == "not_keys":
        row_keys = torch.from_numpy(keys)
        while (hit := (fill[:, :, None] == row_keys[:, None, :]).any(-1) & (x == 0)).any():
            fill[hit] = torch.from_numpy(rng.integers(0, vocab, int(hit.sum())))
    return torch.where(x == 0, fill, x), y


def distractors(x: torch.Tensor, y: torch.Tensor, pairs: int, vocab: int) -> torch.Tensor:
    """MQAR's scored positions (bool, like ``y``) whose query key appeared earlier among the fillers
    followed by a value-range token: a pair that contradicts the key's own and that a model must
    learn to ignore. ``x``, ``y`` in task ids, from :func:`mqar`."""
    n, T = x.shape
    pos = torch.arange(T)
    follows_value = torch.zeros_like(x, dtype=torch.bool)
    follows_value[:, :-1] = x[:, 1:] >= vocab // 2
    # earlier[b, q, p]: position p (a filler, before q) holds q's token followed by a value-range token
    earlier = ((x[:, None, :] == x[:, :, None]) & follows_value[:, None, :]
               & (pos[None, :] < pos[:, None])[None] & (pos >= 2 * pairs)[None, None, :])
    return earlier.any(-1) & (y != IGNORE)

def gap_recall(n: int, pairs: int, gap: int, vocab: int, seed, fillers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (n, 4 pairs + gap - 1), targets with IGNORE off the recalled values). Keys, values
    and fillers come from the three thirds of the task vocabulary; ``fillers`` > 0 draws the gap
    from only that many filler tokens (1: one token repeated), 0 from the whole third."""
    rng = np.random.default_rng(seed)
    third = vocab // 3
    if third < pairs:
        raise ValueError(f"gap recall: {pairs} distinct keys need vocab >= {3 * pairs}, got {vocab}")
    keys = np.stack([rng.choice(third, pairs, replace=False) for _ in range(n)])
    values = rng.integers(third, 2 * third, (n, pairs))
    filler = rng.integers(2 * third, 2 * third + (min(fillers, vocab - 2 * third) or vocab - 2 * third), (n, gap))
    order = np.argsort(rng.random((n, pairs)), axis=1)
    kv = np.stack([keys, values], axis=2).reshape(n, 2 * pairs)
    qk, qv = np.take_along_axis(keys, order, 1), np.take_along_axis(values, order, 1)
    queries = np.stack([qk, qv], axis=2).reshape(n, 2 * pairs)
    seq = np.concatenate([kv, filler, queries], axis=1)  # (n, 4 pairs + gap)
    x = torch.from_numpy(seq[:, :-1])
    y = torch.full_like(x, IGNORE)
    start = 2 * pairs + gap
    y[:, start::2] = torch.from_numpy(seq[:, start + 1::2])  # after each query key: its value
    return x, y


def to_tokens(x: torch.Tensor, y: torch.Tensor, ids: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Task ids -> token ids (``ids[i]`` is the token of task id i; None keeps them)."""
    if ids is None:
        return x, y
    table = torch.as_tensor(list(ids))
    return table[x], torch.where(y == IGNORE, y, table[y.clamp(min=0)])


@dataclass
class RecallConfig:
    """Options of the 'mqar' and 'gap_recall' stream kinds (``data.options``)."""

    task: str = "mqar"
    """'mqar' or 'gap_recall'."""
    pairs: list[int] = field(default_factory=lambda: [4, 8])
    """Key-value pairs per sequence; a batch's rows are split evenly over them."""
    vocab: int = 256
    """Task vocabulary (first ids of the tokenizer, or ``ids``)."""
    power_a: float = 0.01
    """mqar: the power law of the query gaps (Zoology's default)."""
    noise: str = "vocab"
    """mqar: what fills the free positions: 'vocab' (Zoology's: any task token, so keys reappear as
    distractors when the vocabulary is small) or 'not_keys' (any but the row's keys)."""
    gap: int = 256
    """gap_recall: filler tokens between the pairs and the queries."""
    fillers: int = 0
    """gap_recall: distinct filler tokens (0: a third of the task vocabulary; 1: one token repeated)."""
    ids: list[int] | None = None
    """Token id of each task id (None: the task ids themselves)."""

    def __post_init__(self) -> None:
        if self.task not in ("mqar", "gap_recall"):
            raise ValueError(f"recall task must be 'mqar' or 'gap_recall', got {self.task!r}")
        if self.noise not in ("vocab", "not_keys"):
            raise ValueError(f"recall noise must be 'vocab' or 'not_keys', got {self.noise!r}")
        if not self.pairs or any(not isinstance(p, int) or p < 1 for p in self.pairs):
            raise ValueError(f"recall pairs must be a non-empty list of positive integers, got {self.pairs!r}")
        if self.ids is not None and len(self.ids) < self.vocab:
            raise ValueError(f"recall ids map {len(self.ids)} task ids, the task vocabulary has {self.vocab}")

    def length(self, seq_len: int) -> int:
        """Tokens per sequence."""
        return seq_len if self.task == "mqar" else 4 * max(self.pairs) + self.gap - 1

    def check(self, seq_len: int) -> None:
        for p in self.pairs:
            if self.task == "mqar" and 4 * p > seq_len:
                raise ValueError(f"mqar: {p} pairs need seq_len >= {4 * p}, got {seq_len}")
            if self.task == "mqar" and p > self.vocab // 2 - 1:
                raise ValueError(f"mqar: {p} distinct keys need vocab >= {2 * p + 2}, got {self.vocab}")
        if self.task == "gap_recall" and len(set(self.pairs)) != 1:
            raise ValueError("gap_recall: every row of a batch has one length: give one number of pairs")

    def sample(self, n: int, seq_len: int, pairs: int, seed) -> tuple[torch.Tensor, torch.Tensor]:
        """n sequences with ``pairs`` pairs, in token ids."""
        if self.task == "mqar":
            x, y = mqar(n, seq_len, pairs, self.vocab, self.power_a, seed, self.noise)
        else:
            x, y = gap_recall(n, pairs, self.gap, self.vocab, seed, self.fillers)
        return to_tokens(x, y, self.ids)


class RecallStream:
    """Batches of a recall task: batch k of rank r is drawn with seed (seed, r, k)."""

    def __init__(self, cfg: RecallConfig, batch_size: int, seq_len: int, seed: int, rank: int = 0):
        cfg.check(seq_len)
        self.cfg, self.B, self.T, self.seed, self.rank = cfg, batch_size, seq_len, seed, rank
        self.k = 0

    def next_batch(self) -> Batch:
        per = -(-self.B // len(self.cfg.pairs))
        xs, ys = zip(*(self.cfg.sample(per, self.T, p, [self.seed, self.rank, self.k, i])
                       for i, p in enumerate(self.cfg.pairs)))
        x, y = torch.cat(xs)[:self.B], torch.cat(ys)[:self.B]
        self.k += 1
        weights = (y != IGNORE).float()
        return Batch(x, torch.where(y == IGNORE, x, y), weights, torch.ones(self.B, dtype=torch.bool))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.cfg.task, "k": self.k, "rows": self.B}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.cfg.task or state.get("rows") != self.B:
            raise ValueError(f"stream state is for {state.get('kind')!r} with {state.get('rows')} rows, this is "
                             f"{self.cfg.task!r} with {self.B}")
        self.k = state["k"]
