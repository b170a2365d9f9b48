"""RQ5: does the loss keep falling past the training length?

Models are trained on whole sequences of ``train_len`` bytes of English man pages (exact BPTT
through each: segment BPTT for plasticlm, full autograd for the Transformer), then read held-out
text ``eval_factor`` times longer: man pages concatenated along their SEE ALSO citations,
breadth first from a root (as the linked pretraining task reads them), ``[EOS]`` between pages.
Every page on a held-out walk is left out of training, so the streams are text no model saw.

Loss by position in log-spaced bins, for

- plasticlm's gated average and decay memories (and GLA, when asked for), the state carried
  through the whole stream, and reset every ``train_len`` tokens (each block read as a new document);
- the SDPA Transformer with a sliding window of ``train_len`` (its KV cache cut to the last
  ``train_len`` tokens: what it can use past its training length), and reset every ``train_len``.

The design claims the gated average's loss keeps falling, or at least does not rise, past
``train_len``; decay's fixed gates forget, and the window holds only ``train_len`` tokens.

The held-out streams read in blocks of ``train_len`` also give each model's held-out bits per
byte at its training length: H1's comparison at equal parameters and tokens (run with
``models=[gated_average,transformer,gla]`` at a larger size).

The corpus is built once per experiment from this machine's man pages
(:func:`plasticlm.data.offline.build_offline`, a few minutes on one core) into the work folder,
or read from ``graph`` (a ``graph.jsonl`` of ``plasticlm build-corpus``).
"""
from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import archs
from ..config import ModelConfig
from ..eval.common import whole_bins
from .runner import Run, mean_sd, prepare_byte_documents

RESUMES_RUNS = True  # a run trains for tens of minutes: its trainer checkpoints let it resume mid-run
PLAN_FIELDS = ("models", "seeds")  # --adopt: a run is the same run whichever others are planned
QUESTION = ("Past the length it was trained on, does the gated average's loss keep falling on long held-out text, "
            "against the decay memory and a Transformer with a sliding window of the training length?")
MODELS = {"gated_average": ("plasticlm", "gated_average"), "decay": ("plasticlm", "decay"),
          "transformer": ("transformer", None), "gla": ("gla", None)}
"""name -> (arch, plasticlm memory). GLA (not in the default list; H1 adds it) carries a short
convolution as the design does: E1 found recall needs one."""


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["gated_average", "decay", "transformer"])
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    """plasticlm's options (bias_correction for the gated average only); the Transformer and GLA
    are sized to the gated average's parameter count."""
    train_len: int = 1024
    """T_train: tokens of each training sequence (a piece of a page), trained whole."""
    batch_size: int = 8
    steps: int = 600
    lr: float = 3e-3
    warmup_steps: int = 30
    segment_len: int = 256
    eval_factor: int = 32
    """Held-out streams are eval_factor x train_len tokens long."""
    eval_streams: int = 6
    """Held-out walks (each from its own root page, drawn with ``eval_seed``)."""
    eval_seed: int = 0
    graph: str = ""
    """A graph.jsonl of `plasticlm build-corpus`; empty: built from this machine's man pages."""
    max_pages: int = 0
    """Pages read when building the graph (0: all)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def quick(cls) -> "Config":
        return cls(d_model=32, n_layers=1, n_heads=2, train_len=64, batch_size=2, steps=3, warmup_steps=1,
                   segment_len=32, eval_factor=4, eval_streams=1, max_pages=40, seeds=[0])

    def __post_init__(self) -> None:
        bad = sorted(set(self.models) - set(MODELS))
        if bad:
            raise ValueError(f"length experiment: unknown models {bad}; known: {list(MODELS)}")

    @property
    def eval_len(self) -> int:
        return self.eval_factor * self.train_len


def plan(cfg: Config) -> list[Run]:
    return [Run(f"{m}/seed{s}", {"model": m, "seed": s}) for s in cfg.seeds for m in cfg.models]


def model_spec(cfg: Config, name: str):
    arch, memory = MODELS[name]
    ref = ModelConfig(vocab_size=272, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                      memory="gated_average", **cfg.design)
    if arch == "plasticlm":
        return arch, dataclasses.replace(ref, memory=memory,
                                         bias_correction=ref.bias_correction and memory == "gated_average")
    if arch == "gla":
        return arch, archs.sized_like(arch, ref, short_conv=cfg.design.get("short_conv", 0))
    return arch, archs.sized_like(arch, ref)


# ---- data ----------------------------------------------------------------------------------------

def shared_dir(work: Path) -> Path:
    return work.parent / "shared"


def graph_file(cfg: Config, work: Path) -> Path:
    """The citation graph: ``cfg.graph``, or built once from this machine's man pages."""
    if cfg.graph:
        path = Path(cfg.graph)
        if not path.is_file():
            raise FileNotFoundError(f"length: graph={cfg.graph!r} is not a file; write one with "
                                    "`plasticlm build-corpus OUT` (OUT/graph.jsonl), or leave graph empty")
        return path
    return man_page_graph(work, cfg.max_pages, cfg.eval_len)


def man_page_graph(work: Path, max_pages: int = 0, walk_tokens: int = 65536) -> Path:
    """This machine's English man pages (``max_pages`` of them, 0: all) as ``graph.jsonl``, one
    page a record with its SEE ALSO citations, built once into the experiment's shared work folder
    (a few minutes on one core); ``walk_tokens`` only sets the walk length its report counts."""
    from ..data.offline import BuildConfig, build_offline
    from ..files import locked

    out = shared_dir(work) / f"offline-{max_pages or 'all'}"
    with locked(out.parent / (out.name + ".lock")):  # parallel runs build it once
        if not (out / "report.json").exists():  # the report is written last: a crash leaves no half corpus
            # English pages only (no German pages, no catalogs); the builder's BPE only counts tokens
            build_offline(out, BuildConfig(max_pages=max_pages, vocab_size=300, min_tokens=walk_tokens,
                                           locale_dir=str(out / "none"), de_root=str(out / "none")),
                          progress=False)
    return out / "graph.jsonl"


def walk_tokens(graph, pages: list[int]) -> list[int]:
    """A walk as the linked stream reads it: [BOS], then each page followed by [EOS]."""
    from ..tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    ids = [tok.token_id("[BOS]")]
    for p in pages:
        ids += [int(t) for t in graph.tokens[p]] + [tok.token_id("[EOS]")]
    return ids


def split_corpus(cfg: Config, work: Path) -> tuple[Path, torch.Tensor, list[str]]:
    """(prepared training corpus, held-out streams (N, eval_len + 1), their root pages). The held-out
    walks come from ``eval_streams`` roots drawn at random among those whose walk is long enough;
    every page they read is left out of the training corpus."""
    from ..data.corpus import read_corpus
    from ..data.linked import LinkedGraph
    from ..files import locked
    from ..tokenizer import ByteTokenizer

    gfile = graph_file(cfg, work)
    out = shared_dir(work) / f"length-{cfg.eval_len}-{cfg.eval_streams}-{cfg.eval_seed}"
    docs = list(read_corpus(gfile))
    graph = LinkedGraph.from_documents(docs, ByteTokenizer())
    long_enough = [r for r in range(len(graph)) if graph.walk(r, cfg.eval_len + 1)[1] >= cfg.eval_len + 1]
    if len(long_enough) < cfg.eval_streams:
        raise ValueError(f"length: {gfile} has {len(long_enough)} walks of eval_len + 1 = {cfg.eval_len + 1} tokens, "
                         f"eval_streams={cfg.eval_streams} asked for; use more pages or a smaller eval_factor")
    roots, held, streams = [], set(), []
    for r in random.Random(cfg.eval_seed).sample(long_enough, len(long_enough)):
        pages, _ = graph.walk(r, cfg.eval_len + 1)
        if held & set(pages):
            continue  # walks share no page: the streams are distinct text
        roots.append(graph.ids[r])
        held |= set(pages)
        streams.append(walk_tokens(graph, pages)[:cfg.eval_len + 1])
        if len(streams) == cfg.eval_streams:
            break
    if len(streams) < cfg.eval_streams:
        raise ValueError(f"length: only {len(streams)} walks of {cfg.eval_len + 1} tokens share no page; "
                         f"eval_streams={cfg.eval_streams} asked for")
    with locked(out.parent / (out.name + ".lock")):
        if not (out / "meta.json").exists():
            write_training_corpus(docs, {graph.ids[p] for p in held}, out)
    return out, torch.tensor(streams), roots


def write_training_corpus(docs, held_ids: set[str], out: Path) -> None:
    """The pages not held out, byte-tokenized by ``plasticlm prepare`` into ``out`` (5% for validation)."""
    prepare_byte_documents([(d.id, d.text) for d in docs if d.id not in held_ids], out,
                           {"train": 0.95, "valid": 0.05, "test": 0.0, "holdout": 0.0})


# ---- one run -------------------------------------------------------------------------------------

def execute(cfg: Config, run: Run, device: str, work: Path, loss=None, measure=None) -> dict:
    """Train one model and read the held-out streams. ``loss``: the trainer's LossConfig (the proxy
    experiment's); ``measure(model, streams, metrics) -> dict``: more measurements of the trained
    model (``metrics``: the trainer's logged records)."""
    from ..eval.common import log_bins
    from ..trainer.config import CheckpointConfig, DataConfig, LogConfig, LossConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer
    from ..trainer.metrics import read_metrics
    from .reading import loss_by_position

    p = run.params
    source, streams, roots = split_corpus(cfg, work)
    arch, mcfg = model_spec(cfg, p["model"])
    tc = TrainConfig(
        arch=arch, model=mcfg, seed=p["seed"], device=device, out_dir=str(work / "train"), steps=cfg.steps,
        segment_len=cfg.segment_len, backprop="segment" if archs.get(arch).segment else "full",
        data=DataConfig(kind="traditional", source=str(source), seq_len=cfg.train_len, batch_size=cfg.batch_size),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps), loss=loss or LossConfig(),
        checkpoint=CheckpointConfig(every=max(1, cfg.steps // 6)),
        log=LogConfig(every=10, tensorboard="disabled", eval_every=max(1, cfg.steps // 6)),
        eval_tokens=cfg.batch_size * cfg.train_len)
    trainer = Trainer(tc, progress=False)
    summary = trainer.run()
    model = trainer.model.eval()
    T = cfg.train_len
    if arch == "transformer":  # its cache cut to the last T tokens: all it can use past T
        modes = {"window": archs.as_lm(model, piece=max(1, T // 4), window=T)}
    else:
        modes = {"carried": archs.as_lm(model, piece=T)}
    positions = {mode: loss_by_position(lm, streams, None) for mode, lm in modes.items()}
    positions["reset"] = loss_by_position(archs.as_lm(model, piece=T), streams, T)
    bins = log_bins(cfg.eval_len)
    weights = [min(hi, cfg.eval_len + 1) - lo for lo, hi in bins]  # tokens in each bin
    held_out = sum(w * v for w, v in zip(weights, positions["reset"])) / sum(weights) / math.log(2)
    metrics = read_metrics(work / "train")
    extra = measure(model, streams, metrics) if measure is not None else {}
    return {**extra, "arch": arch, "model_config": mcfg.to_dict(), "n_params": summary["params"],
            "train": {k: summary[k] for k in ("steps", "tokens", "seconds", "tok_s", "valid_loss",
                                               "valid_bits_per_byte")},
            "train_loss": [(r["step"], r["loss"]) for r in metrics if r.get("loss") is not None],
            "held_out_bits_per_byte": held_out, "positions": positions, "position_bins": [[lo, hi] for lo, hi in bins],
            "eval_roots": roots}


def headline(record: dict) -> str:
    mode = next(iter(record["positions"]))
    vals = record["positions"][mode]
    return f"valid {record['train']['valid_bits_per_byte']:.3f} bits/byte; {mode}: last bin {vals[-1]:.3f} nats"


# ---- report --------------------------------------------------------------------------------------

def ranges(cfg: Config) -> list[tuple[int, int]]:
    """Position ranges past the training length: [T, 4T), [4T, 16T), [16T, eval_len]."""
    T, end = cfg.train_len, cfg.eval_len + 1
    edges = sorted({min(e, end) for e in (T, 4 * T, 16 * T)} | {end})
    return list(zip(edges, edges[1:]))


def gain_over_reset(record: dict, mode: str, lo: int, hi: int) -> float | None:
    """Mean over the position bins inside [lo, hi) of (loss reading on) - (loss reset every T):
    what carrying the state changes on the same tokens (negative: it helps). The text itself
    gets easier or harder along a walk; the difference cancels that."""
    bins, vals, reset = record["position_bins"], record["positions"].get(mode), record["positions"]["reset"]
    diffs = [v - r for (b0, b1), v, r in zip(bins, vals or [], reset) if b0 >= lo and b1 <= hi]
    return sum(diffs) / len(diffs) if diffs else None


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    recs = sorted(records, key=lambda r: (cfg.models.index(r["params"]["model"]), r["params"]["seed"]))
    lines = [f"Training: bytes of English man pages (pages of the held-out walks left out), whole sequences of "
             f"{cfg.train_len}, batch {cfg.batch_size}, {cfg.steps} steps, lr {cfg.lr}; d_model {cfg.d_model}, "
             f"{cfg.n_layers} layers; plasticlm with {cfg.design}. Held out: {cfg.eval_streams} walks of "
             f"{cfg.eval_len:,} bytes along SEE ALSO ({cfg.eval_factor} x the training length).", "",
             "Reading on against reset: the loss (nats/byte) with the state carried (the Transformer: its "
             "window) minus the loss with the state reset every training length, on the same tokens, mean "
             "over the position bins of each range; negative means what was read before helps. Mean over "
             "seeds ± their standard deviation.", "",
             "Held-out bits/byte: the held-out streams read in blocks of the training length, each from an "
             "empty state (the models as trained: H1's measure).", "",
             "| model | params | reading | seeds | held-out bits/byte | " +
             " | ".join(f"{lo:,}-{hi - 1:,}" for lo, hi in ranges(cfg)) + " |",
             "|---|---:|---|---:|---:|" + "---:|" * len(ranges(cfg))]
    for m in cfg.models:
        rs = [r for r in recs if r["params"]["model"] == m]
        if not rs:
            continue
        bpb = mean_sd([r["held_out_bits_per_byte"] for r in rs])
        for mode in (k for k in rs[0]["positions"] if k != "reset"):
            cells = []
            for lo, hi in ranges(cfg):
                gains = [g for g in (gain_over_reset(r, mode, lo, hi) for r in rs) if g is not None]
                cells.append(mean_sd(gains, signed=True) if gains else "-")
            lines.append(f"| {m} | {rs[0]['n_params']:,} | {mode} - reset | {len(rs)} | {bpb} | " + " | ".join(cells) + " |")
    if recs:
        full = whole_bins(recs[0]["position_bins"], cfg.eval_len)
        bins = [recs[0]["position_bins"][i] for i in full]
        lines += ["", "### Loss (nats/byte) by position, every run", "",
                  "| model | seed | reading | " + " | ".join(f"{lo}-{hi - 1}" for lo, hi in bins) + " |",
                  "|---|---:|---|" + "---:|" * len(bins)]
        for r in recs:
            for mode, vals in r["positions"].items():
                lines.append(f"| {r['params']['model']} | {r['params']['seed']} | {mode} | " + " | ".join(
                    "-" if vals[i] is None or math.isnan(vals[i]) else f"{vals[i]:.3f}" for i in full) + " |")
        lines += ["", f"Held-out walks start at: {', '.join(recs[0]['eval_roots'])}."]
    if out is not None and recs:
        lines += ["", plot(cfg, recs, out)]
    return "\n".join(lines) + "\n"


def plot(cfg: Config, recs: list[dict], out: Path) -> str:
    """Left: loss by position, each reading. Right: reading on minus reset, bin by bin, past the
    training length (each seed a line): the part of the left panel that is the model's."""
    from ..eval.results import legend, pyplot

    plt = pyplot()
    fig, (ax, dx) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {m: f"C{i}" for i, m in enumerate(cfg.models)}
    for r in recs:
        m, first = r["params"]["model"], r["params"]["seed"] == recs[0]["params"]["seed"]
        bins = r["position_bins"]
        full = whole_bins(bins, cfg.eval_len)
        mids = [sum(bins[i]) / 2 for i in full]
        reset = r["positions"]["reset"]
        for mode, vals in r["positions"].items():
            ax.plot(mids, [vals[i] for i in full], ls="-" if mode != "reset" else ":", marker=".", color=colors[m],
                    alpha=0.8, label=f"{m}, {mode}" if first else None)
            if mode != "reset":
                past = [i for i in full if bins[i][0] >= cfg.train_len]
                dx.plot([sum(bins[i]) / 2 for i in past], [vals[i] - reset[i] for i in past], marker=".",
                        color=colors[m], alpha=0.8, label=f"{m}, {mode} - reset" if first else None)
    ax.axvline(cfg.train_len, color="gray", lw=0.8, ls="--")
    ax.annotate("training length", (cfg.train_len, 0.98), xycoords=("data", "axes fraction"), fontsize=7,
                color="gray", ha="right", va="top", rotation=90)
    ax.set(xscale="log", xlabel="position in the held-out stream (bytes)", ylabel="loss (nats/byte)",
           title=f"Loss by position (training length {cfg.train_len})")
    dx.axhline(0, color="gray", lw=0.8)
    dx.set(xscale="log", xlabel="position in the held-out stream (bytes)", ylabel="loss difference (nats/byte)",
           title="Reading on minus reset (below 0: what was read helps)")
    for a in (ax, dx):
        a.grid(alpha=0.3)
        legend(a, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_by_position.png", dpi=110)
    plt.close(fig)
    return "![loss_by_position.png](loss_by_position.png)"
