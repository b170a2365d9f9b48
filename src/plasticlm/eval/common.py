"""What every suite needs from an LM: scoring target tokens with a carried state, greedy
generation with stop tokens, copies of a state, and token ids of the control tokens.

Everything here goes through :class:`plasticlm.lm.LM` only (``init_state``, ``score``, ``read``),
so the suites run unchanged on plasticlm, the baselines and the test LMs.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable

import torch

from ..lm import LM


def copy_state(state: Any) -> Any:
    """An independent copy of an LM's state, so one reading can branch into many probes."""
    if hasattr(state, "clone"):
        return state.clone()
    return copy.deepcopy(state)


def state_numel(state: Any) -> int:
    """Number of scalars held by a state (tensors found in lists, tuples, dicts, dataclasses)."""
    if torch.is_tensor(state):
        return state.numel()
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return sum(state_numel(getattr(state, f.name)) for f in dataclasses.fields(state))
    if hasattr(state, "__dict__"):
        return sum(state_numel(v) for v in vars(state).values())
    return 0


def special(tokenizer, name: str) -> int:
    """Id of a control token such as ``[SEP]``; a tokenizer without it fails naming the token."""
    return tokenizer.token_id(name)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text))


def check_vocab(lm: LM, tokenizer, where: str = "") -> None:
    """The LM and the tokenizer must agree on the number of token ids."""
    if lm.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{where or lm.name}: the model has vocab_size={lm.vocab_size} but the tokenizer has "
                         f"{tokenizer.vocab_size} tokens: checkpoint and tokenizer come from different vocabularies")


def score_targets(lm: LM, inputs: torch.Tensor, targets: torch.Tensor, state: Any, piece: int = 2048):
    """Log-probability of each target given everything read so far, and whether it is the argmax.

    inputs, targets (B, T) long -> (logp (B, T) float64, greedy (B, T) bool, state after ``inputs``).
    The inputs go through ``lm.score`` in pieces of ``piece`` tokens with the state carried, so a
    long document is read once, without window resets, in bounded memory.
    """
    lps, hits = [], []
    for a in range(0, inputs.shape[1], piece):
        logp, state = lm.score(inputs[:, a:a + piece], state)  # (B, t, V)
        tgt = targets[:, a:a + piece].to(logp.device)
        lps.append(logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double().cpu())
        hits.append((logp.argmax(-1) == tgt).cpu())
    return torch.cat(lps, 1), torch.cat(hits, 1), state


def read(lm: LM, ids: list[int] | torch.Tensor, state: Any, piece: int = 4096) -> Any:
    """Read a 1-D token sequence into a batch-of-one state, in pieces."""
    x = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
    for a in range(0, x.shape[1], piece):
        state = lm.read(x[:, a:a + piece], state)
    return state


def score_continuation(lm: LM, state: Any, context: list[int], continuation: list[int]):
    """Read ``context`` after ``state`` then score ``continuation`` (batch of one).

    Returns (sum log p of the continuation, whether every continuation token is the argmax,
    per-token log p (T,), state after both). ``context`` must not be empty: its last token
    predicts the continuation's first.
    """
    if not context:
        raise ValueError("score_continuation needs a non-empty context (start with [BOS])")
    if not continuation:
        return 0.0, True, torch.zeros(0, dtype=torch.float64), read(lm, context, state)
    seq = torch.tensor(context + continuation, dtype=torch.long).view(1, -1)
    if len(context) > 1:
        state = read(lm, seq[0, :len(context) - 1], state)
    lp, hit, state = score_targets(lm, seq[:, len(context) - 1:-1], seq[:, len(context):], state)
    lp, hit = lp[0], hit[0]
    # The last continuation token is scored but not yet read: read it so the state covers it.
    state = lm.read(seq[:, -1:], state)
    return float(lp.sum()), bool(hit.all()), lp, state


@torch.no_grad()
def generate_until(lm: LM, state: Any, prompt: list[int], max_new_tokens: int, stop: Iterable[int]) -> list[int]:
    """Greedy continuation of ``prompt`` (batch of one), cut before the first stop token."""
    stop = set(int(s) for s in stop)
    logp, state = lm.score(torch.tensor(prompt, dtype=torch.long).view(1, -1), state)
    out: list[int] = []
    for _ in range(max_new_tokens):
        tok = int(logp[0, -1].argmax())
        if tok in stop:
            break
        out.append(tok)
        logp, state = lm.score(torch.tensor([[tok]], dtype=torch.long), state)
    return out


def log_bins(max_len: int) -> list[tuple[int, int]]:
    """Position bins [1, 2), [2, 4), [4, 8), ... covering positions 1..max_len."""
    bins, lo = [], 1
    while lo <= max_len:
        bins.append((lo, 2 * lo))
        lo *= 2
    return bins


def whole_bins(bins, max_len: int) -> list[int]:
    """Indices of the ``log_bins(max_len)`` bins that lie whole inside positions 1..max_len: the
    last one, [max_len, 2 max_len) for a power of two, holds position max_len alone, too few
    tokens to read a loss from."""
    return [i for i, (lo, hi) in enumerate(bins) if hi - 1 <= max_len]


@torch.no_grad()
def label_predictions(lm: LM, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 16,
                      restrict: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy prediction at every position whose target is not -100, each row from a fresh state.

    inputs, targets (N, T) -> (predicted ids (M,), gold ids (M,)) over the M labelled positions;
    ``restrict`` limits the argmax to those token ids (the classes of a classification task).
    """
    preds, golds = [], []
    for a in range(0, inputs.shape[0], batch_size):
        x, y = inputs[a:a + batch_size], targets[a:a + batch_size]
        logp, _ = lm.score(x, lm.init_state(x.shape[0]))
        logp = logp.cpu()
        mask = y != -100
        if restrict is not None:
            cls = torch.tensor(restrict)
            preds.append(cls[logp[mask][:, cls].argmax(-1)])
        else:
            preds.append(logp[mask].argmax(-1))
        golds.append(y[mask])
    return torch.cat(preds), torch.cat(golds)
