"""One sequence mixer alone, forward and backward: plasticlm's memory with and without its options
against the GLA baseline's mixer with fla's half-width keys and with plasticlm's state, in one run.

    python benchmarks/mixer_speed.py            # B = 4, T = 4096, d_model 128, 4 heads, one thread

The whole-model bench (`plasticlm bench`) mixes the mixer with feed-forward widths sized for equal
parameters; this isolates the part issue 15 is about. Writes DATE_MACHINE_mixer_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from plasticlm import ModelConfig, archs
from plasticlm.model import Memory
from plasticlm.provenance import provenance, result_stem

PLASTIC = {"gated average (conv, bias correction: the default)": {},
           "gated average, conv, no bias correction": {"bias_correction": False},
           "decay, conv": {"memory": "decay"},
           "gated average, keys half width (fla's GLA shape)": {"head_dim": 16, "value_dim": 32},
           "gated average, gate of rank 16 (fla's GLA gate)": {"gate_rank": 16},
           "gated average, no conv": {"short_conv": 0},
           "gated average, no conv, no bias correction": {"short_conv": 0, "bias_correction": False},
           "decay, no conv": {"memory": "decay", "short_conv": 0}}
GLA = {"GLA, fla's default (keys half width)": {},
       "GLA, plasticlm's state": {"expand_k": 1.0},
       "GLA, plasticlm's state and conv": {"expand_k": 1.0, "short_conv": 4}}


def interleaved(fns: list, reps: int) -> list[float]:
    """Median seconds of each fn, run in turn rep after rep (after one untimed call each), so a
    change in the machine's load falls on every variant alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [sorted(ts)[len(ts) // 2] for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    B, T, d = args.B, args.T, args.d_model
    x = torch.randn(B, T, d, requires_grad=True)
    # A dense gradient, as a training step's output projection gives (the gradient of a sum is a
    # stride-0 expansion, a layout no training step sees).
    g = torch.randn(B, T, d)
    base = ModelConfig(vocab_size=272, d_model=d, n_layers=1, n_heads=args.heads)
    rows, fns = [], []
    for name, opts in PLASTIC.items():
        mem = Memory(ModelConfig(vocab_size=272, d_model=d, n_layers=1, n_heads=args.heads, **opts))
        mem.reset_gate_bias()
        S = {k: torch.zeros(s) for k, s in mem.state_shapes(B).items()}
        rows.append({"mixer": name, "state": mem.state_shapes(1)["memory"]})
        fns.append(lambda mem=mem, S=S: mem(x, S)[0].backward(g))
    for name, opts in GLA.items():
        model = archs.build("gla", archs.sized_like("gla", base, backend="torch", **opts))
        mixer, st = model.blocks[0].mixer, model.init_state(B)
        rows.append({"mixer": name, "state": tuple(st.layers[0].shape[1:])})
        fns.append(lambda mixer=mixer, st=st: mixer(x, st.layers[0], st.conv[0])[0].backward(g))
    for row, seconds in zip(rows, interleaved(fns, args.reps)):
        row["ms"] = 1000 * seconds
    default = rows[0]["ms"]
    meta = provenance("cpu", ["python", "benchmarks/mixer_speed.py", *sys.argv[1:]])
    out = Path(args.out)
    stem = result_stem("mixer_speed")
    (out / f"{stem}.json").write_text(json.dumps({"provenance": meta, "args": vars(args), "rows": rows}, indent=1))
    lines = [f"# One mixer, forward + backward: B = {B}, T = {T}, d_model {d}, {args.heads} heads, one thread", "",
             f"{meta['date']}, {meta['device']}, commit `{meta['commit']}`; command `{meta['command']}`.", "",
             f"Median of {args.reps} interleaved calls; speed is the default's time over the row's.", "",
             "| mixer | state per layer (H, K, V) | ms | speed vs the default |", "|---|---|---:|---:|"]
    lines += [f"| {r['mixer']} | {tuple(r['state'])[-3:]} | {r['ms']:.0f} | {default / r['ms']:.2f}x |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
