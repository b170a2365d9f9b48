"""RQ6: do mutable embeddings help a model read a language whose vocabulary it has never seen?

The shuffled-vocabulary task at toy scale: bytes of the builtin corpus, written per sequence in a
new language (a fresh permutation within byte categories, with fission and fusion), each
sequence a Rosetta header of translations then ~``min_tokens`` tokens of text, one whole row of
one step, exact segment BPTT through header and text. Two models, equal but for
``embeddings``: 'parameter' (the tied table only) and 'mutable' (plus the per-sequence table,
``plasticlm.embedding``; 1.6% more parameters at d_model 128), trained on the same sequences.

Measured on held-out text (the corpus's valid split, never trained on):

- **shuffled**: loss by position in sequences of fresh languages (the stream's valid split, its
  own permutations): if the table lets the model carry what a code means, its loss falls faster
  with position;
- **plain**: loss by position on the same text unpermuted (no header): what mutability costs or
  brings on ordinary text.

The corpus is prepared once per experiment (``plasticlm prepare`` with the byte tokenizer) into
the work folder; every run reads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ModelConfig
from ..eval.common import whole_bins
from .runner import Run, mean_sd

RESUMES_RUNS = True  # each run trains for tens of minutes: its trainer checkpoints let it resume
PLAN_FIELDS = ("embeddings", "seeds")  # --adopt: a run is the same run whichever others are planned
QUESTION = ("Do mutable embeddings (a per-sequence table the model writes while reading) let a model read a "
            "shuffled vocabulary better than ordinary embeddings, and what do they cost on plain text?")


@dataclass
class Config:
    embeddings: list[str] = field(default_factory=lambda: ["parameter", "mutable"])
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    seq_len: int = 4096
    """Longest sequence (header + text)."""
    min_tokens: int = 3500
    """Text tokens per sequence after the header."""
    rosetta: int = 60
    """Translations in the header (of the rosetta_top most frequent bytes)."""
    rosetta_top: int = 200
    pool: int = 100
    """Fission and fusion act on the pool most frequent bytes / pairs."""
    batch_size: int = 4
    steps: int = 150
    lr: float = 3e-3
    warmup_steps: int = 15
    segment_len: int = 256
    eval_sequences: int = 8
    """Held-out sequences scored per measure."""
    fractions: dict = field(default_factory=lambda: {"train": 0.5, "valid": 0.05, "test": 0.05, "holdout": 0.4})
    """Split of the builtin corpus's paragraphs (the shuffled task trains on holdout)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def quick(cls) -> "Config":
        return cls(d_model=32, n_layers=1, n_heads=2, seq_len=256, min_tokens=150, rosetta=8, rosetta_top=40,
                   pool=20, batch_size=2, steps=2, warmup_steps=1, segment_len=64, eval_sequences=2, seeds=[0])

    def __post_init__(self) -> None:
        bad = sorted(set(self.embeddings) - {"parameter", "mutable"})
        if bad:
            raise ValueError(f"embeddings experiment: unknown embeddings {bad}; known: ['parameter', 'mutable']")


def plan(cfg: Config) -> list[Run]:
    return [Run(f"{e}/seed{s}", {"embeddings": e, "seed": s}) for s in cfg.seeds for e in cfg.embeddings]


def corpus_dir(work: Path) -> Path:
    return work.parent / "shared" / "builtin-bytes"


def prepared_corpus(cfg: Config, work: Path) -> Path:
    """The byte-tokenized builtin corpus, prepared once (the same text and splits for every run)."""
    from ..data.builtin import builtin_corpus
    from ..data.shards import prepare
    from ..files import atomic_write, locked
    from ..tokenizer import ByteTokenizer

    out = corpus_dir(work)
    with locked(out.parent / "builtin-bytes.lock"):  # parallel runs prepare it once
        if not (out / "meta.json").exists():
            src = out.parent / "builtin-src"
            src.mkdir(parents=True, exist_ok=True)
            atomic_write(src / "builtin.txt", lambda tmp: Path(tmp).write_text(builtin_corpus(), encoding="utf-8"))
            ByteTokenizer().save(src / "tokenizer.json")
            prepare(str(src / "builtin.txt"), out, tokenizer=str(src / "tokenizer.json"), unit="paragraph",
                    fractions=dict(cfg.fractions), progress=False)
    return out


def data_config(cfg: Config, source: Path, kind: str = "shuffled"):
    from ..trainer.config import DataConfig

    options = {"min_tokens": cfg.min_tokens, "rosetta": cfg.rosetta, "rosetta_top": cfg.rosetta_top,
               "ramp_tokens": 0, "pool": cfg.pool} if kind == "shuffled" else {}
    return DataConfig(kind=kind, source=str(source), seq_len=cfg.seq_len, batch_size=cfg.batch_size, options=options)


def held_out_batches(cfg: Config, data, seed: int):
    """The batches of ``data``'s valid split that every held-out measure reads: the first ones
    holding at least ``eval_sequences`` rows with text. (An epoch's last batch is padded with
    empty rows, and may come first: results made before 2026-12-04 05:00 UTC counted those too,
    and scored 6 rows of text for 8 in seed 0's shuffled stream of the builtin corpus.)"""
    from ..trainer.stream_kinds import build_stream

    stream, rows = build_stream(data, split="valid", seed=seed), 0
    while rows < cfg.eval_sequences:
        b = stream.next_batch()
        yield b
        rows += int((b.weights > 0).any(1).sum())


def binned(total: torch.Tensor, count: torch.Tensor, starts: list[int]) -> dict:
    """Summed losses and counts of scored tokens by input position (the token at t + 1 predicted
    from t) as the mean loss in log-spaced bins of the predicted position, and overall."""
    from ..eval.common import log_bins

    bins = log_bins(len(total))
    loss = [float(total[lo - 1:hi - 1].sum() / count[lo - 1:hi - 1].sum()) if count[lo - 1:hi - 1].sum() > 0
            else None for lo, hi in bins]  # None: no scored token in the bin (the header's positions)
    return {"bins": [[lo, hi] for lo, hi in bins], "loss": loss, "text_starts": starts,
            "mean": float(total.sum() / count.sum())}


@torch.no_grad()
def loss_by_position(model, cfg: Config, data, seed: int) -> dict:
    """Mean loss (nats per byte) in log-spaced position bins over held-out rows of ``data``'s
    valid split, the weight-0 positions (header, padding) left out; and where the text begins."""
    T = cfg.seq_len
    total, count, starts = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64), []
    for b in held_out_batches(cfg, data, seed):
        state = model.init_state(b.tokens.shape[0])
        for a in range(0, b.tokens.shape[1], cfg.segment_len):
            logits, state = model(b.tokens[:, a:a + cfg.segment_len], state)
            ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(),
                                                   b.targets[:, a:a + cfg.segment_len].flatten(),
                                                   reduction="none").view(logits.shape[:2])
            w = (b.weights[:, a:a + cfg.segment_len] > 0).double()
            n = ce.shape[1]
            total[a:a + n] += (ce * w).sum(0)
            count[a:a + n] += w.sum(0)
        starts += [int((row > 0).nonzero()[0]) for row in b.weights if (row > 0).any()]
    return binned(total, count, starts)


def oracles_by_position(cfg: Config, data, seed: int, vocab: int) -> dict[str, dict]:
    """The model-free predictors of :mod:`plasticlm.eval.oracles` on the same held-out rows as
    :func:`loss_by_position`, each in its form: what reading alone gives on them."""
    import numpy as np

    from ..eval.oracles import oracle_losses

    rows, starts = [], []
    for b in held_out_batches(cfg, data, seed):
        for targets, weights in zip(b.targets.numpy(), b.weights.numpy()):
            idx = np.flatnonzero(weights > 0)
            if len(idx):
                rows.append((idx, targets[idx]))
                starts.append(int(idx[0]))
    out = {}
    for name, losses in oracle_losses([ids for _, ids in rows], vocab).items():
        total, count = np.zeros(cfg.seq_len), np.zeros(cfg.seq_len)
        for (idx, _), loss in zip(rows, losses):
            np.add.at(total, idx, loss)
            np.add.at(count, idx, 1)
        out[name] = binned(torch.from_numpy(total), torch.from_numpy(count), starts)
    return out


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    from ..trainer.config import CheckpointConfig, LogConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer
    from ..trainer.metrics import read_metrics

    p = run.params
    source = prepared_corpus(cfg, work)
    mcfg = ModelConfig(vocab_size=272, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       embeddings=p["embeddings"], **cfg.design)
    tc = TrainConfig(
        arch="plasticlm", model=mcfg, seed=p["seed"], device=device, out_dir=str(work / "train"), steps=cfg.steps,
        segment_len=cfg.segment_len, data=data_config(cfg, source),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        checkpoint=CheckpointConfig(every=max(1, cfg.steps // 5)),
        log=LogConfig(every=5, tensorboard="disabled", eval_every=max(1, cfg.steps // 5)),
        eval_tokens=cfg.batch_size * cfg.seq_len)
    trainer = Trainer(tc, progress=False)
    summary = trainer.run()
    model = trainer.model.eval()
    metrics = read_metrics(work / "train")
    return {"model_config": mcfg.to_dict(), "n_params": summary["params"],
            "train": {k: summary[k] for k in ("steps", "tokens", "seconds", "tok_s", "valid_loss")},
            "train_loss": [(r["step"], r["loss"]) for r in metrics if r.get("loss") is not None],
            "valid_curve": [(r["step"], r["valid_loss"]) for r in metrics if "valid_loss" in r],
            "shuffled": loss_by_position(model, cfg, data_config(cfg, source), p["seed"]),
            "plain": loss_by_position(model, cfg, data_config(cfg, source, "traditional"), p["seed"])}


def headline(record: dict) -> str:
    return f"shuffled {record['shuffled']['mean']:.3f}, plain {record['plain']['mean']:.3f} nats/byte"


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    lines = [f"Training: the shuffled-vocabulary task on bytes of the builtin corpus, sequences of up to "
             f"{cfg.seq_len} (a Rosetta header of {cfg.rosetta} translations, then ~{cfg.min_tokens} text tokens), "
             f"batch {cfg.batch_size}, {cfg.steps} steps, lr {cfg.lr}, exact segment BPTT (segments of "
             f"{cfg.segment_len}); d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.design}.", "",
             "Mean over seeds ± their standard deviation; loss in nats per byte on held-out text.", "",
             "| embeddings | seeds | params | shuffled: mean loss | plain: mean loss | valid loss (training stream) |",
             "|---|---:|---:|---:|---:|---:|"]
    by = {e: [r for r in records if r["params"]["embeddings"] == e] for e in cfg.embeddings}
    for e, rs in by.items():
        if rs:
            lines.append(f"| {e} | {len(rs)} | {rs[0]['n_params']:,} | {mean_sd([r['shuffled']['mean'] for r in rs])} | "
                         f"{mean_sd([r['plain']['mean'] for r in rs])} | {mean_sd([r['train']['valid_loss'] for r in rs])} |")
    for measure in ("shuffled", "plain"):
        done = [r for r in records if r[measure]["bins"]]
        if not done:
            continue
        bins = done[0][measure]["bins"]
        full = whole_bins(bins, cfg.seq_len)
        lines += ["", f"### Loss by position, {measure} (mean over seeds)", "",
                  "| embeddings | " + " | ".join(f"{bins[i][0]}-{bins[i][1] - 1}" for i in full) + " |",
                  "|---|" + "---:|" * len(full)]
        for e, rs in by.items():
            if rs:
                cols = [[r[measure]["loss"][i] for r in rs] for i in full]
                lines.append(f"| {e} | " + " | ".join(
                    "-" if any(v is None or math.isnan(v) for v in c) else f"{sum(c) / len(c):.3f}" for c in cols) + " |")
    if out is not None and records:
        lines += ["", plot(cfg, by, out)]
    return "\n".join(lines) + "\n"


def plot(cfg: Config, by: dict, out: Path) -> str:
    from ..eval.results import legend, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure in zip(axes, ("shuffled", "plain")):
        for e, rs in by.items():
            for r in rs:
                full = whole_bins(r[measure]["bins"], cfg.seq_len)
                mids = [sum(r[measure]["bins"][i]) / 2 for i in full]
                loss = [r[measure]["loss"][i] for i in full]
                ax.plot(mids, [math.nan if v is None else v for v in loss], marker=".", color="C0" if e == "parameter" else "C1",
                        alpha=0.8, label=f"{e}, seed {r['params']['seed']}")
        ax.set(xscale="log", xlabel="position in the sequence", ylabel="loss (nats/byte)",
               title=f"{measure}: held-out text" + (" in fresh languages" if measure == "shuffled" else ""))
        ax.grid(alpha=0.3)
        legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_by_position.png", dpi=110)
    plt.close(fig)
    return "![loss_by_position.png](loss_by_position.png)"
