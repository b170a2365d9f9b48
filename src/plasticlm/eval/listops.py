"""LRA ListOps, generated offline with the published generator's rules, as classification.

Generator (Long Range Arena, ``lra_benchmarks/data/listops.py``): a node at depth d < max_depth
is a value with probability 1 - 0.25, else an operator drawn uniformly from MIN, MAX, MED
(``int(median)``) and SM (sum mod 10) over randint(2, max_args) children; at max_depth it is a
value (0-9). Length counts values, operators and closing brackets (parentheses are not part of
the input); a tree is kept when min_length < length < max_length, duplicates are dropped. LRA
uses max_depth 10, max_args 10, lengths 500-2000, 96k/2k/2k train/valid/test.

Scoring: the LM reads ``[BOS] [MAX 2 9 [MIN 4 7 ] 0 ] [SEP]`` and the class is its next token,
one of the ten digits (next-token classification: argmax over those ten tokens). Training
fine-tunes all the LM's weights with AdamW on the label token's cross-entropy (the weights are
restored afterwards). Reported: test accuracy before and after training, the majority-class
baseline and chance (10%). Published figures: Transformer 36.4, S4 59.5, S5 62.2.
"""
from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .adapt import finetune, restored, trainable
from .common import encode, label_predictions, special
from .registry import Context
from .results import line_plot

NAME = "listops"
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUE_P = 0.25


@dataclass
class Config:
    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000
    train_examples: int = 96_000
    """Distinct training trees generated (a training step samples ``batch_size`` of them)."""
    test_examples: int = 2000
    steps: int = 2000
    """Fine-tuning steps (0: score without training)."""
    micro_batch: int = 4
    """Rows per forward pass, in training (gradients accumulated) and in testing; bounds the
    B x T x V log-probs in memory."""
    batch_size: int = 32
    lr: float = 1e-4

    @classmethod
    def smoke(cls) -> "Config":
        return cls(max_depth=3, max_args=4, min_length=8, max_length=40, train_examples=64, test_examples=32,
                   steps=4, batch_size=8, lr=1e-3)

    def validate(self) -> None:
        if not 1 <= self.min_length < self.max_length:
            raise ValueError(f"listops: need 1 <= min_length < max_length, got {self.min_length}, {self.max_length}")
        if self.max_args < 2 or self.max_depth < 1:
            raise ValueError(f"listops: need max_args >= 2 and max_depth >= 1, got {self.max_args}, {self.max_depth}")


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> list[str]:
    """A tree as its flat token list, e.g. ['[MAX', '2', '[MIN', '4', '7', ']', ']']."""
    if depth >= max_depth or rng.random() > VALUE_P:
        return [str(rng.randrange(10))]
    n = rng.randint(2, max_args)
    children = [generate_tree(rng, depth + 1, max_depth, max_args) for _ in range(n)]
    return [rng.choice(OPERATORS)] + [t for c in children for t in c] + [END]


def evaluate_tree(tokens: list[str]) -> int:
    stack: list[list] = []
    for t in tokens:
        if t in OPERATORS:
            stack.append([t])
        elif t == END:
            op, *args = stack.pop()
            v = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(statistics.median(a)),
                 "[SM": lambda a: sum(a) % 10}[op](args)
            if not stack:
                return v
            stack[-1].append(v)
        elif not stack:
            return int(t)
        else:
            stack[-1].append(int(t))
    raise ValueError(f"unbalanced ListOps expression: {' '.join(tokens)}")


def generate(n: int, cfg: Config, rng: random.Random, exclude: set | None = None) -> list[tuple[list[str], int]]:
    """n distinct trees with min_length < len < max_length (the LRA rejection rule), with labels."""
    seen, out = set(exclude or ()), []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * n + 100_000:
            raise ValueError(f"listops: found only {len(out)} of {n} trees with {cfg.min_length} < length < "
                             f"{cfg.max_length}; widen the lengths or raise max_depth/max_args")
        # The root is at depth 1, as in LRA's generate_tree(1, ...).
        t = generate_tree(rng, 1, cfg.max_depth, cfg.max_args)
        key = " ".join(t)
        if cfg.min_length < len(t) < cfg.max_length and key not in seen:
            seen.add(key)
            out.append((t, evaluate_tree(t)))
    return out


def encode_rows(tok, examples, digits: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS] expression [SEP] -> the label digit as the target at [SEP]; right-padded."""
    bos, sep, pad = special(tok, "[BOS]"), special(tok, "[SEP]"), special(tok, "[PAD]")
    rows = [[bos] + encode(tok, " ".join(t)) + [sep] for t, _ in examples]
    T = max(map(len, rows))
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, (_, label)) in enumerate(zip(rows, examples)):
        x[i, :len(r)] = torch.tensor(r)
        y[i, len(r) - 1] = digits[label]
    return x, y


def digit_tokens(tok) -> list[int]:
    ids = [encode(tok, str(d)) for d in range(10)]
    if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != 10:
        raise ValueError("listops: the tokenizer must give each digit 0-9 its own single token")
    return [i[0] for i in ids]


def run(ctx: Context, cfg: Config) -> dict:
    rng = random.Random(ctx.seed)
    tok, lm = ctx.tokenizer, ctx.lm
    digits = digit_tokens(tok)
    test = generate(cfg.test_examples, cfg, rng)
    train = generate(cfg.train_examples, cfg, rng, exclude={" ".join(t) for t, _ in test})
    xt, yt = encode_rows(tok, test, digits)

    def accuracy():
        pred, gold = label_predictions(lm, xt, yt, batch_size=cfg.micro_batch, restrict=digits)
        return float((pred == gold).float().mean())

    majority = Counter(label for _, label in train).most_common(1)[0][0]
    res = {"test_examples": len(test), "train_examples": len(train),
           "mean_length": sum(len(t) for t, _ in test) / len(test),
           "label_counts_test": dict(sorted(Counter(label for _, label in test).items())),
           "chance": 0.1, "majority_class": sum(label == majority for _, label in test) / len(test),
           "accuracy_before_training": accuracy(), "method": "next-token classification, all weights fine-tuned"}
    if cfg.steps:
        brng = random.Random(ctx.seed + 1)
        bar = tqdm(total=cfg.steps, desc="listops train", disable=not ctx.progress)

        def show(step, loss):
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")

        def batches(step):
            return encode_rows(tok, brng.sample(train, min(cfg.batch_size, len(train))), digits)

        with restored(trainable(lm).module):
            losses = finetune(lm, batches, cfg.steps, cfg.lr, show, cfg.micro_batch)
            res["accuracy"] = accuracy()
        bar.close()
        res["train_loss"] = {"first": losses[0], "last": losses[-1]}
        res["plots"] = [line_plot(ctx.out_dir / "listops_train_loss.png",
                                  {lm.name: (list(range(1, len(losses) + 1)), losses)},
                                  "step", "label cross-entropy", "ListOps fine-tuning")]
    else:
        res["accuracy"] = res["accuracy_before_training"]
        res["plots"] = []
    return res
