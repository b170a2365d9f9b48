"""Perplexity, bits per byte and word perplexity, each document streamed once through the state.

Definitions follow lm-evaluation-harness's ``loglikelihood_rolling`` tasks (wikitext): a
document's log-likelihood LL_d is the sum of log p over all its tokens, the first conditioned on
[BOS]; aggregates are corpus-level,

    word_perplexity = exp(-sum_d LL_d / sum_d words_d)      words_d = len(re.split(r"\\s+", doc))
    byte_perplexity = exp(-sum_d LL_d / sum_d bytes_d)      bytes_d = len(doc.encode("utf-8"))
    bits_per_byte   = -sum_d LL_d / sum_d bytes_d / ln 2

and ``token_perplexity = exp(-sum_d LL_d / sum_d tokens_d)`` beside them (tokenizer-dependent).
Unlike the harness's rolling windows, the recurrent state carries through the whole document:
no window resets. Loss against position is binned on a log scale up to the longest document.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .common import log_bins, score_targets, special
from .registry import Context
from .results import line_plot
from .text import documents, wikitext_detokenize

NAME = "perplexity"


@dataclass
class Config:
    source: str = "builtin"
    """'builtin' (held-out tail of the builtin corpus), 'wikitext' (hub, WikiText-103 test), or a .txt/.jsonl file."""
    max_docs: int = 0
    """Evaluate the first N documents only (0: all)."""
    max_doc_tokens: int = 0
    """Cut each document to this many tokens (0: never; the text is cut with it, so counts stay exact)."""
    batch_size: int = 8
    """Documents read side by side (right-padded: padding after a document never affects its scores)."""
    piece: int = 2048
    """Tokens per ``lm.score`` call; the state carries from one piece to the next."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(max_docs=6, max_doc_tokens=300, batch_size=3)

    def validate(self) -> None:
        for name in ("max_docs", "max_doc_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"perplexity.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("batch_size", "piece"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"perplexity.{name} must be a positive integer, got {getattr(self, name)!r}")


def count_words(doc: str) -> int:
    return len(re.split(r"\s+", doc))


def count_bytes(doc: str) -> int:
    return len(doc.encode("utf-8"))


def corpus_metrics(lls: list[float], tokens: list[int], words: list[int], nbytes: list[int]) -> dict[str, float]:
    """Corpus-level aggregates from per-document log-likelihoods (nats) and counts."""
    ll, t, w, b = sum(lls), sum(tokens), sum(words), sum(nbytes)
    return {
        "nll_per_token": -ll / t,
        "token_perplexity": math.exp(-ll / t),
        "word_perplexity": math.exp(-ll / w),
        "byte_perplexity": math.exp(-ll / b),
        "bits_per_byte": -ll / b / math.log(2),
    }


def document_nlls(lm, tokenizer, docs_ids: list[list[int]], batch_size: int, piece: int, progress: bool = False):
    """Per-document next-token NLL arrays (nats), each document read from a fresh state after [BOS]."""
    bos = special(tokenizer, "[BOS]")
    order = sorted(range(len(docs_ids)), key=lambda i: -len(docs_ids[i]))
    out: list[torch.Tensor | None] = [None] * len(docs_ids)
    bar = tqdm(total=sum(map(len, docs_ids)), desc="perplexity", unit="tok", disable=not progress)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        T = len(docs_ids[idx[0]])
        inputs = torch.full((len(idx), T), bos, dtype=torch.long)
        targets = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            ids = torch.tensor(docs_ids[i], dtype=torch.long)
            targets[r, :len(ids)] = ids
            inputs[r, 1:len(ids)] = ids[:-1]
        lp, _, _ = score_targets(lm, inputs, targets, lm.init_state(len(idx)), piece)
        for r, i in enumerate(idx):
            out[i] = -lp[r, :len(docs_ids[i])]
        bar.update(sum(len(docs_ids[i]) for i in idx))
    bar.close()
    return out


def run(ctx: Context, cfg: Config) -> dict:
    docs = documents(cfg.source)
    if cfg.max_docs:
        docs = docs[:cfg.max_docs]
    tok = ctx.tokenizer
    texts, ids = [], []  # texts: what words and bytes are counted on
    for d in docs:
        # WikiText: the detokenized page is scored, the raw page counted (as the harness does).
        e = tok.encode(wikitext_detokenize(d) if cfg.source == "wikitext" else d)
        if cfg.max_doc_tokens and len(e) > cfg.max_doc_tokens:
            e = e[:cfg.max_doc_tokens]
            d = tok.decode(e)  # a cut document is counted on the text actually scored
        if e:
            texts.append(d)
            ids.append(list(e))
    if not ids:
        raise ValueError(f"perplexity: source {cfg.source!r} gave no non-empty document")
    nlls = document_nlls(ctx.lm, tok, ids, cfg.batch_size, cfg.piece, ctx.progress)
    res = corpus_metrics([-float(n.sum()) for n in nlls], [len(i) for i in ids],
                         [count_words(t) for t in texts], [count_bytes(t) for t in texts])
    res.update(n_docs=len(ids), n_tokens=sum(map(len, ids)), n_words=sum(map(count_words, texts)),
               n_bytes=sum(map(count_bytes, texts)), source=cfg.source)

    # Loss against position (1-based token index within its document), log-scale bins.
    bins = []
    for lo, hi in log_bins(max(map(len, ids))):
        vals = torch.cat([n[lo - 1:hi - 1] for n in nlls])
        bins.append({"from": lo, "to": hi - 1, "tokens": int(vals.numel()),
                     "nll": float(vals.mean()) if vals.numel() else None})
    res["loss_by_position"] = bins
    mid = [math.sqrt(b["from"] * b["to"]) for b in bins]
    res["plots"] = [line_plot(ctx.out_dir / "perplexity_loss_by_position.png",
                              {ctx.lm.name: (mid, [b["nll"] for b in bins])}, "token position in document",
                              "next-token loss (nats)", f"loss vs position ({cfg.source})", logx=True)]
    return res
