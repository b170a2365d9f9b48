"""E2: does exact BPTT through the whole sequence beat truncation, as the trainer's design claims?

Task: gap recall (:func:`plasticlm.data.recall.gap_recall`): key-value pairs, ``gap`` random
filler tokens, then every key again; only the recalled values are scored, so learning needs a
gradient that reaches back over the gap. Two arms train the same model on the same sequences:

- **exact**: ``bptt: whole``, one optimizer step per batch of whole sequences, exact segment
  BPTT (segments of ``segment_len``) through every token;
- **window**: ``bptt: window``, what the recipes did before: each sequence cut into windows of
  ``window`` tokens, the state carried detached from one to the next, one optimizer step per
  window (the windows without scored tokens only carry the state: no step).

Both see every token and have one optimizer update per batch of sequences; the window arm's
gradients stop at window edges. The design predicts: exact learns at gaps > window, the window
arm stays near chance there. Each (memory, arm, gap) runs with several seeds.

Recall itself is slow to learn at these widths (a long plateau, as Zoology's MQAR shows), far
slower than a CPU can afford at gaps of thousands of tokens. So every run starts from one warm
start per memory and seed: the model trained to recall across a short gap (``warm_gap``, within
one window, where the two arms are the same), saved, then trained further at gap G by each arm.
The accuracy at gap G before that training (what the warm start already carries that far) is
reported beside the accuracy after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from ..config import ModelConfig
from ..data.recall import RecallConfig
from ..eval.mqar import accuracy
from .runner import Run

QUESTION = ("Does exact backpropagation through the whole sequence let the memory learn a recall across "
            "gaps longer than a truncation window, where truncated BPTT (the state detached every W tokens) "
            "cannot?")


@dataclass
class Config:
    gaps: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    window: int = 256
    """W of the truncated arm."""
    segment_len: int = 64
    pairs: int = 8
    vocab: int = 255
    """Task vocabulary: keys, values and fillers take a third each."""
    fillers: int = 0
    """Distinct filler tokens in the gap (0: the whole third; 1: one token repeated)."""
    memories: list[str] = field(default_factory=lambda: ["gated_average", "decay"])
    arms: list[str] = field(default_factory=lambda: ["exact", "window"])
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    """plasticlm options (bias_correction only for the gated average)."""
    d_model: int = 128
    """The width at which recall is learned in about a thousand steps (E1); narrower models sit on the
    first plateau for many thousands."""
    n_layers: int = 2
    head_dim: int = 32
    batch_size: int = 8
    steps: int = 150
    """Optimizer updates at most (batches of whole sequences) at gap G."""
    lr: float = 3e-3
    warmup_steps: int = 15
    eval_every: int = 25
    test_examples: int = 128
    target: float = 0.99
    """Stop once the test accuracy reaches this."""
    warm_gap: int = 16
    warm_batch_size: int = 64
    warm_steps: int = 2000
    warm_target: float = 0.9
    """The warm start trains until this test accuracy at warm_gap (or warm_steps)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])

    @classmethod
    def quick(cls) -> "Config":
        return cls(gaps=[16, 48], window=32, segment_len=8, pairs=2, vocab=30, d_model=32, head_dim=16,
                   batch_size=4, steps=3, warmup_steps=1, eval_every=3, test_examples=8, warm_gap=4,
                   warm_batch_size=4, warm_steps=3, seeds=[0])

    def __post_init__(self) -> None:
        bad = sorted(set(self.arms) - {"exact", "window"}) + sorted(set(self.memories) - {"gated_average", "decay",
                                                                                          "linear"})
        if bad:
            raise ValueError(f"bptt experiment: unknown arms or memories {bad}")

    def task(self, gap: int) -> RecallConfig:
        return RecallConfig(task="gap_recall", pairs=[self.pairs], vocab=self.vocab, gap=gap, fillers=self.fillers)


def plan(cfg: Config) -> list[Run]:
    """Memory by memory (the design's first), each its warm starts then gap by gap, shortest first,
    every seed: a partial result already has the first memory's figure, with seeds, at the gaps it
    reached (a warm start of decay alone takes as long as all of the gated average's short gaps)."""
    runs = []
    for m in cfg.memories:
        for s in cfg.seeds:
            runs.append(Run(f"{m}/warm/seed{s}", {"memory": m, "arm": "warm", "gap": cfg.warm_gap, "seed": s}))
        for g in sorted(cfg.gaps):
            for s in cfg.seeds:
                for arm in cfg.arms:
                    runs.append(Run(f"{m}/{arm}/gap{g}/seed{s}", {"memory": m, "arm": arm, "gap": g, "seed": s},
                                    needs=[f"{m}/warm/seed{s}"]))
    return runs


def warm_dir(work: Path, memory: str, seed: int) -> Path:
    """Where the warm start of (memory, seed) is saved: shared by the runs that start from it."""
    return work.parent / "shared" / f"warm-{memory}-seed{seed}"


def model_config(cfg: Config, memory: str) -> ModelConfig:
    design = dict(cfg.design)
    if memory != "gated_average":
        design["bias_correction"] = False
    return ModelConfig(vocab_size=272, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.d_model // cfg.head_dim,
                       memory=memory, reversible=False, **design)


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    """One run; a run at gap G whose warm start is gone (a cleared work folder) rebuilds it first:
    the same seed on the same device gives the same weights."""
    p = run.params
    start = warm_dir(work, p["memory"], p["seed"])
    if p["arm"] != "warm" and not start.exists():
        train(cfg, {**p, "arm": "warm", "gap": cfg.warm_gap}, device, work / "warm", start)
    return train(cfg, p, device, work, start)


def train(cfg: Config, p: dict, device: str, work: Path, start: Path) -> dict:
    """Train one arm at one gap from ``start`` (the warm start, which the 'warm' arm writes)."""
    from ..checkpoint import save_model
    from ..tokenizer import ByteTokenizer
    from ..trainer.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer

    warm = p["arm"] == "warm"
    task = cfg.task(p["gap"])
    length = task.length(0)
    windows = -(-length // cfg.window) if p["arm"] == "window" else 1  # trainer steps per batch of sequences
    steps, batch = (cfg.warm_steps, cfg.warm_batch_size) if warm else (cfg.steps, cfg.batch_size)
    tc = TrainConfig(
        arch="plasticlm", model=model_config(cfg, p["memory"]), seed=p["seed"], device=device, out_dir=str(work),
        steps=steps * windows, segment_len=cfg.segment_len, bptt="window" if p["arm"] == "window" else "whole",
        window=cfg.window,
        data=DataConfig(kind="gap_recall", seq_len=length, batch_size=batch,
                        options={"pairs": [cfg.pairs], "vocab": cfg.vocab, "gap": p["gap"], "fillers": cfg.fillers}),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps * windows),
        checkpoint=CheckpointConfig(every=0, resume=False, init_from="" if warm else str(start)),
        log=LogConfig(every=windows, tensorboard="disabled", eval_every=cfg.eval_every * windows),
        eval_tokens=batch * length)
    x, y = task.sample(cfg.test_examples, 0, cfg.pairs, [p["seed"], 7919])
    target = cfg.warm_target if warm else cfg.target
    curve: list[dict] = []
    trainer = None

    def on_eval(step: int, valid: float) -> bool:
        acc = accuracy(trainer.model, {"test": (x, y)}, batch=16)["test"]
        curve.append({"update": step // windows, "valid_loss": valid, "accuracy": acc})
        return acc >= target

    trainer = Trainer(tc, progress=False, on_eval=on_eval)
    before = accuracy(trainer.model, {"test": (x, y)}, batch=16)["test"]
    summary = trainer.run()
    if warm:
        save_model(start, trainer.model, ByteTokenizer())
    from ..trainer.metrics import read_metrics

    losses = [(r["step"] // windows, r["loss"]) for r in read_metrics(work) if r.get("loss") is not None]
    return {"accuracy_before": before, "accuracy": curve[-1]["accuracy"], "updates": summary["steps"] // windows,
            "reached_target": summary["stopped_early"], "curve": curve, "train_loss": losses,
            "sequence_tokens": length, "chance": 1 / (cfg.vocab // 3), "tok_s": summary["tok_s"]}


def headline(record: dict) -> str:
    return f"acc {record['accuracy_before']:.3f} -> {record['accuracy']:.3f} after {record['updates']} updates"


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    import statistics

    by = {}
    for r in records:
        p = r["params"]
        by.setdefault((p["memory"], p["arm"], p["gap"]), []).append(r)
    chance = 1 / (cfg.vocab // 3)
    fill = {0: "random fillers", 1: "one filler token repeated"}.get(cfg.fillers, f"{cfg.fillers} filler tokens")
    lines = [f"Task: {cfg.pairs} key-value pairs, a gap of {fill}, then the {cfg.pairs} queries (chance "
             f"{chance:.3f}); d_model {cfg.d_model}, {cfg.n_layers} layers, design {cfg.design}. Warm start: gap "
             f"{cfg.warm_gap}, batch {cfg.warm_batch_size}, until accuracy {cfg.warm_target} or {cfg.warm_steps} "
             f"updates. Then batch {cfg.batch_size} sequences, at most {cfg.steps} updates, lr {cfg.lr}, segments of "
             f"{cfg.segment_len}; the window arm detaches the state every {cfg.window} tokens.", "",
             "| memory | arm | gap | accuracy before -> after (each seed) | mean after | updates (each seed) |",
             "|---|---|---:|---|---:|---|"]
    for (m, arm, g), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1] != "warm", kv[0][1])):
        rs = sorted(rs, key=lambda r: r["params"]["seed"])
        accs = [r["accuracy"] for r in rs]
        pairs = ", ".join(f"{r['accuracy_before']:.3f} -> {r['accuracy']:.3f}" for r in rs)
        lines.append(f"| {m} | {arm} | {g} | {pairs} | {statistics.mean(accs):.3f} | "
                     f"{', '.join(str(r['updates']) for r in rs)} |")
    if out is not None and records:
        lines += ["", *plots(cfg, by, out)]
    return "\n".join(lines) + "\n"


def plots(cfg: Config, by: dict, out: Path) -> list[str]:
    from ..eval.results import legend, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m in cfg.memories:
        for arm, style in (("exact", "-"), ("window", "--")):
            gs = [g for g in cfg.gaps if (m, arm, g) in by]
            if not gs:
                continue
            accs = [[r["accuracy"] for r in by[(m, arm, g)]] for g in gs]
            mean = [sum(a) / len(a) for a in accs]
            line, = ax.plot(gs, mean, style, marker="o", label=f"{m}, {arm}")
            for g, a in zip(gs, accs):
                ax.scatter([g] * len(a), a, s=10, color=line.get_color(), alpha=0.5)
    ax.axvline(cfg.window, color="gray", lw=0.8, ls=":")
    ax.annotate(f"window W={cfg.window}", (cfg.window, 0.5), fontsize=7, color="gray", rotation=90)
    ax.axhline(1 / (cfg.vocab // 3), color="gray", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="gap (tokens between the pairs and the queries)", ylabel="test recall accuracy",
           title="Exact BPTT against truncation", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_gap.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(cfg.gaps), figsize=(4.2 * len(cfg.gaps), 3.6), squeeze=False)
    colors = {(m, arm): f"C{2 * i + j}" for i, m in enumerate(cfg.memories) for j, arm in enumerate(("exact", "window"))}
    markers = "os^dv"
    for ax, g in zip(axes[0], cfg.gaps):
        for m in cfg.memories:
            for arm, style in (("exact", "-"), ("window", "--")):
                for r in by.get((m, arm, g), []):
                    c, seed = r["curve"], r["params"]["seed"]
                    # update 0 is the warm start read at this gap, before either arm trains on it
                    ax.plot([0] + [q["update"] for q in c], [r["accuracy_before"]] + [q["accuracy"] for q in c],
                            style, lw=1, color=colors[(m, arm)], marker=markers[cfg.seeds.index(seed) % len(markers)],
                            ms=3, label=f"{m}, {arm}, seed {seed}")
        if not any((m, arm, g) in by for m in cfg.memories for arm in ("exact", "window")):
            ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set(xlabel="optimizer update", ylabel="test accuracy", title=f"gap {g}", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    legend(axes[0][0], fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "accuracy_curves.png", dpi=110)
    plt.close(fig)
    return ["![accuracy_vs_gap.png](accuracy_vs_gap.png)", "![accuracy_curves.png](accuracy_curves.png)"]
