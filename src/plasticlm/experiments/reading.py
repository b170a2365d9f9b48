"""E3: does reading change what a small text model predicts?

plasticlm and the SDPA Transformer of equal parameter count are trained on the same byte
sequences (whole sequences of ``seq_len``, the same batches, the same steps), then measured:

- **induction** (Olsson et al. 2022): a random printable string of L bytes read twice; the loss
  on the second copy against the first, for L from 16 to 1,024. A model that uses what it read
  copies: the second copy's loss falls far below the first's.
- **loss by position** on held-out text (the last ``valid_fraction`` of the corpus, never
  trained on) read as streams of ``position_tokens`` tokens, far past the training length, with
  the state carried (plasticlm's memory; the Transformer's whole KV cache, or a sliding window of
  ``seq_len``) against reset every ``seq_len`` tokens.
- **probes** (``plasticlm.eval.probes``): the drift rule ("bacon" before "no") against its
  occurrences, and the template's fixed reply word and copied word scored apart, each beside
  the shuffled-control stream and the untrained model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import archs
from ..config import ModelConfig
from ..eval.common import whole_bins
from .runner import Run

RESUMES_RUNS = True  # a run trains for half an hour: its trainer checkpoints let it resume mid-run
QUESTION = ("Does reading change a small text model's predictions (copying a string it read, a rule it met, "
            "text far past its training length), for plasticlm against a Transformer trained the same way?")


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["plasticlm", "transformer"])
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    design: dict = field(default_factory=lambda: {"short_conv": 4, "bias_correction": True})
    """plasticlm's options; the Transformer is sized to its parameter count."""
    seq_len: int = 1024
    """Training sequence length (each a whole sequence, exact BPTT for plasticlm)."""
    batch_size: int = 8
    steps: int = 600
    lr: float = 3e-3
    warmup_steps: int = 30
    segment_len: int = 256
    valid_fraction: float = 0.1
    """Tail of the builtin corpus held out: the validation loss and the loss-by-position streams."""
    repeat: dict = field(default_factory=dict)
    """The byte stream's options (``RepeatConfig`` of ``trainer.stream_kinds``), e.g.
    ``{"fraction": 0.25}``: training rows that carry a random string written twice, the induction
    positive control. Empty: plain text only."""
    induction_lengths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024])
    induction_samples: int = 16
    position_tokens: int = 16384
    position_streams: int = 6
    probe_dialogues: int = 64
    probe_occurrences: int = 64
    probe_held_out: int = 32
    seeds: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def quick(cls) -> "Config":
        return cls(d_model=32, n_layers=1, n_heads=2, seq_len=64, batch_size=2, steps=3, warmup_steps=1,
                   segment_len=32, induction_lengths=[8, 16], induction_samples=2, position_tokens=256,
                   position_streams=1, probe_dialogues=2, probe_occurrences=2, probe_held_out=2)

    def __post_init__(self) -> None:
        bad = sorted(set(self.models) - {"plasticlm", "transformer", "gla", "mamba2"})
        if bad:
            raise ValueError(f"reading experiment: unknown models {bad}")


def plan(cfg: Config) -> list[Run]:
    return [Run(f"{m}/seed{s}", {"model": m, "seed": s}) for s in cfg.seeds for m in cfg.models]


def model_spec(cfg: Config, name: str):
    ref = ModelConfig(vocab_size=272, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, **cfg.design)
    return name, archs.sized_like(name, ref)


@torch.no_grad()
def induction(lm, lengths: list[int], samples: int, seed: int) -> dict[str, dict[str, float]]:
    """Loss (nats per byte) on the first and the second copy of random printable strings read twice."""
    g = torch.Generator().manual_seed(seed)
    bos = 257  # ByteTokenizer's [BOS]
    out = {}
    for L in lengths:
        r = torch.randint(32, 127, (samples, L), generator=g)
        x = torch.cat([torch.full((samples, 1), bos), r, r], 1)  # (N, 1 + 2L)
        logp, _ = lm.score(x[:, :-1], lm.init_state(samples))
        lp = logp.gather(-1, x[:, 1:].to(logp.device).unsqueeze(-1)).squeeze(-1).double().cpu()  # (N, 2L)
        out[str(L)] = {"first": float(-lp[:, :L].mean()), "second": float(-lp[:, L:].mean())}
    return out


@torch.no_grad()
def loss_by_position(lm, streams: torch.Tensor, reset_every: int | None) -> list[float]:
    """Mean loss in log-spaced position bins over (N, T+1) streams read with the state carried, or
    reset every ``reset_every`` tokens (each block read as a new document)."""
    from ..eval.common import log_bins

    x, y = streams[:, :-1], streams[:, 1:]
    T = x.shape[1]
    block = reset_every or T
    losses = []
    for a in range(0, T, block):
        logp, _ = lm.score(x[:, a:a + block], lm.init_state(x.shape[0]))
        losses.append(-logp.gather(-1, y[:, a:a + block].to(logp.device).unsqueeze(-1)).squeeze(-1).double().cpu())
    loss = torch.cat(losses, 1).mean(0)  # (T,)
    return [float(loss[lo - 1:min(hi, T + 1) - 1].mean()) for lo, hi in log_bins(T)]


def held_out_streams(cfg: Config) -> torch.Tensor:
    """(N, position_tokens + 1) consecutive byte streams of the held-out tail, each after [BOS]."""
    from ..trainer.stream_kinds import byte_ids

    ids = byte_ids("builtin")
    tail = ids[-int(len(ids) * cfg.valid_fraction):]
    T = cfg.position_tokens
    n = min(cfg.position_streams, len(tail) // T)
    if n < 1:
        raise ValueError(f"reading: the held-out tail holds {len(tail)} bytes, fewer than position_tokens={T}")
    body = tail[:n * T].view(n, T)
    return torch.cat([torch.full((n, 1), 257), body], 1)


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    from ..eval.common import log_bins
    from ..trainer.config import CheckpointConfig, DataConfig, LogConfig, OptimConfig, TrainConfig
    from ..trainer.loop import Trainer
    from ..trainer.metrics import read_metrics

    p = run.params
    arch, mcfg = model_spec(cfg, p["model"])
    tc = TrainConfig(
        arch=arch, model=mcfg, seed=p["seed"], device=device, out_dir=str(work / "train"), steps=cfg.steps,
        segment_len=cfg.segment_len, backprop="segment" if archs.get(arch).segment else "full",
        data=DataConfig(kind="bytes", source="builtin", seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                        valid_fraction=cfg.valid_fraction, options=dict(cfg.repeat)),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        checkpoint=CheckpointConfig(every=max(1, cfg.steps // 6)),  # a long run resumes where it stopped
        log=LogConfig(every=10, tensorboard="disabled", eval_every=max(1, cfg.steps // 6)),
        eval_tokens=cfg.batch_size * cfg.seq_len)
    trainer = Trainer(tc, progress=False)
    summary = trainer.run()
    model = trainer.model.eval()
    lm = archs.as_lm(model, piece=cfg.seq_len)
    out = {"arch": arch, "model_config": mcfg.to_dict(), "n_params": summary["params"],
           "train": {k: summary[k] for k in ("steps", "tokens", "seconds", "tok_s", "valid_loss",
                                              "valid_bits_per_byte")},
           "train_loss": [(r["step"], r["loss"]) for r in read_metrics(work / "train") if r.get("loss") is not None],
           "valid_curve": [(r["step"], r["valid_loss"]) for r in read_metrics(work / "train") if "valid_loss" in r],
           "induction": induction(lm, cfg.induction_lengths, cfg.induction_samples, p["seed"])}
    streams = held_out_streams(cfg)
    out["positions"] = {"carried": loss_by_position(lm, streams, None),
                        "reset": loss_by_position(lm, streams, cfg.seq_len)}
    if arch == "transformer":
        windowed = archs.as_lm(model, piece=cfg.seq_len // 4, window=cfg.seq_len)
        out["positions"]["window"] = loss_by_position(windowed, streams, None)
    out["position_bins"] = [[lo, hi] for lo, hi in log_bins(cfg.position_tokens)]

    out["probes"] = probe_curves(cfg, lm, arch, mcfg, p["seed"], device, work / "probes", cfg.seq_len)
    return out


def probe_curves(cfg, lm, arch: str, mcfg, seed: int, device: str, work: Path, piece: int) -> dict:
    """The plasticity probes (drift rule, template) of ``lm``: each probe's curves against occurrences
    read, for the model on the probe stream, on its shuffled control, and the untrained model.
    ``cfg`` gives probe_dialogues, probe_occurrences and probe_held_out."""
    from ..eval import probes
    from ..eval.registry import Context, make_config
    from ..tokenizer import ByteTokenizer

    def untrained():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return archs.as_lm(archs.build(arch, mcfg).to(device).eval(), piece=piece)

    pcfg = make_config("probes", overrides={"probes.max_dialogues": cfg.probe_dialogues,
                                            "probes.max_occurrences": cfg.probe_occurrences,
                                            "probes.held_out": cfg.probe_held_out})
    ctx = Context(lm=lm, tokenizer=ByteTokenizer(), seed=seed, out_dir=work, progress=False, untrained=untrained)
    res = probes.run(ctx, pcfg)
    return {k: {c: {str(n): v for n, v in curve.items()} for c, curve in res[k]["curves"].items()}
            for k in pcfg.probes}


def probe_last(pr: dict, probe: str, key: str) -> str:
    """``key`` after the most reading of one probe, as 'model / shuffled control / untrained'
    ('-' for a probe not run)."""
    if probe not in pr:
        return "-"
    vals = []
    for c in ("model/stream", "model/shuffled", "untrained/stream"):
        curve = pr[probe].get(c)
        vals.append(f"{curve[max(curve, key=int)][key]:.2f}" if curve else "-")
    return " / ".join(vals)


def headline(record: dict) -> str:
    ind = record["induction"]
    L = max(ind, key=int)
    return (f"valid {record['train']['valid_bits_per_byte']:.3f} bits/byte; induction at {L}: "
            f"{ind[L]['first']:.2f} -> {ind[L]['second']:.2f} nats")


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    recs = sorted(records, key=lambda r: (r["params"]["seed"], cfg.models.index(r["params"]["model"])))
    repeats = (f" {cfg.repeat.get('fraction', 0):.0%} of the training rows carry a random string written twice "
               f"({cfg.repeat})." if cfg.repeat.get("fraction") else "")
    lines = [f"Training: bytes of the builtin corpus (the last {cfg.valid_fraction:.0%} held out), whole "
             f"sequences of {cfg.seq_len}, batch {cfg.batch_size}, {cfg.steps} steps, lr {cfg.lr}; d_model "
             f"{cfg.d_model}, {cfg.n_layers} layers; plasticlm with {cfg.design}.{repeats}", "",
             "| model | seed | params | tokens | tok/s | valid bits/byte |", "|---|---:|---:|---:|---:|---:|"]
    for r in recs:
        t = r["train"]
        lines.append(f"| {r['params']['model']} | {r['params']['seed']} | {r['n_params']:,} | {t['tokens']:,} | "
                     f"{t['tok_s']:,} | {t['valid_bits_per_byte']:.3f} |")
    lines += ["", "### Induction: loss (nats/byte) on a random string's first and second reading", "",
              "| model | " + " | ".join(f"L={L}" for L in cfg.induction_lengths) + " |",
              "|---|" + "---|" * len(cfg.induction_lengths)]
    for r in recs:
        lines.append(f"| {r['params']['model']} | " + " | ".join(
            f"{r['induction'][str(L)]['first']:.2f} -> {r['induction'][str(L)]['second']:.2f}"
            for L in cfg.induction_lengths) + " |")
    if recs:
        full = whole_bins(recs[0]["position_bins"], cfg.position_tokens)
        bins = [recs[0]["position_bins"][i] for i in full]
        lines += ["", f"### Loss (nats/byte) by position on held-out streams of {cfg.position_tokens} bytes "
                      f"(training length {cfg.seq_len})", "",
                  "| model | reading | " + " | ".join(f"{lo}-{hi - 1}" for lo, hi in bins) + " |",
                  "|---|---|" + "---:|" * len(bins)]
        for r in recs:
            for mode, vals in r["positions"].items():
                lines.append(f"| {r['params']['model']} | {mode} | " + " | ".join(
                    "-" if vals[i] is None or math.isnan(vals[i]) else f"{vals[i]:.3f}" for i in full) + " |")
        lines += ["", "### Probes after the most reading (model / shuffled control / untrained)", "",
                  "| model | drift: rule followed | template: fixed word | template: copied word | template: reply |",
                  "|---|---|---|---|---|"]
        for r in recs:
            pr = r["probes"]

            lines.append(f"| {r['params']['model']} | {probe_last(pr, 'drift', 'match_rate')} | "
                         f"{probe_last(pr, 'template', 'marker_rate')} | {probe_last(pr, 'template', 'copy_rate')} | "
                         f"{probe_last(pr, 'template', 'rest_match_rate')} |")
    if out is not None and recs:
        lines += ["", *plots(cfg, recs, out)]
    return "\n".join(lines) + "\n"


def plots(cfg: Config, recs: list[dict], out: Path) -> list[str]:
    from ..eval.results import legend, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in recs:
        m = r["params"]["model"]
        Ls = [int(L) for L in r["induction"]]
        axes[0].plot(Ls, [r["induction"][str(L)]["first"] for L in Ls], "--", marker="o", label=f"{m}, 1st copy")
        axes[0].plot(Ls, [r["induction"][str(L)]["second"] for L in Ls], "-", marker="o", label=f"{m}, 2nd copy")
        full = whole_bins(r["position_bins"], cfg.position_tokens)
        mids = [sum(r["position_bins"][i]) / 2 for i in full]
        for mode, vals in r["positions"].items():
            axes[1].plot(mids, [vals[i] for i in full], marker=".", label=f"{m}, {mode}")
    axes[0].set(xscale="log", xlabel="string length L (bytes)", ylabel="loss (nats/byte)",
                title="Induction: a random string read twice")
    axes[1].axvline(cfg.seq_len, color="gray", lw=0.8, ls=":")
    axes[1].set(xscale="log", xlabel="position in the held-out stream", ylabel="loss (nats/byte)",
                title=f"Loss by position (training length {cfg.seq_len})")
    for ax in axes:
        ax.grid(alpha=0.3)
        legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "induction_and_positions.png", dpi=110)
    plt.close(fig)
    shown = [("drift", "match_rate", "drift: rule followed (greedy)"),
             ("template", "marker_rate", "template: fixed word (greedy)"),
             ("template", "copy_rate", "template: copied word (greedy)")]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), squeeze=False)
    for ax, (probe, key, title) in zip(axes[0], shown):
        for r in recs:
            for c, curve in r["probes"].get(probe, {}).items():
                ns = sorted(curve, key=int)
                ax.plot([max(int(n), 0.5) for n in ns], [curve[n][key] for n in ns], marker=".",
                        label=f"{r['params']['model']} {c}")
        ax.set(xscale="log", xlabel="occurrences / dialogues read", ylabel="rate", title=title, ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    legend(axes[0][0], fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "probes.png", dpi=110)
    plt.close(fig)
    return ["![induction_and_positions.png](induction_and_positions.png)", "![probes.png](probes.png)"]
