"""E1: does the memory learn multi-query associative recall, against baselines of equal state size?

Zoology's protocol (``plasticlm.eval.mqar.train_and_test``, the same code as the ``mqar`` eval
suite) scaled to two CPU cores: fresh 2-layer models, T = 64 with 4 and 8 pairs mixed in
training and tested apart, a learning-rate sweep, early stop at 0.99. Two groups of runs:

- **models**: plasticlm's memories (gated average reversible and plain, decay, linear) with the
  design's options, the SDPA Transformer, GLA (fla's default, and with a short convolution as
  Zoology's) and Mamba-2, at each width. Every recurrent model holds the same state: 32 d
  scalars per layer (heads of 32 x 32; GLA with expand_k = 1; Mamba-2 with N = 16).
- **ablation**: the plain gated average at one width, one change at a time from the design as
  it stood before this experiment (no convolution, no bias correction, half-lives 2..1e5).

Runs go width by width (the acceptance's first), the ablation after the first width, so a
partial result already answers the most important question.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .. import archs
from ..config import ModelConfig
from ..eval.mqar import Config as Protocol
from ..eval.mqar import plateaus, train_and_test
from .runner import Run

QUESTION = ("Does plasticlm's memory learn multi-query associative recall (Zoology's MQAR) as well as "
            "attention and GLA / Mamba-2 of equal state size, and which parts of the design does it need?")

MODELS = ["gated_average-rev", "gated_average", "decay", "linear", "transformer", "gla", "gla-conv", "mamba2"]
_BEFORE = {"short_conv": 0, "bias_correction": False, "qk_norm": False}  # the design as it stood before E1
ABLATIONS = {
    "none": _BEFORE,
    "bias": {**_BEFORE, "bias_correction": True},
    "conv": {**_BEFORE, "short_conv": 4},
    "conv+bias+qk_norm": {"short_conv": 4, "bias_correction": True, "qk_norm": True},
    "half-lives<=T": {**_BEFORE, "max_half_life": 64.0},
    "conv+bias, half-lives<=T": {"short_conv": 4, "bias_correction": True, "qk_norm": False, "max_half_life": 64.0},
    # fla's GLA default shape at the default head_dim 32: keys half as wide as values, half the
    # state, and the speed gap of issue 15.
    "conv+bias, keys half width": {"short_conv": 4, "bias_correction": True, "qk_norm": False, "head_dim": 16,
                                   "value_dim": 32},
    # fla's GLA gate (two factors through 16 channels): the full-rank gate's share of issue 15's gap.
    "conv+bias, gate rank 16": {"short_conv": 4, "bias_correction": True, "qk_norm": False, "gate_rank": 16},
}
"""Options of the plain gated average, each against 'none' (the design before E1) and against
the design itself (the 'gated_average' model row at ablation_d_model)."""
GRID_ABLATIONS = ["none", "bias", "conv", "conv+bias+qk_norm", "half-lives<=T", "conv+bias, half-lives<=T"]
"""The default list. Results files store it, so an ablation added later runs by name
(``ablations=[...]``) and the stored grid still resumes."""

PLAN_FIELDS = ("models", "d_models", "ablations", "ablation_d_model", "protocol.lrs", "seeds")
"""Settings that only choose which runs are planned (each run's id names its model, width, lr
and seed): runs of folders that differ in these alone are the same runs (``--adopt``)."""


@dataclass
class Config:
    protocol: Protocol = field(default_factory=lambda: Protocol(lrs=[3e-3, 1e-3, 1e-2]))
    d_models: list[int] = field(default_factory=lambda: [128, 64])
    """Widths, in the order they run (the width of the acceptance first)."""
    n_layers: int = 2
    head_dim: int = 32
    """Key and value width of each plasticlm head (heads = d_model / head_dim)."""
    models: list[str] = field(default_factory=lambda: list(MODELS))
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    """plasticlm options of the 'models' rows (bias_correction only where the memory allows it);
    the others are ModelConfig's defaults of the commit (every record keeps its full config)."""
    ablations: list[str] = field(default_factory=lambda: list(GRID_ABLATIONS))
    ablation_d_model: int = 64
    """Width of the ablation (the smaller one: a third of the cost). `ablation_d_model=128` runs it
    at the models' width, as experiments/results/mqar-ablation did."""
    seeds: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def quick(cls) -> "Config":
        return cls(protocol=Protocol(seq_len=32, num_kv_pairs=[2, 4], vocab=64, batch_size=8, max_steps=4,
                                     warmup_steps=1, lrs=[3e-3], eval_every=2, test_examples=16),
                   d_models=[32], head_dim=16, models=["gated_average", "transformer", "gla-conv", "mamba2"],
                   ablations=["none"], ablation_d_model=32)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODELS)) + sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"mqar experiment: unknown models or ablations {unknown}; models: {MODELS}, "
                             f"ablations: {list(ABLATIONS)}")
        self.protocol.validate()


def model_spec(cfg: Config, name: str, d: int, options: dict | None = None) -> tuple[str, object]:
    """(arch, config) of a model row; ``options`` replace the design's for the ablation."""
    base = dict(vocab_size=272, d_model=d, n_layers=cfg.n_layers, n_heads=d // cfg.head_dim,
                chunk_size=min(64, 1 << (cfg.protocol.seq_len - 1).bit_length()))
    design = dict(cfg.design if options is None else options)
    reference = ModelConfig(**base, memory="gated_average", reversible=False, **design)  # baselines match its size
    if name.startswith("gated_average"):
        return "plasticlm", dataclasses.replace(reference, reversible=name.endswith("-rev"))
    if name in ("decay", "linear"):
        design["bias_correction"] = False
        return "plasticlm", ModelConfig(**base, memory=name, reversible=False, **design)
    if name == "transformer":
        return "transformer", archs.sized_like("transformer", reference)
    if name in ("gla", "gla-conv"):
        extra = {"short_conv": 4} if name == "gla-conv" else {}
        return "gla", archs.sized_like("gla", reference, expand_k=cfg.head_dim * base["n_heads"] / d, **extra)
    return "mamba2", archs.sized_like("mamba2", reference, state_size=cfg.head_dim // 2)


def plan(cfg: Config) -> list[Run]:
    """The first width's models at every learning rate (the acceptance), then the ablation, then
    the other widths: a partial result answers the most important question first."""
    runs = []
    lrs = cfg.protocol.lrs
    for seed in cfg.seeds:
        for lr in lrs:
            for m in cfg.models:
                d = cfg.d_models[0]
                runs.append(Run(f"models/{m}/d{d}/lr{lr:g}/seed{seed}",
                                {"group": "models", "model": m, "d_model": d, "lr": lr, "seed": seed}))
        for lr in lrs:
            for a in cfg.ablations:
                runs.append(Run(f"ablation/{a}/d{cfg.ablation_d_model}/lr{lr:g}/seed{seed}",
                                {"group": "ablation", "model": a, "d_model": cfg.ablation_d_model, "lr": lr,
                                 "seed": seed}))
        for d in cfg.d_models[1:]:
            for lr in lrs:
                for m in cfg.models:
                    runs.append(Run(f"models/{m}/d{d}/lr{lr:g}/seed{seed}",
                                    {"group": "models", "model": m, "d_model": d, "lr": lr, "seed": seed}))
    return runs


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    p = run.params
    if p["group"] == "models":
        arch, mcfg = model_spec(cfg, p["model"], p["d_model"])
    else:
        arch, mcfg = model_spec(cfg, "gated_average", p["d_model"], ABLATIONS[p["model"]])
    res = train_and_test(arch, mcfg, cfg.protocol, p["lr"], p["seed"], device, work)
    for d in [res, *res["curve"]]:
        for part in ("accuracy", "by_query"):
            if part in d:
                d[part] = {str(k): v for k, v in d[part].items()}
    return {**res, "arch": arch, "model_config": mcfg.to_dict()}


def headline(record: dict) -> str:
    return " ".join(f"{k}p {v:.3f}" for k, v in record["accuracy"].items()) + f" at step {record['steps']}"


# ---- report --------------------------------------------------------------------------------------

def _mean_acc(r: dict) -> float:
    return sum(r["accuracy"].values()) / len(r["accuracy"])


def best_runs(records: list[dict], group: str) -> dict[tuple[str, int], dict]:
    """(model, d_model) -> its best run over learning rates (highest mean accuracy, then fewest steps)."""
    best: dict[tuple[str, int], dict] = {}
    for r in records:
        if r["params"]["group"] != group:
            continue
        key = (r["params"]["model"], r["params"]["d_model"])
        if key not in best or (_mean_acc(r), -r["steps"]) > (_mean_acc(best[key]), -best[key]["steps"]):
            best[key] = r
    return best


def final_loss(r: dict, last: int = 5) -> float | None:
    losses = [v for _, v in r["train_loss"][-last:]]
    return sum(losses) / len(losses) if losses else None


def stage(cfg: Config, loss: float | None) -> str:
    """Which plateau a run ended on: ln(values) (a value goes here), ln(pairs) (one of the values
    read), or past both."""
    if loss is None:
        return "-"
    levels = plateaus(cfg.protocol)
    if loss > 0.8 * levels["ln(values)"]:
        return "ln(values)"
    if loss > 0.5 * min(v for k, v in levels.items() if k != "ln(values)"):
        return "ln(pairs)"
    return "solved"


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    pairs = [str(p) for p in cfg.protocol.num_kv_pairs]
    lines = [f"Protocol: T = {cfg.protocol.seq_len}, pairs {pairs} (mixed in training), task vocabulary "
             f"{cfg.protocol.vocab} (chance {2 / cfg.protocol.vocab:.4f}), fillers from "
             f"{'the whole vocabulary' if cfg.protocol.noise == 'vocab' else 'the vocabulary less the keys'}, batch {cfg.protocol.batch_size}, at most "
             f"{cfg.protocol.max_steps} steps, AdamW wd {cfg.protocol.weight_decay}, warmup {cfg.protocol.warmup_steps} "
             f"then {cfg.protocol.schedule}, learning rates {cfg.protocol.lrs}, early stop at {cfg.protocol.target}. "
             f"Plateaus: " + ", ".join(f"{k} = {v:.2f}" for k, v in plateaus(cfg.protocol).items()) + ".", ""]
    best = best_runs(records, "models")
    if best:
        lines += ["## Models: best learning rate each", "",
                  "| model | d_model | " + " | ".join(f"acc {p} pairs" for p in pairs) +
                  " | best lr | steps | final train loss | stage | state scalars | params |",
                  "|---|---:|" + "---:|" * len(pairs) + "---:|---:|---:|---|---:|---:|"]
        for (m, d), r in sorted(best.items(), key=lambda kv: (kv[0][1], cfg.models.index(kv[0][0]))):
            loss = final_loss(r)
            lines.append(f"| {m} | {d} | " + " | ".join(f"{r['accuracy'][p]:.3f}" for p in pairs) +
                         f" | {r['lr']:g} | {r['steps']} | {'-' if loss is None else f'{loss:.3f}'} | "
                         f"{stage(cfg, loss)} | {r['state_size']:,} | {r['n_params']:,} |")
        lines.append("")
    abl = best_runs(records, "ablation")
    design_rows = {d: r for (m, d), r in best.items() if m == "gated_average"}
    if abl:
        lines += [f"## Ablation: plain gated average, d_model {cfg.ablation_d_model}, best learning rate each", "",
                  "| variant | " + " | ".join(f"acc {p} pairs" for p in pairs) + " | best lr | steps | stage |",
                  "|---|" + "---:|" * len(pairs) + "---:|---:|---|"]
        rows = [(a, abl[(a, cfg.ablation_d_model)]) for a in cfg.ablations if (a, cfg.ablation_d_model) in abl]
        if cfg.ablation_d_model in design_rows:
            rows.append((f"design ({', '.join(f'{k}={v}' for k, v in cfg.design.items())})",
                         design_rows[cfg.ablation_d_model]))
        for name, r in rows:
            lines.append(f"| {name} | " + " | ".join(f"{r['accuracy'][p]:.3f}" for p in pairs) +
                         f" | {r['lr']:g} | {r['steps']} | {stage(cfg, final_loss(r))} |")
        lines.append("")
    lines += ["## Every run", "", "Clean: the queries without a distractor (their key seen earlier among the fillers, "
              "followed by a value-range token); the share of those with one in brackets.", "",
              "| run | " + " | ".join(f"acc {p}" for p in pairs) + " | " +
              " | ".join(f"clean {p} (distractors)" for p in pairs) + " | steps | seconds |",
              "|---|" + "---:|" * (2 * len(pairs)) + "---:|---:|"]

    def clean(r: dict, p: str) -> str:
        q = r.get("by_query", {}).get(p)
        return "-" if q is None else f"{q['clean']:.3f} ({q['distractor_share']:.1%})"

    for r in sorted(records, key=lambda r: r["id"]):
        lines.append(f"| {r['id']} | " + " | ".join(f"{r['accuracy'][p]:.3f}" for p in pairs) + " | " +
                     " | ".join(clean(r, p) for p in pairs) + f" | {r['steps']} | {r['seconds']:.0f} |")
    if out is not None and (best or abl):
        lines += ["", *plots(cfg, best, abl, out)]
    return "\n".join(lines) + "\n"


def plots(cfg: Config, best: dict, abl: dict, out: Path) -> list[str]:
    from ..eval.results import legend, pyplot

    plt = pyplot()
    names = []
    if abl:  # where each variant's training loss stops: the plateaus say which stage it reached
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (a, d), r in sorted(abl.items()):
            if r["train_loss"]:
                ax.plot(*zip(*r["train_loss"]), lw=1, label=f"{a}, d_model {d} (lr {r['lr']:g})")
        design = best.get(("gated_average", cfg.ablation_d_model))  # what every variant is one change from
        if design and design["train_loss"]:
            ax.plot(*zip(*design["train_loss"]), lw=1.5, color="black",
                    label=f"the design, d_model {cfg.ablation_d_model} (lr {design['lr']:g})")
        loss_axes(ax, cfg, "MQAR training loss, ablation of the plain gated average")
        fig.tight_layout()
        fig.savefig(out / "ablation_loss_curves.png", dpi=110)
        plt.close(fig)
        names.append("ablation_loss_curves.png")
    if not best:
        return [f"![{n}]({n})" for n in names]
    pairs = [str(p) for p in cfg.protocol.num_kv_pairs]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        for m in cfg.models:
            pts = sorted((r["state_size"], r["accuracy"][p]) for (mm, _), r in best.items() if mm == m)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set(xscale="log", xlabel="state size (scalars after reading a sequence)", ylabel="test accuracy",
               title=f"MQAR, T={cfg.protocol.seq_len}, {p} pairs", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    legend(axes[0][0], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_state_size.png", dpi=110)
    plt.close(fig)
    names.append("accuracy_vs_state_size.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    d = max(cfg.d_models)
    for m in cfg.models:
        r = best.get((m, d))
        if r and r["train_loss"]:
            ax.plot(*zip(*r["train_loss"]), lw=1, label=f"{m} (lr {r['lr']:g})")
    loss_axes(ax, cfg, f"MQAR training loss, d_model {d}")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    names.append("loss_curves.png")
    return [f"![{n}]({n})" for n in names]


def loss_axes(ax, cfg: Config, title: str) -> None:
    """Training-loss axes with the plateaus (ln values -> ln pairs -> 0) drawn in."""
    from ..eval.results import legend

    for k, v in plateaus(cfg.protocol).items():
        ax.axhline(v, ls="--", lw=0.8, color="gray")
        ax.annotate(k, (0.01, v), xycoords=("axes fraction", "data"), fontsize=7, color="gray")
    ax.set(xlabel="step", ylabel="train loss (value positions)", title=title,
           ylim=(0, math.log(cfg.protocol.vocab) + 0.5))
    ax.grid(alpha=0.3)
    legend(ax, fontsize=7)
