"""One-shot language: read a Rosetta header and ~200k tokens of a new language, then measure
perplexity and bits per byte on unseen text of it, as a curve over tokens read.

The new language is any object with (the interface of issue 3's ``VocabShuffle``)::

    apply(ids)  -> ids      original-language token ids -> new-language ids
    invert(ids) -> ids      and back
    rosetta(n, top)         n translations among the ``top`` most frequent tokens, either as
                            [(original ids, new ids), ...] (rendered ``orig [SEP] new [EOS]``)
                            or as a ready header (a list of token ids)

given as ``ctx.extras["language"]``; otherwise a ``VocabShuffle`` of the pretraining task's
shuffled-vocabulary language (permutation within categories, fission and fusion), drawn from the
frequencies of the text read, with at most as many Rosetta pairs as the vocabulary has tokens. The stream read is ``[BOS] header text``; at each
checkpoint the unseen text is scored as a new document (``[BOS]`` then its tokens) from a copy
of the state. Compared with: no reading (a fresh state, not even the header), dynamic
evaluation (the same reading with an SGD step per segment and decay toward the original
weights, see ``adapt.py``), and the same unseen text in the original language.
Bits per byte divide by the bytes of the *original* text, so they compare across languages
whose tokens fission or fuse.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .adapt import DynamicEval, restored, trainable
from .common import copy_state, read, score_targets, special
from .registry import Context
from .results import line_plot

NAME = "oneshot"


@dataclass
class Config:
    source: str = "builtin"
    """Original-language text: 'builtin' reads the builtin corpus and scores its held-out tail
    (unseen in training by the tiny recipe), or a text file whose last ``eval_tokens`` are scored."""
    tokens_read: int = 200_000
    """New-language tokens read after the header (checkpoints at 0 and powers of two up to this)."""
    eval_tokens: int = 8192
    """Unseen new-language tokens scored at every checkpoint."""
    rosetta_pairs: int = 2000
    """Translations in the header."""
    rosetta_top: int = 10000
    """They are drawn from this many most frequent tokens."""
    fission: float = 0.2
    """Share of the frequent tokens the default language writes with two ids."""
    fusion: float = 0.2
    """Share of the frequent pairs the default language writes with one id."""
    dynamic: bool = True
    """Also run dynamic evaluation (needs an LM backed by a torch module)."""
    dynamic_lr: float = 1e-3
    """SGD step size of dynamic evaluation (Krause et al. tune it on validation text; untuned here)."""
    dynamic_decay: float = 1e-3
    """Pull toward the original weights per step."""
    dynamic_segment: int = 128
    """Tokens per gradient step."""
    first_checkpoint: int = 1024
    """Smallest non-zero checkpoint."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(tokens_read=512, eval_tokens=128, rosetta_pairs=20, first_checkpoint=256, dynamic_segment=64)

    def validate(self) -> None:
        for name in ("tokens_read", "eval_tokens", "first_checkpoint", "dynamic_segment"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"oneshot.{name} must be a positive integer, got {getattr(self, name)!r}")


def default_language(tok, seed: int, text: str, fission: float, fusion: float):
    """The shuffled vocabulary of the pretraining task (``plasticlm.data.shuffled``), drawn from
    the categories and frequencies of ``text`` under this tokenizer."""
    import numpy as np

    from ..data.shuffled import VocabShuffle, VocabStats

    stats = VocabStats.from_documents(tok, [np.asarray(tok.encode(text), dtype=np.int64)])
    return VocabShuffle(stats, seed, fission=fission, fusion=fusion)


def ids(x) -> list[int]:
    return [int(t) for t in x]


def header_tokens(language, tok, n: int, top: int) -> list[int]:
    r = list(language.rosetta(n, top))
    if not r or not isinstance(r[0], tuple):  # a ready header of token ids
        return ids(r)
    sep, eos = special(tok, "[SEP]"), special(tok, "[EOS]")
    return [t for orig, new in r for t in list(orig) + [sep] + list(new) + [eos]]


def texts(source: str) -> tuple[str, str]:
    """(text to read, unseen text to score), never overlapping."""
    from .text import builtin_split, documents

    if source == "builtin":
        return builtin_split()
    text = "\n\n".join(documents(source))
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def checkpoints(first: int, last: int) -> list[int]:
    out, k = [0], first
    while k < last:
        out.append(k)
        k *= 2
    return out + [last]


def score_document(lm, tok, ids: list[int], state) -> float:
    """Sum NLL (nats) of a new document ``ids`` read after ``state``."""
    bos = special(tok, "[BOS]")
    x = torch.tensor([bos] + ids[:-1], dtype=torch.long).view(1, -1)
    y = torch.tensor(ids, dtype=torch.long).view(1, -1)
    lp, _, _ = score_targets(lm, x, y, state)
    return -float(lp.sum())


def run(ctx: Context, cfg: Config) -> dict:
    lm, tok = ctx.lm, ctx.tokenizer
    read_text, eval_text = texts(cfg.source)
    lang = ctx.extras.get("language") or default_language(tok, ctx.seed, read_text[:2_000_000], cfg.fission,
                                                          cfg.fusion)
    read_ids = tok.encode(read_text)[:cfg.tokens_read]
    eval_orig = tok.encode(eval_text)[:cfg.eval_tokens]
    if len(read_ids) < cfg.tokens_read or len(eval_orig) < cfg.eval_tokens:
        raise ValueError(f"oneshot: source {cfg.source!r} holds {len(read_ids)} tokens to read and {len(eval_orig)} to "
                         f"score; tokens_read={cfg.tokens_read} and eval_tokens={cfg.eval_tokens} asked")
    nbytes = len(tok.decode(eval_orig).encode("utf-8"))
    eval_new = ids(lang.apply(eval_orig))
    ordinary = tok.vocab_size - sum(1 for _ in getattr(tok, "specials", ()))
    top = min(cfg.rosetta_top, ordinary)  # a byte vocabulary has fewer tokens than the 2,000 pairs asked
    header = header_tokens(lang, tok, min(cfg.rosetta_pairs, top), top)
    new_text = ids(lang.apply(read_ids))
    stream = [special(tok, "[BOS]")] + header + new_text
    offset = 1 + len(header)  # tokens read before the first new-language text token
    points = checkpoints(cfg.first_checkpoint, len(new_text))

    def metrics(nll_sum):
        return {"nll_per_token": nll_sum / len(eval_new), "perplexity": math.exp(nll_sum / len(eval_new)),
                "bits_per_byte": nll_sum / math.log(2) / nbytes}

    res = {"tokens_read": len(new_text), "header_tokens": len(header), "eval_tokens": len(eval_new),
           "eval_bytes": nbytes, "language": type(lang).__name__,
           "no_reading": metrics(score_document(lm, tok, eval_new, lm.init_state(1))),
           "original_language": metrics(score_document(lm, tok, eval_orig, lm.init_state(1))), "curves": {}}

    def curve(method):
        state, pos, out = lm.init_state(1), 0, {}
        dyn = DynamicEval(lm, cfg.dynamic_lr, cfg.dynamic_decay, cfg.dynamic_segment) if method == "dynamic" else None
        for k in tqdm(points, desc=f"oneshot {method}", disable=not ctx.progress):
            end = offset + k
            if dyn is None:
                state = read(lm, stream[pos:end], state)
            else:  # every read token is also a target: the next token of the stream
                x = torch.tensor(stream[pos:end], dtype=torch.long).view(1, -1)
                y = torch.tensor(stream[pos + 1:end + 1], dtype=torch.long).view(1, -1)
                if x.shape[1]:
                    _, state = dyn.read(x[:, :y.shape[1]], y, state)
                    if y.shape[1] < x.shape[1]:
                        state = lm.read(x[:, y.shape[1]:], state)
            pos = end
            out[k] = metrics(score_document(lm, tok, eval_new, copy_state(state)))
        return out

    res["curves"]["read"] = curve("read")
    if cfg.dynamic:
        with restored(trainable(lm).module):
            res["curves"]["dynamic"] = curve("dynamic")
    series = {m: (list(c), [v["bits_per_byte"] for v in c.values()]) for m, c in res["curves"].items()}
    res["plots"] = [line_plot(ctx.out_dir / "oneshot_bits_per_byte.png", series, "new-language tokens read",
                              "bits per byte on unseen text", "one-shot language", logx=True,
                              hline={"no reading": res["no_reading"]["bits_per_byte"],
                                     "original language": res["original_language"]["bits_per_byte"]})]
    return res
