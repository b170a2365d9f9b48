"""RQ4: does the gradient-length proxy make the memory reach further back?

The proxy (DESIGN 3, :func:`plasticlm.trainer.losses.proxy_penalty`) pulls each layer's retention
mass, predicted from its gates, towards a target spread over short, moderate and long lags of a
horizon. This experiment trains the gated average as RQ5 does (:mod:`.length`: whole pieces of
``train_len`` bytes of man pages, exact segment BPTT), once without the proxy and once with it,
its horizon the held-out streams' length (``eval_factor`` x ``train_len``), and measures on each
trained model:

- the loss by position on the held-out SEE ALSO walks, state carried against reset every
  ``train_len`` (the RQ5 table: [T, 4T), [4T, 16T), [16T, end]);
- the real gradient by lag, |dL_t / dx_{t-k}| on ``lag_probes`` held-out probes of ``lag_len``
  bytes (:mod:`plasticlm.eval.gradient_lag`), against the proxy's prediction from the same gates,
  by lag band; and the gradient into each layer's memory writes, the path the proxy models,
  against that layer's proxy and the read-weighted proxy;
- the retention mass the trainer logged while training, first and last.

The proxy is worth its place if the proxy-trained model's measured gradient moves towards the
long bands and its carried loss past ``train_len`` falls further below reset than the plain
model's; if neither moves, the penalty changes the gates without changing what the model uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import length
from .runner import Run, mean_sd

RESUMES_RUNS = True
QUESTION = ("Trained with the gradient-length proxy, does the gated average's measured gradient reach longer lags "
            "and its loss past the training length fall further below reset than without it?")
ARMS = ("gated_average", "gated_average-proxy", "gated_average-proxy-read")
"""No proxy (it is only logged), the proxy of DESIGN 3, and the read-weighted proxy
(``loss.proxy_weighting=read``), the correction the memory-path measurement points to."""


@dataclass
class Config(length.Config):
    models: list[str] = field(default_factory=lambda: list(ARMS[:2]))
    proxy_weight: float = 0.1
    """Weight of the proxy's penalty in the '-proxy' arms (the plain arm trains with 0 and only logs it)."""
    proxy_target: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.3])
    """Target retention shares of the bands [1, 1% H), [1% H, 10% H), [10% H, H] of the horizon H = eval_len."""
    lag_probes: int = 4
    lag_len: int = 4096
    """Bytes per gradient probe: lags up to lag_len are measured (plain autograd, memory grows with it)."""
    lag_last: int = 8
    """The probe's loss is taken on its last lag_last positions."""

    @classmethod
    def quick(cls) -> "Config":
        base = length.Config.quick()
        return cls(**{k: getattr(base, k) for k in base.__dataclass_fields__ if k != "models"},
                   models=list(ARMS), lag_probes=1, lag_len=128, lag_last=4)

    def __post_init__(self) -> None:
        bad = sorted(set(self.models) - set(ARMS))
        if bad:
            raise ValueError(f"proxy experiment: unknown models {bad}; known: {list(ARMS)}")
        if self.lag_len > self.eval_len:
            raise ValueError(f"proxy experiment: lag_len={self.lag_len} is longer than the held-out streams "
                             f"(eval_len={self.eval_len})")


def plan(cfg: Config) -> list[Run]:
    return length.plan(cfg)


def lag_edges(cfg: Config) -> list[tuple[int, int]]:
    """The measurement's bands: lags 1-10 (the convolution's reach and just past it), then up to
    the training length, then up to lag_len."""
    from ..trainer.losses import band_edges

    return band_edges(cfg.lag_len, sorted({10 / cfg.lag_len, cfg.train_len / cfg.lag_len, 1.0}))


def execute(cfg: Config, run: Run, device: str, work: Path) -> dict:
    from ..eval.gradient_lag import measure
    from ..trainer.config import LossConfig

    name = run.params["model"]
    loss = LossConfig(proxy_weight=cfg.proxy_weight if "-proxy" in name else 0.0,
                      proxy_weighting="read" if name.endswith("-read") else "gates",
                      proxy_horizon=cfg.eval_len, proxy_target=list(cfg.proxy_target),
                      proxy_every=max(1, min(10, cfg.steps // 3)))  # logged a few times even in --quick
    inner = Run(run.id, {**run.params, "model": "gated_average"})

    def gradients(model, streams, metrics):
        probes = streams[:cfg.lag_probes, :cfg.lag_len + 1]
        logged = [r for r in metrics if any(k.startswith("retention/") for k in r)]
        return {"gradient_lag": measure(model, probes, lag_edges(cfg), cfg.lag_last),
                "retention_logged": [{k: v for k, v in r.items() if k in ("step", "proxy") or k.startswith("retention/")}
                                     for r in logged[:1] + logged[-1:]]}

    return length.execute(cfg, inner, device, work, loss=loss, measure=gradients)


def headline(record: dict) -> str:
    g = record["gradient_lag"]["real_band_shares"]
    return length.headline(record) + "; gradient by band " + " / ".join(f"{x:.2f}" for x in g)


def report(cfg: Config, records: list[dict], out: Path | None) -> str:
    lines = [length.report(cfg, records, out).rstrip("\n"), "", "### Gradient by lag band", "",
             f"Measured |dL_t/dx_(t-k)| on {cfg.lag_probes} held-out probes of {cfg.lag_len:,} bytes (loss of the "
             f"last {cfg.lag_last} positions, every path) and the proxy's prediction from the same gates "
             "(sum over channels of (1 - a) a^k), as shares of the bands; mean over seeds ± sd. The proxy arms "
             f"train with weight {cfg.proxy_weight} towards {cfg.proxy_target} over a horizon of "
             f"{cfg.eval_len:,}.", ""]
    recs = [r for r in records if "gradient_lag" in r]
    if recs:
        edges = recs[0]["gradient_lag"]["edges"]
        heads = [f"[{a:,}, {b:,})" for a, b in edges]
        lines += ["| model | seeds | what | " + " | ".join(heads) + " | log-log corr. |",
                  "|---|---:|---|" + "---:|" * (len(edges) + 1)]
        for m in cfg.models:
            rs = [r["gradient_lag"] for r in recs if r["params"]["model"] == m]
            if not rs:
                continue
            corr = mean_sd([g["log_log_correlation"] for g in rs])
            for what, key in (("measured", "real_band_shares"), ("proxy", "proxy_band_shares")):
                cells = [mean_sd([g[key][i] for g in rs]) for i in range(len(edges))]
                lines.append(f"| {m} | {len(rs)} | {what} | " + " | ".join(cells) + f" | {corr if what == 'proxy' else ''} |")
        lines += writes_table(cfg, recs, heads)
        if out is not None:
            lines += ["", plot_lags(cfg, recs, out)]
    return "\n".join(lines) + "\n"


def writes_table(cfg: Config, recs: list[dict], heads: list[str]) -> list[str]:
    """The proxy against the path it models: the gradient into each layer's memory writes."""
    from ..eval.gradient_lag import band_shares, loss_window, total_variation

    recs = [r for r in recs if "writes" in r["gradient_lag"]]
    if not recs:
        return []
    edges = recs[0]["gradient_lag"]["edges"]
    lines = ["", "### The memory path: gradient into each layer's writes", "",
             "|dL_t/d(k, v)_(t-k)| into each layer's memory writes on the same probes (only the memory reads them), "
             "beside that layer's proxy ((1 - a) a^k over channels) and the read-weighted proxy (each channel "
             "also weighted by mean |q| at the loss's positions times mean |k|), both seen through the loss window "
             f"of the measurement (summed over reading positions at the last {cfg.lag_last}), as shares of the bands; "
             "mean over seeds ± sd; TV: the share that would have to move between bands to match the measurement; "
             "the log-log correlation with it over every lag.", "",
             "| model | layer | seeds | what | " + " | ".join(heads) + " | TV | log-log corr. |",
             "|---|---:|---:|---|" + "---:|" * (len(heads) + 2)]
    for m in cfg.models:
        rs = [r["gradient_lag"]["writes"] for r in recs if r["params"]["model"] == m]
        for layer in range(len(rs[0]) if rs else 0):
            ws = [w[layer] for w in rs]
            real = [w["measured_band_shares"] for w in ws]
            lines.append(f"| {m} | {layer} | {len(ws)} | measured | "
                         + " | ".join(mean_sd([x[i] for x in real]) for i in range(len(heads))) + " | | |")
            for what, key, corr in (("proxy", "proxy_by_lag", "proxy_log_log_correlation"),
                                    ("read-weighted", "read_weighted_by_lag", "read_weighted_log_log_correlation")):
                shares = [band_shares(loss_window(w[key], cfg.lag_last), [tuple(e) for e in edges]) for w in ws]
                tv = [total_variation(s, x) for s, x in zip(shares, real)]
                lines.append(f"| {m} | {layer} | {len(ws)} | {what} | "
                             + " | ".join(mean_sd([s[i] for s in shares]) for i in range(len(heads)))
                             + f" | {mean_sd(tv)} | {mean_sd([w[corr] for w in ws])} |")
    return lines


def plot_lags(cfg: Config, recs: list[dict], out: Path) -> str:
    """Measured gradient and proxy against lag, each normalised at lag 1, every run; beside it,
    where recorded, the last layer's memory path: its write gradient and both proxies (through
    the loss window), each as a share of its sum over lags >= 1."""
    from ..eval.gradient_lag import loss_window
    from ..eval.results import legend, pyplot

    plt = pyplot()
    paths = [r for r in recs if "writes" in r["gradient_lag"]]
    fig, axes = plt.subplots(1, 2 if paths else 1, figsize=(13 if paths else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    for i, m in enumerate(cfg.models):
        for j, r in enumerate(x for x in recs if x["params"]["model"] == m):
            g = r["gradient_lag"]
            for key, ls, what in (("real_by_lag", "-", "measured"), ("proxy_by_lag", ":", "proxy")):
                ys = g[key][1:]
                if not ys or not ys[0] or not math.isfinite(ys[0]):
                    continue
                ax.loglog(range(1, len(ys) + 1), [y / ys[0] for y in ys], ls=ls, color=f"C{i}", alpha=0.8,
                          label=f"{m}, {what}" if j == 0 else None)
    ax.set(xlabel="lag k (bytes)", ylabel="normalised at k = 1", title="Gradient into the embeddings (every path) and proxy")
    if paths:
        bx = axes[0, 1]
        for i, m in enumerate(cfg.models):
            for j, r in enumerate(x for x in paths if x["params"]["model"] == m):
                w = r["gradient_lag"]["writes"][-1]
                for key, ls, what in (("measured_by_lag", "-", "measured"), ("proxy_by_lag", ":", "proxy"),
                                      ("read_weighted_by_lag", "--", "read-weighted proxy")):
                    ys = (w[key] if key == "measured_by_lag" else loss_window(w[key], cfg.lag_last).tolist())[1:]
                    total = sum(ys)
                    if not total or not math.isfinite(total):
                        continue
                    bx.loglog(range(1, len(ys) + 1), [y / total for y in ys], ls=ls, color=f"C{i}", alpha=0.8,
                              label=f"{m}, {what}" if j == 0 else None)
        bx.set(xlabel="lag k (bytes)", ylabel="share of lags >= 1",
               title="Last layer's memory path: gradient into its writes and proxies")
    for a in axes[0]:
        for e, _ in recs[0]["gradient_lag"]["edges"][1:]:
            a.axvline(e, color="gray", lw=0.5)
        a.grid(alpha=0.3)
        legend(a, fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gradient_by_lag.png", dpi=110)
    plt.close(fig)
    return "![gradient by lag](gradient_by_lag.png)"
