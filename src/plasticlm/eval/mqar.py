"""Multi-query associative recall (Zoology, Arora et al. 2023): accuracy and state size.

The task (:func:`plasticlm.data.recall.mqar`): a sequence starts with key-value pairs, each key
is queried once later, and only the values after the queries are scored. Its vocabulary is the
first ``vocab`` non-control token ids of the model's tokenizer.

The protocol is Zoology's, scaled to small machines, and :func:`train_and_test` is the one
place it is written (the ``mqar`` experiment calls it too, so the two cannot disagree): the
model is trained through plasticlm's own trainer (AdamW with ``weight_decay``, warmup then
``schedule``, fresh examples every step, gradient clipping), tested every ``eval_every`` steps
on fixed test sets, one per number of pairs, and stopped once every one reaches ``target``;
this is repeated for each learning rate of ``lrs``, and the best is reported with all kept.
``fresh`` trains a new model of the checkpoint's architecture and size, as Zoology does;
otherwise the checkpoint's own weights are fine-tuned (on a copy: the LM is left as it was).

The state size is the number of scalars the model's state holds after reading a test sequence,
so models can be placed on Zoology's accuracy-against-state-size plot (GLA ~0.95 at ~7x10^4,
attention ~1.0 with its full KV cache).
"""
from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.recall import IGNORE, RecallConfig, distractors, mqar, to_tokens
from .common import state_numel
from .registry import Context
from .results import line_plot

NAME = "mqar"


@dataclass
class Config:
    seq_len: int = 64
    """Tokens per sequence."""
    num_kv_pairs: list[int] = field(default_factory=lambda: [4, 8])
    """Pairs per sequence; training mixes them, testing reports each."""
    vocab: int = 256
    """Task vocabulary size: values come from its upper half, so the first loss plateau is ln(vocab / 2)."""
    power_a: float = 0.01
    noise: str = "vocab"
    """What fills the free positions: 'vocab' (Zoology's generator) or 'not_keys' (never a key of the
    row, so no query has a distractor: :func:`plasticlm.data.recall.mqar`)."""
    batch_size: int = 64
    max_steps: int = 2000
    """Optimizer steps at most per learning rate (fewer when every number of pairs reaches target)."""
    warmup_steps: int = 100
    schedule: str = "cosine"
    """'cosine' (to 0.1 lr at max_steps) or 'wsd', as the trainer's optim.schedule."""
    weight_decay: float = 0.1
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    """Learning rates swept; each trains from the same start."""
    eval_every: int = 250
    test_examples: int = 500
    """Test sequences per number of pairs (drawn once, never trained on)."""
    target: float = 0.99
    """Early stop once every number of pairs reaches this test accuracy."""
    fresh: bool = True
    """Train a new model of the checkpoint's architecture and size (Zoology's protocol); false
    fine-tunes the checkpoint's own weights."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(seq_len=32, num_kv_pairs=[2, 4], vocab=64, batch_size=8, max_steps=4, warmup_steps=1,
                   lrs=[3e-3], eval_every=2, test_examples=16)

    def validate(self) -> None:
        self.task().check(self.seq_len)
        if not self.lrs or any(not (isinstance(lr, float) and lr > 0) for lr in self.lrs):
            raise ValueError(f"mqar.lrs must be a non-empty list of positive learning rates, got {self.lrs!r}")
        if self.schedule not in ("cosine", "wsd"):
            raise ValueError(f"mqar.schedule must be 'cosine' or 'wsd', got {self.schedule!r}")

    def task(self, ids: list[int] | None = None) -> RecallConfig:
        return RecallConfig(task="mqar", pairs=list(self.num_kv_pairs), vocab=self.vocab, power_a=self.power_a,
                            noise=self.noise, ids=ids)


def task_ids(tok, vocab: int) -> list[int]:
    """The first ``vocab`` token ids that are not control tokens."""
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


def test_sets(cfg: Config, ids: list[int] | None, seed: int) -> dict[int, tuple[torch.Tensor, ...]]:
    """pairs -> (inputs, targets, distractor mask, pair index) of its fixed test sequences, in token
    ids; the pair index (which key-value pair a scored position queries; -1 elsewhere) lets errors
    be told apart by the pair's place in the sequence."""
    sets = {}
    for p in cfg.num_kv_pairs:
        x, y = mqar(cfg.test_examples, cfg.seq_len, p, cfg.vocab, cfg.power_a, [seed, 7919, p], cfg.noise)
        match = x[:, :, None] == x[:, None, 0:2 * p:2]  # (n, T, p): position t holds key j
        pair = torch.where(y != IGNORE, match.float().argmax(-1), -1)
        sets[p] = (*to_tokens(x, y, ids), distractors(x, y, p, cfg.vocab), pair)
    return sets


GAP_BANDS = [(1, 2), (2, 4), (4, 8), (8, 16), (16, 1 << 30)]
"""Bands of the distance from a pair's value to its query, for :func:`accuracy_by_query`."""


def query_gaps(y: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
    """Distance from the queried pair's value (position 2 j + 1) to the query, at each scored position."""
    pos = torch.arange(y.shape[1]).expand_as(y)
    return (pos - (2 * pair + 1))[y != IGNORE]


@torch.no_grad()
def correct(model, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Whether the greedy prediction is right at each scored position (targets not IGNORE), in the
    order of ``y[y != IGNORE]``; every row from an empty state, the tied head at those positions only."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    out = []
    for a in range(0, len(x), batch):
        h, _ = model.hidden(x[a:a + batch].to(device))
        mask = (y[a:a + batch] != IGNORE).to(device)
        pred = torch.nn.functional.linear(h[mask], model.embed.weight).argmax(-1).cpu()
        out.append(pred == y[a:a + batch][mask.cpu()])
    model.train(was)
    return torch.cat(out)


def accuracy(model, tests: dict, batch: int = 64) -> dict:
    """Accuracy at the scored positions of each test set (a value of ``tests`` is (inputs, targets, ...))."""
    return {key: correct(model, t[0], t[1], batch).float().mean().item() for key, t in tests.items()}


def accuracy_by_query(model, tests: dict, batch: int = 64) -> dict:
    """pairs -> accuracy on all queries, on those without a distractor ('clean'), on those with one,
    the share of those (:func:`plasticlm.data.recall.distractors`), and the accuracy by the queried
    pair's place in the sequence ('by_pair': first pair first) and by the query's distance from
    the pair's value ('by_gap', bands of GAP_BANDS; None where a band holds no query)."""
    out = {}
    for key, (x, y, dis, pair) in tests.items():
        scored = y != IGNORE
        gap = query_gaps(y, pair)
        ok, dis, pair = correct(model, x, y, batch), dis[scored], pair[scored]
        out[key] = {"all": ok.float().mean().item(), "clean": ok[~dis].float().mean().item(),
                    "distractor": ok[dis].float().mean().item() if dis.any() else None,
                    "distractor_share": dis.float().mean().item(),
                    "by_pair": [ok[pair == j].float().mean().item() for j in range(int(pair.max()) + 1)],
                    "by_gap": [ok[(gap >= lo) & (gap < hi)].float().mean().item() if ((gap >= lo) & (gap < hi)).any()
                               else None for lo, hi in GAP_BANDS],
                    "gap_counts": [int(((gap >= lo) & (gap < hi)).sum()) for lo, hi in GAP_BANDS]}
    return out


def train_and_test(arch: str, model_config, cfg: Config, lr: float, seed: int, device: str, work_dir: Path,
                   model=None, tokenizer=None, ids: list[int] | None = None, progress: bool = False) -> dict:
    """Train one model at one learning rate by the protocol; returns its curve and final test accuracy.

    ``model`` (optional) is trained in place instead of a fresh one; ``tokenizer`` and ``ids`` map
    the task into a checkpoint's vocabulary (default: the byte tokenizer, task ids as tokens).
    """
    from .. import archs
    from ..trainer.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer

    is_segment = archs.get(arch).segment
    tc = TrainConfig(
        arch=arch, model=model_config, seed=seed, device=device, out_dir=str(work_dir), steps=cfg.max_steps,
        data=DataConfig(kind="mqar", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                        options={"pairs": list(cfg.num_kv_pairs), "vocab": cfg.vocab, "power_a": cfg.power_a,
                                 "noise": cfg.noise, "ids": ids}),
        optim=OptimConfig(lr=lr, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                          warmup_steps=cfg.warmup_steps),
        backprop="segment" if is_segment else "full", segment_len=cfg.seq_len,
        checkpoint=CheckpointConfig(every=0, resume=False), log=LogConfig(every=10, tensorboard="disabled",
                                                                           eval_every=cfg.eval_every),
        eval_tokens=cfg.batch_size * cfg.seq_len)
    tests = test_sets(cfg, ids, seed)
    curve: list[dict] = []
    trainer = None

    def on_eval(step: int, valid: float) -> bool:
        split = accuracy_by_query(trainer.model, tests)
        acc = {p: v["all"] for p, v in split.items()}
        curve.append({"step": step, "valid_loss": valid, "accuracy": acc, "by_query": split})
        return all(a >= cfg.target for a in acc.values())

    trainer = Trainer(tc, progress=progress, on_eval=on_eval, model=model, tokenizer=tokenizer)
    summary = trainer.run()
    from ..trainer.metrics import read_metrics

    losses = [(r["step"], r["loss"]) for r in read_metrics(work_dir) if r.get("loss") is not None]
    with torch.no_grad():
        x = next(iter(tests.values()))[0][:1].to(trainer.device)
        state_size = state_numel(trainer.model(x)[1])
    return {"lr": lr, "accuracy": curve[-1]["accuracy"], "by_query": curve[-1]["by_query"], "steps": summary["steps"],
            "reached_target": summary["stopped_early"], "curve": curve, "train_loss": losses,
            "state_size": state_size, "n_params": summary["params"]}


def plateaus(cfg: Config) -> dict[str, float]:
    """The loss levels a run passes on its way to 0: ln(value vocabulary), then ln(pairs)."""
    return {"ln(values)": math.log(cfg.vocab // 2), **{f"ln({p} pairs)": math.log(p) for p in cfg.num_kv_pairs}}


def run(ctx: Context, cfg: Config) -> dict:
    from .. import archs

    model = getattr(ctx.lm, "model", None)
    try:
        arch = archs.arch_of(model)
    except ValueError:
        arch = None
    if arch is None or archs.get(arch).trained_by != "plasticlm train":
        raise ValueError(f"mqar trains the model on the task with plasticlm's trainer: {type(model).__name__} "
                         f"is not an architecture it trains")
    ids = task_ids(ctx.tokenizer, cfg.vocab)
    device = str(next(model.parameters()).device)
    by_lr = {}
    for lr in cfg.lrs:
        with tempfile.TemporaryDirectory() as work:
            own = None if cfg.fresh else copy.deepcopy(model).train()
            by_lr[str(lr)] = train_and_test(arch, model.config, cfg, lr, ctx.seed, device, Path(work), model=own,
                                            tokenizer=ctx.tokenizer, ids=ids, progress=ctx.progress)
    best_lr = max(by_lr, key=lambda k: (sum(by_lr[k]["accuracy"].values()), -by_lr[k]["steps"]))
    best = by_lr[best_lr]
    res = {"state_size": best["state_size"], "seq_len": cfg.seq_len, "vocab": cfg.vocab, "chance": 2 / cfg.vocab,
           "method": ("fresh model" if cfg.fresh else "checkpoint fine-tuned") + ", trained on the task with "
                     "plasticlm's trainer, best of the learning rates", "accuracy": best["accuracy"],
           "by_query": best["by_query"], "best_lr": float(best_lr), "steps": best["steps"], "plateaus": plateaus(cfg),
           "by_lr": {k: {"accuracy": v["accuracy"], "by_query": v["by_query"], "steps": v["steps"], "curve": v["curve"]}
                     for k, v in by_lr.items()}}
    ks = list(res["accuracy"])
    res["plots"] = [line_plot(ctx.out_dir / "mqar_accuracy.png",
                              {f"lr {k} ({res['state_size']:,} state scalars)": (ks, [v["accuracy"][p] for p in ks])
                               for k, v in by_lr.items()},
                              "key-value pairs", "recall accuracy", f"MQAR, {cfg.seq_len} tokens")]
    return res


def plot_vs_state_size(result_files: list[str], out_png: str) -> str:
    """Zoology's figure across runs: accuracy against state size, one line per number of pairs,
    from the results.json of several ``plasticlm eval --suite mqar`` runs (models of several sizes)."""
    import json

    points: dict[str, list[tuple[int, float]]] = {}
    for f in result_files:
        r = json.loads(Path(f).read_text())["suites"].get("mqar")
        if r is None:
            raise ValueError(f"{f}: holds no mqar results")
        for k, acc in r["results"]["accuracy"].items():
            points.setdefault(f"{k} pairs", []).append((r["results"]["state_size"], acc))
    series = {k: ([s for s, _ in sorted(v)], [a for _, a in sorted(v)]) for k, v in points.items()}
    return line_plot(Path(out_png), series, "state size (scalars)", "recall accuracy", "MQAR vs state size", logx=True)
