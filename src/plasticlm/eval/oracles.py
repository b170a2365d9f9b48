"""Model-free predictors of held-out sequences: what reading alone can give on a task whose
every sequence is a new language (the shuffled-vocabulary task of H3 and RQ6).

- **global unigram**: one distribution of ids for every sequence, fitted on the scored text
  itself (pooled over sequences). This is the best a model can do without reading: each
  sequence's language permutes the ids, so no id is more likely in one sequence than another.
- **counting**: each sequence's own id counts so far (add-``alpha``), the simplest statistic a
  memory can gather while it reads.

A model whose loss stays at the global unigram's has learnt nothing from its context; counting
is a floor on what even the crudest reading should reach.
"""
from __future__ import annotations

import numpy as np

PREDICTORS = ("global unigram", "counting")


def oracle_losses(rows: list[np.ndarray], vocab: int, alpha: float = 0.5) -> dict[str, list[np.ndarray]]:
    """Per row of scored ids (in reading order), each predictor's loss in nats at each of them."""
    pooled = np.zeros(vocab)
    for ids in rows:
        pooled += np.bincount(ids, minlength=vocab)
    p = (pooled + alpha) / (pooled.sum() + alpha * vocab)
    out = {name: [] for name in PREDICTORS}
    for ids in rows:
        counts, seen = np.zeros(vocab), np.empty(len(ids))
        for t, x in enumerate(ids):
            seen[t] = counts[x]
            counts[x] += 1
        out["global unigram"].append(-np.log(p[ids]))
        out["counting"].append(-np.log((seen + alpha) / (np.arange(len(ids)) + alpha * vocab)))
    return out
