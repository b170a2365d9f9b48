"""The shuffled-vocabulary language: a new, exactly invertible code over the same token ids.

``VocabShuffle(stats, seed, fission=..., fusion=...)`` draws one new language from the
vocabulary's categories and frequencies (:class:`VocabStats`); ``seed`` fixes it completely.

- **Permutation within categories**: word-initial pieces map to word-initial ids, continuation
  pieces to continuation ids, digits/punctuation to digits/punctuation (and undecodable byte
  pieces among themselves). Special tokens ([BOS], [SEP], ...) map to themselves.
- **Fission**: a share ``fission`` of the ``pool`` most frequent tokens is written with two ids,
  ``(p, q)``. The prefix ids ``p`` (a few per category, shared by many split tokens) never stand
  alone, so the code stays prefix-free: whenever ``p`` is read, the next id completes the unit.
- **Fusion**: ``fusion * pool`` pairs, drawn from the ``pool`` most frequent adjacent pairs, are
  written with one id each (greedily, left to right). Only split tokens free ids (for prefixes
  and fused pairs); where the frequent split tokens free too few, the rarest tokens of the
  category are split as well to make room (``n_room`` of them; ``n_fused`` says how many pairs
  were fused, which falls short of the share asked only in a tiny vocabulary).

Both change the unigram frequencies the new ids show (a prefix's count is the sum of its tokens'
counts, a fused pair takes counts from both members), which is what defeats a frequency-analysis
attack; ``benchmarks/frequency_attack.py`` measures how much.

Interface used by the pretraining stream, the evaluation suite and the AUNN comparison:

- ``apply(ids) -> ids``: original language -> new language.
- ``invert(ids) -> ids``: the exact inverse; ``invert(apply(x)) == x`` for every ``x``. Ids that
  are not a code of this language raise ``ValueError`` naming the position.
- ``rosetta(n=2000, top=10000) -> ids``: the header of translations: ``n`` tokens drawn (by the
  seed) from the ``top`` most frequent, laid out as
  ``[CTRL0] (t [SEP] code(t) [CTRL1])* [CTRL2]`` with ``t`` in the original language and
  ``code(t)`` (one or two ids) in the new one.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..tokenizer import CATEGORY_NAMES, CONTINUATION, SPECIAL, WORD_INITIAL

ROSETTA_OPEN, ROSETTA_SEP, ROSETTA_NEXT, ROSETTA_CLOSE = "[CTRL0]", "[SEP]", "[CTRL1]", "[CTRL2]"


@dataclass
class VocabStats:
    """What a shuffled language is drawn from: categories, unigram and pair counts of a corpus."""

    categories: np.ndarray  # (V,) int8: SPECIAL, WORD_INITIAL, CONTINUATION, DIGIT_PUNCT, OTHER
    counts: np.ndarray  # (V,) int64: unigram counts
    pairs: np.ndarray  # (P, 2) int64: most frequent adjacent pairs without specials, by count desc
    pair_counts: np.ndarray  # (P,) int64
    special_ids: dict[str, int]

    @property
    def vocab_size(self) -> int:
        return len(self.categories)

    @classmethod
    def from_documents(cls, tokenizer, docs: Iterable[np.ndarray], max_pairs: int = 50_000) -> "VocabStats":
        """Count unigrams and within-document pairs of token arrays encoded by ``tokenizer``."""
        cats = tokenizer.token_categories()
        V = len(cats)
        arrays = [np.asarray(d, dtype=np.int64) for d in docs]
        counts = np.bincount(np.concatenate(arrays), minlength=V)[:V] if arrays else np.zeros(V, dtype=np.int64)
        keys = [d[:-1] * V + d[1:] for d in arrays if len(d) > 1]
        special = np.flatnonzero(cats == SPECIAL)
        if keys:
            k, c = np.unique(np.concatenate(keys), return_counts=True)
            a, b = k // V, k % V
            keep = ~(np.isin(a, special) | np.isin(b, special))
            k, c = k[keep], c[keep]
            top = np.argsort(-c, kind="stable")[:max_pairs]
            pairs = np.stack([k[top] // V, k[top] % V], axis=1)
            pair_counts = c[top]
        else:
            pairs, pair_counts = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        specials = dict(tokenizer.specials)
        return cls(cats, counts, pairs, pair_counts, specials)


class VocabShuffle:
    """One new language (see the module docstring); deterministic in ``(stats, seed, options)``."""

    def __init__(self, stats: VocabStats, seed: int | Sequence[int], *, fission: float = 0.2,
                 fusion: float = 0.2, pool: int = 1000, prefix_share: float = 0.1) -> None:
        if not (0 <= fission <= 1 and 0 <= fusion <= 1 and 0 < prefix_share <= 1 and pool >= 0):
            raise ValueError(f"need 0 <= fission, fusion <= 1, 0 < prefix_share <= 1, pool >= 0; got "
                             f"fission={fission}, fusion={fusion}, prefix_share={prefix_share}, pool={pool}")
        self.stats = stats
        self.seed = seed
        V = self.V = stats.vocab_size
        cats = stats.categories
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        by_freq = np.argsort(-stats.counts, kind="stable")
        self._by_freq = by_freq[cats[by_freq] != SPECIAL]  # non-special ids, most frequent first

        candidates = self._by_freq[:pool]
        fissioned = rng.choice(candidates, round(fission * len(candidates)), replace=False)
        top_pairs = stats.pairs[:pool]
        chosen = np.sort(rng.choice(len(top_pairs), min(len(top_pairs), round(fusion * pool)), replace=False))
        fuse_pairs = [(int(top_pairs[i, 0]), int(top_pairs[i, 1])) for i in chosen]
        is_split = np.zeros(V, dtype=bool)
        is_split[fissioned] = True
        # A fused pair needs an id of its own, and only split tokens free ids. Where the frequent
        # tokens split above free too few, the rarest tokens of the category are split as well:
        # their two-id codes cost next to nothing and barely move any frequency rank.
        for c, k in Counter(int(cats[x]) for x, _ in fuse_pairs).items():
            ids_c = np.flatnonzero(cats == c)
            rare = ids_c[np.argsort(stats.counts[ids_c], kind="stable")]
            rare = rare[~is_split[rare]]
            have, extra = int(is_split[ids_c].sum()), 0
            while have + extra - math.ceil(prefix_share * (have + extra)) < k and extra < len(rare) // 2:
                extra += 1
            is_split[rare[:extra]] = True
        split = np.flatnonzero(is_split)
        self.n_split, self.n_room = len(fissioned), len(split) - len(fissioned)

        # Code tables: a token's code is single[t], or (first[t], second[t]) when split.
        self.single = np.full(V, -1, dtype=np.int64)
        self.first = np.full(V, -1, dtype=np.int64)
        self.second = np.full(V, -1, dtype=np.int64)
        self.inverse = np.full(V, -1, dtype=np.int64)  # single-id code -> token
        specials = np.flatnonzero(cats == SPECIAL)
        self.single[specials] = specials
        self.inverse[specials] = specials
        prefixes_of, free_of = {}, {}
        for c in np.unique(cats):
            if c == SPECIAL:
                continue
            ids = np.flatnonzero(cats == c)
            slots = rng.permutation(ids)
            keep = ids[~is_split[ids]]
            self.single[keep] = slots[:len(keep)]
            self.inverse[slots[:len(keep)]] = keep
            free = slots[len(keep):]  # one freed id per split token of this category
            n_pre = math.ceil(prefix_share * len(free)) if len(free) else 0
            prefixes_of[c], free_of[c] = free[:n_pre], list(free[n_pre:])

        self.is_prefix = np.zeros(V, dtype=bool)
        for c, pre in prefixes_of.items():
            self.is_prefix[pre] = True
        # Second ids are ordinary single-id codes (never prefixes), of a category that reads naturally
        # after the prefix: continuation pieces after a word piece, the same category otherwise.
        fission_keys, fission_tokens = [], []
        for c, pre in prefixes_of.items():
            toks = split[cats[split] == c]
            if len(toks) == 0:
                continue
            q_cat = CONTINUATION if c in (WORD_INITIAL, CONTINUATION) else c
            pool_q = self.single[(cats == q_cat) & (self.single >= 0)]
            if len(pool_q) < math.ceil(len(toks) / len(pre)):
                pool_q = self.single[(cats != SPECIAL) & (self.single >= 0)]
            group = rng.integers(0, len(pre), len(toks))
            for g, p in enumerate(pre):
                members = toks[group == g]
                if len(members) > len(pool_q):
                    raise ValueError(f"vocabulary too small to split {len(members)} tokens behind one prefix "
                                     f"(category {CATEGORY_NAMES[c]}); lower fission or raise prefix_share")
                qs = rng.choice(pool_q, len(members), replace=False)
                self.first[members], self.second[members] = p, qs
                fission_keys.append(p * V + qs)
                fission_tokens.append(members)
        fk = np.concatenate(fission_keys) if fission_keys else np.zeros(0, dtype=np.int64)
        ft = np.concatenate(fission_tokens) if fission_tokens else np.zeros(0, dtype=np.int64)
        order = np.argsort(fk)
        self._fission_keys, self._fission_tokens = fk[order], ft[order]

        # Fusion: each chosen pair gets a freed id of its first token's category.
        fuse_keys, fuse_ids, fused = [], [], []
        for x, y in fuse_pairs:
            free = free_of.get(cats[x], [])
            if free:
                z = int(free.pop())
                fuse_keys.append(x * V + y)
                fuse_ids.append(z)
                fused.append((x, y))
        self.n_fused = len(fused)
        fuse_keys = np.asarray(fuse_keys, dtype=np.int64)
        order = np.argsort(fuse_keys)
        self._fuse_keys = fuse_keys[order]
        self._fuse_ids = np.asarray(fuse_ids, dtype=np.int64)[order]
        self.fused_pair = np.full((V, 2), -1, dtype=np.int64)  # fusion id -> (x, y)
        for (x, y), z in zip(fused, fuse_ids):
            self.fused_pair[z] = (x, y)
        self.is_fused = self.fused_pair[:, 0] >= 0

    # ---- the code ---------------------------------------------------------------------------
    def code(self, token: int) -> list[int]:
        """The new-language ids of one original token (one id, or two for a split token)."""
        t = int(token)
        return [int(self.single[t])] if self.single[t] >= 0 else [int(self.first[t]), int(self.second[t])]

    def _fuse_positions(self, x: np.ndarray) -> np.ndarray:
        """Start positions of the pairs the greedy left-to-right encoder fuses."""
        if len(self._fuse_keys) == 0 or len(x) < 2:
            return np.zeros(len(x), dtype=bool)
        keys = x[:-1] * self.V + x[1:]
        j = np.searchsorted(self._fuse_keys, keys).clip(max=len(self._fuse_keys) - 1)
        cand = np.append(self._fuse_keys[j] == keys, False)  # (N,)
        # Within a run of consecutive candidates starting at s, greedy takes s, s+2, s+4, ...
        idx = np.arange(len(x))
        run_start = np.maximum.accumulate(np.where(cand & ~np.roll(cand, 1) | (idx == 0) & cand, idx, 0))
        return cand & ((idx - run_start) % 2 == 0)

    def apply(self, ids, return_source: bool = False):
        """Original ids -> new-language ids, shape (M,). With ``return_source``, also (M,) the
        position of the original token each new id comes from and (M,) whether that unit is 1:1."""
        x = np.asarray(ids, dtype=np.int64)
        if x.size and (x.min() < 0 or x.max() >= self.V):
            raise ValueError(f"token ids must lie in [0, {self.V}), got {x.min()}..{x.max()}")
        fuse = self._fuse_positions(x)
        consumed = np.roll(fuse, 1)
        if len(consumed):
            consumed[0] = False
        starts = np.flatnonzero(~consumed)  # original positions that open a unit
        t = x[starts]
        is_fuse = fuse[starts]
        is_split = ~is_fuse & (self.single[t] < 0)
        lens = np.where(is_split, 2, 1)
        offs = np.cumsum(lens) - lens
        out = np.empty(int(lens.sum()), dtype=np.int64)
        first = np.where(is_split, self.first[t], self.single[t])
        if is_fuse.any():
            f = starts[is_fuse]
            keys = x[f] * self.V + x[f + 1]
            first[is_fuse] = self._fuse_ids[np.searchsorted(self._fuse_keys, keys)]
        out[offs] = first
        out[offs[is_split] + 1] = self.second[t[is_split]]
        if not return_source:
            return out
        src = np.repeat(starts, lens)
        one_to_one = np.repeat(~is_fuse & ~is_split, lens)
        return out, src, one_to_one

    def invert(self, ids) -> np.ndarray:
        """New-language ids -> original ids (exact inverse of :meth:`apply`)."""
        y = np.asarray(ids, dtype=np.int64)
        if y.size == 0:
            return y.copy()
        if y.min() < 0 or y.max() >= self.V:
            raise ValueError(f"token ids must lie in [0, {self.V}), got {y.min()}..{y.max()}")
        pre = self.is_prefix[y]
        if pre[-1]:
            raise ValueError(f"position {len(y) - 1}: the sequence ends inside a two-id code (prefix {y[-1]})")
        second = np.roll(pre, 1)
        second[0] = False
        bad = np.flatnonzero(pre & second)
        if len(bad):
            raise ValueError(f"position {bad[0]}: prefix id {y[bad[0]]} follows a prefix; not a code of this language")
        starts = np.flatnonzero(~second)
        u = y[starts]
        is_pre, is_fuse = pre[starts], self.is_fused[u]
        out_first = self.inverse[u].copy()
        if is_pre.any():
            keys = u[is_pre] * self.V + y[starts[is_pre] + 1]
            j = np.searchsorted(self._fission_keys, keys).clip(max=max(len(self._fission_keys) - 1, 0))
            ok = (self._fission_keys[j] == keys) if len(self._fission_keys) else np.zeros(len(keys), bool)
            if not ok.all():
                p = starts[is_pre][~ok][0]
                raise ValueError(f"position {p}: ({y[p]}, {y[p + 1]}) is not a two-id code of this language")
            out_first[is_pre] = self._fission_tokens[j]
        out_first[is_fuse] = self.fused_pair[u[is_fuse], 0]
        unknown = (out_first < 0)
        if unknown.any():
            p = starts[np.flatnonzero(unknown)[0]]
            raise ValueError(f"position {p}: id {y[p]} is not a code of this language")
        lens = np.where(is_fuse, 2, 1)
        offs = np.cumsum(lens) - lens
        out = np.empty(int(lens.sum()), dtype=np.int64)
        out[offs] = out_first
        out[offs[is_fuse] + 1] = self.fused_pair[u[is_fuse], 1]
        return out

    def rosetta(self, n: int = 2000, top: int = 10000) -> np.ndarray:
        """The translation header: ``n`` of the ``top`` most frequent tokens with their codes."""
        top = min(top, len(self._by_freq))
        if not 0 <= n <= top:
            raise ValueError(f"rosetta: cannot draw n={n} translations from the {top} most frequent tokens")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng(np.random.SeedSequence(self._seed_list() + [0x505E77A]))
        words = rng.choice(self._by_freq[:top], n, replace=False)
        sp = self.stats.special_ids
        out = [sp[ROSETTA_OPEN]]
        for t in words:
            out += [int(t), sp[ROSETTA_SEP], *self.code(t), sp[ROSETTA_NEXT]]
        out[-1] = sp[ROSETTA_CLOSE]
        return np.asarray(out, dtype=np.int64)

    def _seed_list(self) -> list[int]:
        return [int(self.seed)] if np.isscalar(self.seed) else [int(s) for s in self.seed]

    def __repr__(self) -> str:
        return (f"VocabShuffle(V={self.V}, seed={self.seed}, split={self.n_split}, fused={self.n_fused}, "
                f"room={self.n_room})")


# ---- the frequency-analysis attack (benchmarks/frequency_attack.py) ----------------------------
def frequency_attack(new_ids: np.ndarray, reference_counts: np.ndarray, categories: np.ndarray | None = None
                     ) -> np.ndarray:
    """Guess each new id's meaning by unigram rank: the k-th most frequent new id is read as the
    k-th most frequent token of the reference (unshuffled) corpus. With ``categories``, ranks are
    matched within each category (the attacker knows the permutation keeps categories).
    Returns guess (V,): original id per new id (specials map to themselves)."""
    V = len(reference_counts)
    seen = np.bincount(np.asarray(new_ids, dtype=np.int64), minlength=V)
    guess = np.arange(V)
    groups = [np.arange(V)] if categories is None else [np.flatnonzero(categories == c) for c in np.unique(categories)]
    for g in groups:
        if categories is not None and categories[g[0]] == SPECIAL:
            continue
        new_rank = g[np.argsort(-seen[g], kind="stable")]
        ref_rank = g[np.argsort(-reference_counts[g], kind="stable")]
        guess[new_rank] = ref_rank
    return guess


def attack_recovery(shuffle: VocabShuffle, original: np.ndarray, guess: np.ndarray) -> float:
    """Share of original tokens the attacker reads right: a token counts when its unit is one id
    to one id and the attacker's guess for that id is the token (split and fused units cannot be
    read right by a one-to-one attacker)."""
    x = np.asarray(original, dtype=np.int64)
    new, src, one = shuffle.apply(x, return_source=True)
    right = one & (guess[new] == x[src])
    return float(right.sum()) / max(1, len(x))
