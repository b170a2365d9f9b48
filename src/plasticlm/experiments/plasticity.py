"""H3 and RQ6 from a text model: does a shuffled-vocabulary stage teach a model to learn from reading?

The RQ6 experiment (``embeddings``) trains from scratch on shuffled text only, and at a CPU
budget neither model learns even plain bytes there (4.5 nats/byte). The design's curriculum
puts the shuffled task after plain text, so this one does: per seed, a **base** model trained on
plain bytes of the corpus (pieces of ``base_seq_len``), then three arms from those
same weights, each ``stage_steps`` more updates on the same number of tokens:

- **plain**: more plain text (H3's control: what the extra tokens give without the task);
- **shuffled**: the shuffled-vocabulary task (each sequence a new language, a Rosetta header,
  exact segment BPTT through it), the tied embedding table as trained;
- **shuffled-mutable**: the same task with ``embeddings: mutable`` (RQ6): the base's weights, and
  the per-sequence table's own parameters at their initialisation.

The corpus (``corpus``) is the builtin text, or this machine's English man pages (24.7 MB,
21 times the builtin text: at the stage lengths a larger run needs, the plain arm reads the
builtin train split many times over and overfits it), cut into documents of consecutive
paragraphs of at most ``doc_bytes`` (:func:`prepared_corpus`; a man page's pieces share its
split), split once: plain training reads the train split, the shuffled task the holdout split,
and every measurement the valid split.

Measured for the base and every arm, on held-out text (the corpus's valid split):

- **one-shot curve**: loss by position in sequences of fresh languages; a model that learns the
  language while reading has a loss that falls with position; beside it (recorded with the base),
  two predictors without a model on the same rows: a global unigram (the best without reading)
  and each row's own counts so far (the crudest reading, :mod:`plasticlm.eval.oracles`);
- **plain**: loss by position on the same text unpermuted (what the stage costs on plain text);
- **probes**: the drift rule and the template (``plasticlm.eval.probes``) against occurrences,
  beside their shuffled controls and the untrained model.

H3 predicts that only the shuffled arms gain from reading (their one-shot curve falls, their
probe curves rise above the controls); RQ6 asks whether the mutable table lowers the one-shot
curve further.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig
from ..eval.common import whole_bins
from ..files import MANIFEST
from .embeddings import data_config, loss_by_position, oracles_by_position
from .reading import probe_last
from .runner import Run, mean_sd, prepare_byte_documents

RESUMES_RUNS = True  # runs train for tens of minutes: their trainer checkpoints let them resume
QUESTION = ("After plain text, does a stage of the shuffled-vocabulary task make a model learn from what it reads "
            "(one-shot languages, in-context rules) where more plain text does not, and do mutable embeddings add to it?")
ARMS = ["plain", "shuffled", "shuffled-mutable"]
CORPORA = ("builtin", "manpages")


@dataclass
class Config:
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    corpus: str = "builtin"
    """builtin (0.61M bytes in its train split) or manpages (this machine's English man pages, built
    once into the work folder with groff: 11.5M bytes in the train split, 10.2M in the holdout)."""
    max_pages: int = 0
    """manpages: read at most this many pages (0: all)."""
    base_steps: int = 600
    base_seq_len: int = 1024
    base_batch_size: int = 8
    """The base: plain bytes, as E3's plasticlm (4.58M tokens at these settings: each document's
    last piece is shorter)."""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    stage_steps: int = 150
    seq_len: int = 4096
    """Longest stage sequence (header + text), also of the held-out measures."""
    doc_bytes: int = 4000
    """Documents are runs of consecutive paragraphs of at most this many bytes (a longer paragraph
    alone). Single paragraphs (~150 bytes) made every plain sequence a paragraph; documents just
    under seq_len - 2 ([BOS], [EOS]) fill the plain arm's rows without a short tail each, and
    reach the shuffled task's min_tokens alone."""
    min_tokens: int = 3500
    rosetta: int = 60
    rosetta_top: int = 200
    pool: int = 100
    batch_size: int = 4
    lr: float = 3e-3
    warmup_steps: int = 15
    segment_len: int = 256
    eval_sequences: int = 8
    probe_dialogues: int = 64
    probe_occurrences: int = 64
    probe_held_out: int = 32
    fractions: dict = field(default_factory=lambda: {"train": 0.5, "valid": 0.05, "test": 0.05, "holdout": 0.4})
    """Split of the corpus's documents: the base and the plain arm train on train, the
    shuffled arms on holdout (as the pretraining task does), every measure reads valid."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def quick(cls) -> "Config":
        return cls(d_model=32, n_layers=1, n_heads=2, base_steps=2, base_seq_len=128, base_batch_size=2,
                   stage_steps=2, seq_len=256, min_tokens=150, rosetta=8, rosetta_top=40, pool=20, batch_size=2,
                   warmup_steps=1, segment_len=64, eval_sequences=2, probe_dialogues=2, probe_occurrences=2,
                   probe_held_out=2, doc_bytes=250, seeds=[0])

    def __post_init__(self) -> None:
        bad = sorted(set(self.arms) - set(ARMS))
        if bad:
            raise ValueError(f"plasticity experiment: unknown arms {bad}; known: {ARMS}")
        if self.corpus not in CORPORA:
            raise ValueError(f"plasticity experiment: corpus={self.corpus!r}; known: {', '.join(CORPORA)}")
        if not 0 < self.doc_bytes <= self.seq_len - 2:
            raise ValueError(f"plasticity experiment: doc_bytes={self.doc_bytes} must be in [1, seq_len - 2 = "
                             f"{self.seq_len - 2}], so that a plain document with [BOS] and [EOS] fills at most one row")


def plan(cfg: Config) -> list[Run]:
    runs = []
    for s in cfg.seeds:
        runs.append(Run(f"base/seed{s}", {"arm": "base", "seed": s}))
        runs += [Run(f"{a}/seed{s}", {"arm": a, "seed": s}, needs=[f"base/seed{s}"]) for a in cfg.arms]
    return runs


def model_config(cfg: Config, arm: str) -> ModelConfig:
    return ModelConfig(vocab_size=272, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                       embeddings="mutable" if arm == "shuffled-mutable" else "parameter", **cfg.design)


def prepared_corpus(cfg: Config, work: Path) -> Path:
    """The corpus as documents of consecutive paragraphs (at most ``doc_bytes`` each, a man page's
    pieces in one group), byte-tokenized and split by ``plasticlm prepare`` once for every run."""
    from ..files import locked

    name = f"builtin-docs-{cfg.doc_bytes}" if cfg.corpus == "builtin" else \
        f"manpages-{cfg.max_pages or 'all'}-docs-{cfg.doc_bytes}"
    out = work.parent / "shared" / name
    with locked(out.parent / (out.name + ".lock")):  # parallel runs prepare it once
        if not (out / "meta.json").exists():
            prepare_byte_documents(documents(cfg, work), out, cfg.fractions)
    return out


def documents(cfg: Config, work: Path) -> list[tuple[str, ...]]:
    """(id, text) pieces of the builtin text (each piece its own split, as the committed builtin runs
    were made), or (id, text, page) pieces of every man page."""
    if cfg.corpus == "builtin":
        from ..data.builtin import builtin_corpus

        return [(f"builtin-{i}", d) for i, d in enumerate(paragraph_runs(builtin_corpus(), cfg.doc_bytes))]
    from ..data.corpus import read_corpus
    from .length import man_page_graph

    return [(f"{page.id}#{i}", d, page.id) for page in read_corpus(man_page_graph(work, cfg.max_pages))
            for i, d in enumerate(paragraph_runs(page.text, cfg.doc_bytes))]


def paragraph_runs(text: str, doc_bytes: int) -> list[str]:
    """``text`` cut at blank lines into runs of consecutive paragraphs of at most ``doc_bytes``
    bytes each (a longer paragraph alone)."""
    docs, run, size = [], [], 0
    for para in (p.strip("\n") for p in text.split("\n\n") if p.strip()):
        n = len(para.encode())
        if run and size + 2 + n > doc_bytes:  # 2: the blank line between paragraphs
            docs.append("\n\n".join(run))
            run, size = [], 0
        size += n + (2 if run else 0)
        run.append(para)
    if run:
        docs.append("\n\n".join(run))
    return docs


def base_dir(work: Path, seed: int) -> Path:
    """Where the base of ``seed`` is saved: shared by the arms that start from it."""
    return work.parent / "shared" / f"base-seed{seed}"


def start_model(cfg: Config, arm: str, base: Path):
    """The arm's model with the base's weights; the mutable table's parameters, which the base
    lacks, keep their initialisation (nothing else may be missing or left over)."""
    from .. import archs
    from ..trainer import run_state

    mcfg = model_config(cfg, arm)
    model = archs.build("plasticlm", mcfg)
    missing, unexpected = model.load_state_dict(run_state.load_weights(base), strict=False)
    if unexpected or any(not k.startswith("mutable.") for k in missing):
        raise RuntimeError(f"plasticity: the base at {base} does not fit the {arm} model: missing {missing}, "
                           f"unexpected {unexpected}")
    return model, mcfg


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    from ..checkpoint import save_model
    from ..tokenizer import ByteTokenizer
    from ..trainer.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer
    from ..trainer.metrics import read_metrics
    from .. import archs
    from .reading import probe_curves

    p = run.params
    source = prepared_corpus(cfg, work)
    base = base_dir(work, p["seed"])
    if p["arm"] == "base":
        mcfg, model = model_config(cfg, "base"), None
        data = DataConfig(kind="traditional", source=str(source), seq_len=cfg.base_seq_len,
                          batch_size=cfg.base_batch_size)
        steps = cfg.base_steps
    else:
        if not (base / MANIFEST).exists():  # a cleared work folder: the same seed rebuilds it (in a
            # sibling folder, so that it finds the same shared corpus and saves where `base` points)
            execute(cfg, Run(f"base/seed{p['seed']}", {"arm": "base", "seed": p["seed"]}), device,
                    work.parent / f"{work.name}-base")
        model, mcfg = start_model(cfg, p["arm"], base)
        data = data_config(cfg, source, "traditional" if p["arm"] == "plain" else "shuffled")
        steps = cfg.stage_steps
    tc = TrainConfig(
        arch="plasticlm", model=mcfg, seed=p["seed"], device=device, out_dir=str(work / "train"), steps=steps,
        segment_len=cfg.segment_len, data=data, optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        # at most 100 steps apart (5-6 minutes of an arm on one core): a stage of hours, cut off, loses little
        checkpoint=CheckpointConfig(every=max(1, min(100, steps // 5))),
        log=LogConfig(every=5, tensorboard="disabled", eval_every=max(1, steps // 5)),
        eval_tokens=data.batch_size * data.seq_len)
    trainer = Trainer(tc, progress=False, model=model)
    summary = trainer.run()
    model = trainer.model.eval()
    if p["arm"] == "base":
        save_model(base, model, ByteTokenizer())
    metrics = read_metrics(work / "train")
    lm = archs.as_lm(model, piece=cfg.segment_len)
    return {"model_config": mcfg.to_dict(), "n_params": summary["params"],
            "train": {k: summary[k] for k in ("steps", "tokens", "seconds", "tok_s", "valid_loss")},
            "train_loss": [(r["step"], r["loss"]) for r in metrics if r.get("loss") is not None],
            "shuffled": loss_by_position(model, cfg, data_config(cfg, source), p["seed"]),
            "plain": loss_by_position(model, cfg, data_config(cfg, source, "traditional"), p["seed"]),
            "probes": probe_curves(cfg, lm, "plasticlm", mcfg, p["seed"], device, work / "probes", cfg.segment_len),
            # the one-shot rows depend on the seed alone: the base records what reading alone gives on them
            **({"oracles": oracles_by_position(cfg, data_config(cfg, source), p["seed"], mcfg.vocab_size)}
               if p["arm"] == "base" else {})}


def headline(record: dict) -> str:
    return f"one-shot {record['shuffled']['mean']:.3f}, plain {record['plain']['mean']:.3f} nats/byte"


# ---- report --------------------------------------------------------------------------------------

def fall(measure: dict, seq_len: int) -> float | None:
    """Loss in the last whole position bin minus the loss in the first bin after the header's end
    (the first bin with text in every row): how much reading the text lowered the loss."""
    loss = measure["loss"]
    start = max(measure["text_starts"] or [0])
    inside = [i for i in whole_bins(measure["bins"], seq_len) if measure["bins"][i][0] > start and loss[i] is not None]
    return loss[inside[-1]] - loss[inside[0]] if len(inside) >= 2 else None


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    order = ["base", *cfg.arms]
    by = {a: sorted((r for r in records if r["params"]["arm"] == a), key=lambda r: r["params"]["seed"]) for a in order}
    corpus = "the builtin corpus" if cfg.corpus == "builtin" else "this machine's English man pages"
    lines = [f"Base: plain bytes of {corpus}, {cfg.base_steps} steps of {cfg.base_batch_size} x "
             f"{cfg.base_seq_len}; then each arm {cfg.stage_steps} steps of {cfg.batch_size} sequences of up to "
             f"{cfg.seq_len} (shuffled: a Rosetta header of {cfg.rosetta} translations, then ~{cfg.min_tokens} text "
             f"tokens), lr {cfg.lr}, exact segment BPTT (segments of {cfg.segment_len}); d_model {cfg.d_model}, "
             f"{cfg.n_layers} layers, {cfg.design}.", "",
             "Loss in nats per byte on held-out text, mean over seeds ± their standard deviation. Fall with "
             "reading: loss in the last position bin minus the first bin after the header (negative: reading "
             "the text lowered the loss). The rows without a model score the same one-shot rows: a global unigram "
             "fitted on them (the best without reading) and each row's own counts so far (the crudest reading).", "",
             "| model | seeds | params | one-shot: mean loss | one-shot: fall with reading | plain: mean loss | "
             "plain: fall with reading |", "|---|---:|---:|---:|---:|---:|---:|"]
    for a, rs in by.items():
        if not rs:
            continue
        cells = []
        for measure in ("shuffled", "plain"):
            falls = [f for f in (fall(r[measure], cfg.seq_len) for r in rs) if f is not None]
            cells += [mean_sd([r[measure]["mean"] for r in rs]), mean_sd(falls, signed=True) if falls else "-"]
        lines.append(f"| {a} | {len(rs)} | {rs[0]['n_params']:,} | " + " | ".join(cells) + " |")
    measured = [r["oracles"] for r in by["base"] if "oracles" in r]  # (results made before oracles were recorded lack them)
    for name in (measured[0] if measured else {}):
        falls = [f for f in (fall(m[name], cfg.seq_len) for m in measured) if f is not None]
        lines.append(f"| {name} (no model) | {len(measured)} | - | {mean_sd([m[name]['mean'] for m in measured])} | "
                     f"{mean_sd(falls, signed=True) if falls else '-'} | - | - |")
    one_shot = {a: {r["params"]["seed"]: fall(r["shuffled"], cfg.seq_len) for r in rs} for a, rs in by.items()}
    plain = one_shot.get("plain", {})
    for a in (a for a in cfg.arms if a != "plain"):
        pairs = [(s, f - plain[s]) for s, f in one_shot[a].items() if f is not None and plain.get(s) is not None]
        if pairs:  # H3's comparison: the same base and number of steps, only the stage's task differs
            lines += ["", f"One-shot fall with reading, {a} arm minus plain arm, paired by seed: "
                      + " / ".join(f"{d:+.3f} (seed {s})" for s, d in pairs)
                      + f"; mean ± sd {mean_sd([d for _, d in pairs], signed=True)} (negative: reading lowered "
                        f"the loss more, or raised it less, after the {a} stage than after more plain text; a "
                        f"model that learnt to read also has a fall of its own below zero)."]
    lines += ["", "### Probes after the most reading (model / shuffled control / untrained), each seed", "",
              "| model | seed | drift: rule followed | template: fixed word | template: copied word |",
              "|---|---:|---|---|---|"]
    for a, rs in by.items():
        for r in rs:
            pr = r["probes"]
            lines.append(f"| {a} | {r['params']['seed']} | {probe_last(pr, 'drift', 'match_rate')} | "
                         f"{probe_last(pr, 'template', 'marker_rate')} | {probe_last(pr, 'template', 'copy_rate')} |")
    if out is not None and records:
        lines += ["", plot(by, cfg.seq_len, out)]
    return "\n".join(lines) + "\n"


def plot(by: dict, seq_len: int, out: Path) -> str:
    from ..eval.results import legend, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, measure in zip(axes, ("shuffled", "plain")):
        for i, (a, rs) in enumerate(by.items()):
            for r in rs:
                m = r[measure]
                keep = whole_bins(m["bins"], seq_len)
                ax.plot([sum(m["bins"][j]) / 2 for j in keep], [math.nan if m["loss"][j] is None else m["loss"][j]
                                                                for j in keep],
                        marker=".", color=f"C{i}", alpha=0.8, label=a if r is rs[0] else None)
        for j, r in enumerate(r for r in by["base"] if "oracles" in r and measure == "shuffled"):
            for name, style in (("global unigram", ":"), ("counting", "--")):
                m = r["oracles"][name]
                keep = [k for k in whole_bins(m["bins"], seq_len) if m["loss"][k] is not None]
                ax.plot([sum(m["bins"][k]) / 2 for k in keep], [m["loss"][k] for k in keep], style, color="0.3",
                        label=f"{name} (no model)" if j == 0 else None)
        ax.set(xscale="log", xlabel="position in the sequence", ylabel="loss (nats/byte)",
               title="one-shot: held-out text in fresh languages" if measure == "shuffled" else "plain held-out text")
        ax.grid(alpha=0.3)
        legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_by_position.png", dpi=110)
    plt.close(fig)
    return "![loss_by_position.png](loss_by_position.png)"
