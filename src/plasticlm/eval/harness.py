"""lm-evaluation-harness adapter: lets the harness drive any plasticlm ``LM`` (and a checkpoint).

Needs ``pip install 'plasticlm[lmeval]'``; imported lazily, so plasticlm works without it::

    import lm_eval
    from plasticlm.eval.harness import harness_lm
    out = lm_eval.simple_evaluate(model=harness_lm("runs/tiny"), tasks=["wikitext"])

Importing this module also registers the model name ``plasticlm`` with the harness
(``--model plasticlm --model_args checkpoint=DIR,device=cuda`` once this module is imported).

The three request types, each read from a fresh state, tokenized as the harness's own ``hf``
model does for a tokenizer that adds no [BOS] (so both give the same numbers on a folder written
by ``plasticlm export-hf``): ``loglikelihood`` (context, continuation) -> (sum log p of the
continuation, all greedy), the context's trailing spaces moved to the continuation, and [BOS]
as the context only when it is empty; ``loglikelihood_rolling`` (text,) -> sum log p of all its
tokens after [BOS], the whole text streamed once through the recurrent state (no windows: every
token sees the full context);
``generate_until`` (context, {until, max_gen_toks}) -> greedy text cut before the first stop string,
read after [BOS] only when the context is empty (as loglikelihood).
The request functions take anything with ``.args``, so they are tested without the harness.
"""
from __future__ import annotations

from typing import Any

import torch

from ..lm import LM
from .common import check_vocab, score_continuation, special
from .perplexity import document_nlls


def loglikelihood(lm: LM, tok, requests) -> list[tuple[float, bool]]:
    bos, out = special(tok, "[BOS]"), []
    for r in requests:
        context, continuation = r.args[0], r.args[1]
        spaces = len(context) - len(context.rstrip())
        if spaces and context.strip():  # the harness's _encode_pair: a word's space belongs to the word
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, ctx = tok.encode(context + continuation), tok.encode(context)
        # Tokenize jointly and split, as the harness's own models do, so a word boundary is not
        # tokenized differently from how the text would run on.
        if whole[:len(ctx)] != list(ctx):
            whole = list(ctx) + list(tok.encode(continuation))
        cont = list(whole[len(ctx):])
        if not cont:
            out.append((0.0, True))
            continue
        ll, greedy, _, _ = score_continuation(lm, lm.init_state(1), list(ctx) or [bos], cont)
        out.append((ll, greedy))
    return out


def loglikelihood_rolling(lm: LM, tok, requests, batch_size: int = 1) -> list[float]:
    texts = [r.args[0] for r in requests]
    ids = [list(tok.encode(t)) for t in texts]
    keep = [i for i, x in enumerate(ids) if x]
    nlls = document_nlls(lm, tok, [ids[i] for i in keep], batch_size, 2048)
    out = [0.0] * len(texts)
    for i, n in zip(keep, nlls):
        out[i] = -float(n.sum())
    return out


@torch.no_grad()
def generate_until(lm: LM, tok, requests, max_gen_toks: int = 256) -> list[str]:
    bos, eos = special(tok, "[BOS]"), special(tok, "[EOS]")
    out = []
    for r in requests:
        context, kwargs = r.args[0], dict(r.args[1] or {})
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        limit = int(kwargs.get("max_gen_toks", max_gen_toks))
        state = lm.init_state(1)
        logp, state = lm.score(torch.tensor([list(tok.encode(context)) or [bos]], dtype=torch.long), state)
        new: list[int] = []
        text = ""
        for _ in range(limit):
            t = int(logp[0, -1].argmax())
            if t == eos:
                break
            new.append(t)
            text = tok.decode(new)
            if any(u in text for u in until):
                break
            logp, state = lm.score(torch.tensor([[t]], dtype=torch.long), state)
        cut = min([text.index(u) for u in until if u in text], default=len(text))
        out.append(text[:cut])
    return out


def _harness_class():
    try:
        from lm_eval.api.model import LM as HarnessLM
    except ImportError:
        raise ImportError("the lm-evaluation-harness adapter needs lm-eval: pip install 'plasticlm[lmeval]'") from None

    class PlasticHarnessLM(HarnessLM):
        """An lm-evaluation-harness model around a plasticlm ``LM`` and its tokenizer."""

        def __init__(self, lm: LM, tokenizer, batch_size: int = 1, max_gen_toks: int = 256):
            super().__init__()
            check_vocab(lm, tokenizer)
            self.lm, self.tok = lm, tokenizer
            self.batch_size, self.max_gen_toks = int(batch_size), int(max_gen_toks)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
            args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv)
            if "checkpoint" not in args:
                raise ValueError("model_args must name checkpoint=DIR (a plasticlm checkpoint directory)")
            extra = additional_config or {}
            return harness_lm(args["checkpoint"], args.get("device", extra.get("device") or "cpu"),
                              int(args.get("batch_size", extra.get("batch_size") or 1)))

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return loglikelihood(self.lm, self.tok, requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return loglikelihood_rolling(self.lm, self.tok, requests, self.batch_size)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return generate_until(self.lm, self.tok, requests, self.max_gen_toks)

    try:
        import lm_eval.models  # noqa: F401  (the harness fills its registry lazily, only while it is empty:
        from lm_eval.api.registry import register_model  # registering first would hide its own hf model)

        register_model("plasticlm")(PlasticHarnessLM)
    except (ImportError, ValueError, AssertionError):
        pass  # already registered, or a harness without the registry: the Python API still works
    return PlasticHarnessLM


_CLASS = None


def harness_class():
    global _CLASS
    if _CLASS is None:
        _CLASS = _harness_class()
    return _CLASS


def harness_lm(model: Any, device: str = "cpu", batch_size: int = 1, tokenizer=None):
    """A harness model from a checkpoint directory, or from an ``LM`` plus its ``tokenizer``."""
    cls = harness_class()
    if isinstance(model, LM):
        if tokenizer is None:
            raise ValueError("harness_lm(lm) needs the LM's tokenizer: harness_lm(lm, tokenizer=tok)")
        return cls(model, tokenizer, batch_size)
    from ..checkpoint import load_lm

    lm, tok, _ = load_lm(model, device)
    return cls(lm, tok, batch_size)


__all__ = ["harness_lm", "harness_class", "loglikelihood", "loglikelihood_rolling", "generate_until"]
