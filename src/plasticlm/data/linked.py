"""A linked-articles graph ``{id, text, cites: [...]}`` and its breadth-first walks (DESIGN 4).

A walk starts at a root page, then reads the pages it cites in the order listed, then the pages
those cite, and so on (breadth first, each page once), until the concatenation holds at least
``min_tokens`` tokens. A walk that runs out of pages first is too short: that root is skipped
and counted. Defects of the graph are handled and reported, never fatal deep inside a worker:

- a citation of an id the graph lacks (dangling), or of a page in another split: dropped, counted;
- a page citing itself, or cycles: a walk reads each page once, so they cannot loop; counted;
- a duplicate id: the later page is skipped, counted.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .corpus import Document, SkipLog

log = logging.getLogger("plasticlm.data")


@dataclass
class LinkedGraph:
    ids: list[str]
    tokens: Sequence[np.ndarray]  # page i's token ids, without separators
    cites: list[list[int]]  # resolved citations, as page indices, in the order listed
    skips: SkipLog = field(default_factory=SkipLog)
    n_dangling: int = 0
    n_self: int = 0

    @classmethod
    def build(cls, ids: Sequence[str], tokens: Sequence[np.ndarray], cites: Sequence[Sequence[str]],
              outside: set[str] | frozenset = frozenset(), skips: SkipLog | None = None,
              aliases: dict[str, str] | None = None) -> "LinkedGraph":
        """Resolve citation ids to indices. ``outside``: ids that exist in another split;
        ``aliases``: id -> id it stands for (a dropped duplicate -> the page kept)."""
        skips = skips if skips is not None else SkipLog()
        aliases = aliases or {}
        index: dict[str, int] = {}
        keep: list[int] = []
        for i, pid in enumerate(ids):
            if pid in index:
                skips.skip("duplicate page id", pid)
                continue
            index[pid] = len(keep)
            keep.append(i)
        resolved, n_dangling, n_self = [], 0, 0
        for i in keep:
            out = []
            for c in cites[i]:
                c = aliases.get(c, c)
                j = index.get(c)
                if j is None:
                    if c in outside:
                        skips.skip("citation of a page in another split", f"{ids[i]} -> {c}")
                    else:
                        n_dangling += 1
                        skips.skip("dangling citation (no page with that id)", f"{ids[i]} -> {c}")
                    continue
                if j == index[ids[i]]:
                    n_self += 1
                    skips.skip("page cites itself", ids[i])
                    continue
                out.append(j)
            resolved.append(list(dict.fromkeys(out)))  # a page cited twice is read once
        return cls([ids[i] for i in keep], [tokens[i] for i in keep], resolved, skips, n_dangling, n_self)

    @classmethod
    def from_documents(cls, docs: Iterable[Document], tokenizer, skips: SkipLog | None = None) -> "LinkedGraph":
        docs = list(docs)
        enc = tokenizer.encode_batch if hasattr(tokenizer, "encode_batch") else (lambda ts: [tokenizer.encode(t) for t in ts])
        tokens = [np.asarray(t, dtype=np.int64) for t in enc([d.text for d in docs])]
        return cls.build([d.id for d in docs], tokens, [d.cites for d in docs], skips=skips)

    @classmethod
    def from_prepared(cls, directory, split: str = "train") -> "LinkedGraph":
        """The graph of one split of a directory written by ``plasticlm prepare``: citations of
        pages in other splits are dropped and counted as such, not as dangling."""
        from .corpus import SPLITS
        from .shards import TokenShard, read_meta

        meta = read_meta(directory)
        shard = TokenShard(directory, split)
        outside = set()
        for other in SPLITS:
            if other != split:
                outside.update(TokenShard(directory, other).ids)
        return cls.build(shard.ids, shard, shard.cites, outside=outside, aliases=meta.get("aliases", {}))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_citations(self) -> int:
        return sum(len(c) for c in self.cites)

    def walk(self, root: int, min_tokens: int, sep_tokens: int = 1) -> tuple[list[int], int]:
        """Pages of the walk from ``root`` (BFS) until >= ``min_tokens`` tokens, and its length
        (each page costs its tokens plus ``sep_tokens``). Stops early when the pages run out."""
        seen = {root}
        queue = deque([root])
        pages, total = [], 1  # the leading [BOS]
        while queue and total < min_tokens:
            p = queue.popleft()
            pages.append(p)
            total += len(self.tokens[p]) + sep_tokens
            for c in self.cites[p]:
                if c not in seen:
                    seen.add(c)
                    queue.append(c)
        return pages, total

    def pages_on_cycles(self) -> int:
        """Pages that lie on a citation cycle (strongly connected components larger than one)."""
        # Iterative Tarjan: recursion would overflow on long citation chains.
        n = len(self)
        index, low, on_stack = [-1] * n, [0] * n, [False] * n
        stack, counter, on_cycle = [], 0, 0
        for s in range(n):
            if index[s] != -1:
                continue
            work = [(s, 0)]
            while work:
                v, i = work.pop()
                if i == 0:
                    index[v] = low[v] = counter
                    counter += 1
                    stack.append(v)
                    on_stack[v] = True
                recurse = False
                for k in range(i, len(self.cites[v])):
                    w = self.cites[v][k]
                    if index[w] == -1:
                        work.append((v, k + 1))
                        work.append((w, 0))
                        recurse = True
                        break
                    if on_stack[w]:
                        low[v] = min(low[v], index[w])
                if recurse:
                    continue
                if low[v] == index[v]:
                    size = 0
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        size += 1
                        if w == v:
                            break
                    if size > 1:
                        on_cycle += size
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
        return on_cycle

    def roots(self, which: str = "citing") -> np.ndarray:
        if which == "all":
            return np.arange(len(self))
        if which == "citing":
            return np.asarray([i for i in range(len(self)) if self.cites[i]], dtype=np.int64)
        raise ValueError(f"roots must be 'citing' or 'all', got {which!r}")

    def sequence_report(self, min_tokens: int, roots: str = "citing") -> dict:
        """How many walks reach ``min_tokens``, and the distribution of their tokens and pages."""
        lens, pages, short = [], [], 0
        for r in self.roots(roots):
            p, n = self.walk(int(r), min_tokens)
            if n >= min_tokens:
                lens.append(n)
                pages.append(len(p))
            else:
                short += 1
        q = (0, 10, 50, 90, 100)

        def quant(a):
            return {f"p{k}": int(v) for k, v in zip(q, np.percentile(a, q))} if a else {}
        return {"pages": len(self), "citations": self.n_citations, "dangling_citations": self.n_dangling,
                "self_citations": self.n_self, "pages_on_cycles": self.pages_on_cycles(),
                "min_tokens": min_tokens, "roots": roots, "sequences": len(lens), "roots_too_short": short,
                "tokens_per_sequence": quant(lens), "pages_per_sequence": quant(pages)}
