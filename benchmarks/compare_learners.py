"""Three learners by reading, side by side: plasticlm (state), a Transformer (context), the AUNN (weights).

Trains the three at similar parameter counts on the same text (the builtin corpus, byte tokens)
for the same number of tokens, then runs the one-shot language and plasticity suites on each
with the same `plasticlm eval` code, and writes one comparison (markdown, JSON, PNG).

    python benchmarks/compare_learners.py --steps 300 --out benchmarks/results/compare_learners-cpu
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

# Model choices: `tiny` (1.02M parameters), the Transformer sized like it (1.02M), and an AUNN of
# width 192, depth 3 (0.95M). Every model sees steps x 4,096 training tokens.
TRAIN = {
    "plasticlm": lambda out, steps: ["train", "tiny", f"out_dir={out}", f"steps={steps}", "--no-progress"],
    "transformer": lambda out, steps: ["train", "tiny_transformer", f"out_dir={out}", f"steps={steps}",
                                       "--no-progress"],
    "aunn": lambda out, steps: ["aunn", "train", "model.width=192", "model.depth=3", f"train.steps={steps}",
                                "train.batch_size=4096", f"out_dir={out}", "--no-progress"],
}
# How the AUNN reads (its "state" is its weights): the best setting of benchmarks/aunn_reading.py
# (Adam, lr 3e-5, one step per group), with groups of 16 tokens so 32k tokens read in minutes.
AUNN_ONLINE = ["optimizer=adam", "lr=3e-5", "steps=1", "chunk_len=16"]


def sh(args: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "plasticlm.cli", *args]
    print("+ plasticlm", " ".join(args), flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write("+ plasticlm " + " ".join(args) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): plasticlm {' '.join(args)}; see {log}")
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps of each model (4,096 tokens each)")
    ap.add_argument("--tokens-read", type=int, default=32768, help="one-shot language: new-language tokens read")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="one-shot language: unseen tokens scored")
    ap.add_argument("--probe-size", type=int, default=64, help="dialogues / rule occurrences read by the probes")
    ap.add_argument("--runs", default="runs/compare_learners", help="where the three checkpoints go")
    ap.add_argument("--out", default=None, help="results folder (default: benchmarks/results/DATE_MACHINE_compare_learners)")
    ap.add_argument("--retrain", action="store_true", help="train again even if a checkpoint of --steps exists")
    args = ap.parse_args()
    from plasticlm.provenance import result_stem

    out, runs = Path(args.out or f"benchmarks/results/{result_stem('compare_learners')}"), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    seconds = {}
    for name, cmd in TRAIN.items():
        ckpt = runs / name
        summary = ckpt / "summary.json"
        done = summary.exists() and json.loads(summary.read_text()).get("steps") == args.steps
        if args.retrain or not done:
            seconds[f"train {name}"] = sh(cmd(ckpt, args.steps), log)
    suites = ["oneshot.tokens_read=%d" % args.tokens_read, "oneshot.eval_tokens=%d" % args.eval_tokens,
              "oneshot.rosetta_pairs=200", f"probes.max_dialogues={args.probe_size}",
              f"probes.max_occurrences={args.probe_size}", "probes.pre_sentences=100", "probes.held_out=16"]
    for name in TRAIN:
        extra = ["oneshot.dynamic=false", "--online", *AUNN_ONLINE] if name == "aunn" else []
        seconds[f"eval {name}"] = sh(["eval", str(runs / name), "--suite", "oneshot,probes", "--out", str(out / name),
                                      "--device", "cpu", "--no-progress", *suites, *extra], log)
    report(args, out, runs, seconds)


def report(args, out: Path, runs: Path, seconds: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    res = {n: json.loads((out / n / "results.json").read_text()) for n in TRAIN}
    train = {n: json.loads((runs / n / "summary.json").read_text()) for n in TRAIN}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"date": datetime.date.today().isoformat(), "commit": commit, "torch": torch.__version__,
            "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
            "command": "python benchmarks/compare_learners.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("retrain",)),
            "seconds": {k: round(v) for k, v in seconds.items()}}
    rows, probe_rows, one, probes = [], [], {}, {}
    for n, r in res.items():
        o = r["suites"]["oneshot"]["results"]
        read = o["curves"]["read"]
        last = max(read, key=int)
        one[n] = o
        params = r["checkpoint"]["params"]
        dyn = o["curves"].get("dynamic", {}).get(last, {}).get("bits_per_byte")
        # held-out English without reading: rows from an empty state; for the AUNN, the text after
        # its training stream at the indices that follow it
        held = train[n].get("valid_bits_per_byte") or train[n]["next_index_loss"] / math.log(2)
        rows.append(f"| {n} | {params:,} | {held:.3f} | "
                    f"{o['original_language']['bits_per_byte']:.3f} | {o['no_reading']['bits_per_byte']:.3f} | "
                    f"{read['0']['bits_per_byte']:.3f} | {read[last]['bits_per_byte']:.3f} | "
                    + (f"{dyn:.3f}" if dyn is not None else "n/a (reading is gradient steps)") + " |")
        p = r["suites"]["probes"]["results"]
        probes[n] = p
        for probe in ("template", "drift"):
            c = p[probe]["curves"]
            hi = max(c["model/stream"], key=int)
            s0, s1 = c["model/stream"]["0"], c["model/stream"][hi]
            k1 = c["model/shuffled"][hi]
            u1 = c.get("untrained/stream", {}).get(hi)
            probe_rows.append(f"| {n} | {probe} | {hi} | {s0['match_rate']:.3f} -> {s1['match_rate']:.3f} | "
                              f"{s0['logp_per_token']:.3f} -> {s1['logp_per_token']:.3f} | "
                              f"{k1['logp_per_token']:.3f} | " + (f"{u1['logp_per_token']:.3f}" if u1 else "") + " |")
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for n, o in one.items():
        ks = sorted(o["curves"]["read"], key=int)
        xs = [max(int(k), 1) for k in ks]
        axes[0].plot(xs, [o["curves"]["read"][k]["bits_per_byte"] for k in ks], marker="o", label=f"{n}: reading")
        if "dynamic" in o["curves"]:
            axes[0].plot(xs, [o["curves"]["dynamic"][k]["bits_per_byte"] for k in ks], ls="--", marker=".",
                         label=f"{n}: dynamic evaluation")
    axes[0].set(xscale="log", xlabel="new-language tokens read (0 drawn at 1)", ylabel="bits per byte, unseen text",
                title="one-shot language")
    for ax, probe in zip(axes[1:], ("template", "drift")):
        for n, p in probes.items():
            for key, ls in (("model/stream", "-"), ("model/shuffled", ":")):
                c = p[probe]["curves"][key]
                ks = sorted(c, key=int)
                ax.plot([max(int(k), 1) for k in ks], [c[k]["logp_per_token"] for k in ks], ls=ls, marker=".",
                        label=f"{n}: {key.split('/')[1]}")
        ax.set(xscale="log", xlabel="dialogues read" if probe == "template" else "rule occurrences read",
               ylabel="log p per token of the expected reply", title=f"{probe} probe (dotted: shuffled control)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "compare_learners.png", dpi=110)
    lines = [f"# Learners by reading: plasticlm vs Transformer vs AUNN ({meta['date']}, CPU)", "",
             *[f"- {k}: {v}" for k, v in meta.items()],
             "- training: each model on the builtin corpus (byte tokens), "
             f"{args.steps} steps x 4,096 tokens; AUNN reads with " + " ".join(AUNN_ONLINE),
             f"- one-shot language: the shuffled-vocabulary language (VocabShuffle, fission/fusion 0.2), 200 "
             f"Rosetta pairs, {args.tokens_read:,} tokens read, {args.eval_tokens:,} unseen tokens scored",
             f"- probes: {args.probe_size} dialogues / rule occurrences; shuffled control streams", "",
             "## One-shot language (bits per byte on unseen text of the new language)", "",
             "| model | params | held-out English (bpb, after training) | English, the scored text | new language, "
             "no reading | after the header | after reading | dynamic evaluation after reading |",
             "|---|---|---|---|---|---|---|---|", *rows, "",
             "## Plasticity probes", "",
             "match rate: share of greedy replies that follow the template / rule; log p: per token of the "
             "expected reply; control: the same pieces shuffled so the pattern is absent.", "",
             "| model | probe | read | match rate (0 -> read) | log p (0 -> read) | control log p | untrained log p |",
             "|---|---|---|---|---|---|---|", *probe_rows, "",
             "![comparison](compare_learners.png)", "",
             "Per-model results, plots and configs: `plasticlm/`, `transformer/`, `aunn/` beside this file."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"meta": meta, "train": train}, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
