"""Multi-query associative recall (Zoology, Arora et al. 2023), accuracy and state size.

A sequence of ``seq_len`` tokens starts with ``num_kv_pairs`` key-value pairs (keys from one half
of the task vocabulary, values from the other, no key repeated); each key is queried once later,
at a gap drawn from a power law (``power_a``; Zoology's default 0.01), and the target after each
query is its value. Every other position holds a random token (Zoology's
``random_non_queries``). Only the value positions are scored.

The task vocabulary is the first ``vocab`` non-control token ids of the model's tokenizer (keys
from its first half without id 0, as Zoology, values from its second half). Like Zoology, the
model is trained on the task (all weights fine-tuned with AdamW, restored afterwards), then tested
on fresh sequences for each number of pairs. The state size is the number of scalars the LM's
state holds after reading a test sequence, so models can be placed on Zoology's
accuracy-vs-state-size plot (GLA ~0.95 at ~7x10^4, attention ~1.0 with its full KV cache).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .adapt import finetune, restored, trainable
from .common import label_predictions, state_numel
from .registry import Context
from .results import line_plot

NAME = "mqar"


@dataclass
class Config:
    seq_len: int = 256
    """Tokens per sequence (even)."""
    num_kv_pairs: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    """Pairs per sequence; training mixes them, testing reports each."""
    vocab: int = 256
    """Task vocabulary size (first non-control ids of the tokenizer)."""
    power_a: float = 0.01
    train_examples: int = 20_000
    test_examples: int = 500
    """Test sequences per number of pairs."""
    steps: int = 2000
    micro_batch: int = 4
    """Rows per forward pass, in training (gradients accumulated) and in testing; bounds the
    B x T x V log-probs in memory."""
    batch_size: int = 64
    lr: float = 1e-3

    @classmethod
    def smoke(cls) -> "Config":
        return cls(seq_len=32, num_kv_pairs=[2, 4], vocab=64, train_examples=64, test_examples=16, steps=3,
                   batch_size=8)

    def validate(self) -> None:
        if self.seq_len % 2:
            raise ValueError(f"mqar.seq_len must be even, got {self.seq_len}")
        for n in self.num_kv_pairs:
            if 4 * n > self.seq_len:
                raise ValueError(f"mqar: {n} pairs need seq_len >= {4 * n}, got {self.seq_len}")
            if n > self.vocab // 2 - 1:
                raise ValueError(f"mqar: {n} distinct keys need vocab >= {2 * n + 2}, got {self.vocab}")


def task_ids(tok, vocab: int) -> list[int]:
    specials = set()
    for name in ("[PAD]", "[BOS]", "[EOS]", "[SEP]", "[USER]", "[AI]"):
        try:
            specials.add(tok.token_id(name))
        except KeyError:
            pass
    ids = [i for i in range(tok.vocab_size) if i not in specials][:vocab]
    if len(ids) < vocab:
        raise ValueError(f"mqar: vocab={vocab} but the tokenizer has only {len(ids)} non-control tokens")
    return ids


def multiquery_ar(n: int, seq_len: int, num_kv_pairs: int, vocab: int, power_a: float, seed: int):
    """Zoology's generator in task ids 0..vocab-1: (inputs (n, T), targets (n, T) with -100 off queries)."""
    rng = np.random.default_rng(seed)
    context = 2 * num_kv_pairs
    keys = np.stack([rng.choice(np.arange(1, vocab // 2), num_kv_pairs, replace=False) for _ in range(n)])
    values = np.stack([rng.choice(np.arange(vocab // 2, vocab), num_kv_pairs, replace=False) for _ in range(n)])
    kvs = np.zeros((n, context), dtype=np.int64)
    kvs[:, 0::2], kvs[:, 1::2] = keys, values
    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np.stack([rng.choice(space, num_kv_pairs, replace=False, p=p) for _ in range(n)])
    queries = np.zeros((n, seq_len - context + 1), dtype=np.int64)
    np.put_along_axis(queries, gaps * 2, keys, axis=1)
    examples = np.concatenate([kvs, queries], axis=1)
    labels = np.full((n, seq_len + 1), -100, dtype=np.int64)
    np.put_along_axis(labels, gaps * 2 + context + 1, values, axis=1)
    x, y = torch.from_numpy(examples[:, :-1]), torch.from_numpy(labels[:, 1:])
    noise = torch.from_numpy(rng.integers(0, vocab, x.shape))
    x = torch.where(x == 0, noise, x)
    return x, y


def to_tokens(x: torch.Tensor, y: torch.Tensor, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    table = torch.tensor(ids)
    return table[x], torch.where(y == -100, y, table[y.clamp(min=0)])


def run(ctx: Context, cfg: Config) -> dict:
    lm, ids = ctx.lm, task_ids(ctx.tokenizer, cfg.vocab)
    per = max(1, cfg.train_examples // len(cfg.num_kv_pairs))
    train = [to_tokens(*multiquery_ar(per, cfg.seq_len, k, cfg.vocab, cfg.power_a, ctx.seed + k), ids)
             for k in cfg.num_kv_pairs]
    tx, ty = torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])
    tests = {k: to_tokens(*multiquery_ar(cfg.test_examples, cfg.seq_len, k, cfg.vocab, cfg.power_a,
                                         ctx.seed + 10_000 + k), ids) for k in cfg.num_kv_pairs}
    state = lm.read(tests[cfg.num_kv_pairs[0]][0][:1], lm.init_state(1))
    res = {"state_size": state_numel(state), "seq_len": cfg.seq_len, "vocab": cfg.vocab, "chance": 2 / cfg.vocab,
           "method": "trained on the task: all weights fine-tuned, next-token cross-entropy at the value positions"}

    def accuracy():
        out = {}
        for k, (x, y) in tests.items():
            pred, gold = label_predictions(lm, x, y, batch_size=cfg.micro_batch)
            out[k] = float((pred == gold).float().mean())
        return out

    res["accuracy_before_training"] = accuracy()
    gen = torch.Generator().manual_seed(ctx.seed)
    bar = tqdm(total=cfg.steps, desc="mqar train", disable=not ctx.progress)

    def show(step, loss):
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}")

    def batches(step):
        i = torch.randint(0, tx.shape[0], (cfg.batch_size,), generator=gen)
        return tx[i], ty[i]

    with restored(trainable(lm).module):
        losses = finetune(lm, batches, cfg.steps, cfg.lr, show, cfg.micro_batch)
        res["accuracy"] = accuracy()
    bar.close()
    res["train_loss"] = {"first": losses[0], "last": losses[-1]} if losses else None
    ks = list(res["accuracy"])
    res["plots"] = [line_plot(ctx.out_dir / "mqar_accuracy.png",
                              {f"trained ({res['state_size']:,} state scalars)": (ks, [res["accuracy"][k] for k in ks]),
                               "before training": (ks, [res["accuracy_before_training"][k] for k in ks])},
                              "key-value pairs", "recall accuracy", f"MQAR, {cfg.seq_len} tokens")]
    return res


def plot_vs_state_size(result_files: list[str], out_png: str) -> str:
    """Zoology's figure across runs: accuracy against state size, one line per number of pairs,
    from the results.json of several ``plasticlm eval --suite mqar`` runs (models of several sizes)."""
    import json
    from pathlib import Path

    points: dict[str, list[tuple[int, float]]] = {}
    for f in result_files:
        r = json.loads(Path(f).read_text())["suites"].get("mqar")
        if r is None:
            raise ValueError(f"{f}: holds no mqar results")
        for k, acc in r["results"]["accuracy"].items():
            points.setdefault(f"{k} pairs", []).append((r["results"]["state_size"], acc))
    series = {k: ([s for s, _ in sorted(v)], [a for _, a in sorted(v)]) for k, v in points.items()}
    return line_plot(Path(out_png), series, "state size (scalars)", "recall accuracy", "MQAR vs state size", logx=True)
