"""Frequency-analysis attack on the shuffled-vocabulary language (issue 3 acceptance).

The attacker knows the unshuffled corpus (the train split) and sees a shuffled sequence built as
the shuffled stream builds it (holdout documents, ``--min-tokens`` of text). It reads the k-th
most frequent new id as the k-th most frequent original token, globally or within each token
category (the permutation keeps categories, so a careful attacker matches within them).
Recovery is the share of original tokens read right (a split or fused unit cannot be read right
by a one-to-one attacker). Measured for a permutation only and with fission and fusion, over
several seeds, plus a sweep of the fission/fusion strength.

    python benchmarks/frequency_attack.py --corpus /tmp/offline/en.jsonl

writes benchmarks/results/DATE_MACHINE_frequency_attack.{md,json,png}.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from plasticlm.data.shards import TokenShard, prepare
from plasticlm.data.shuffled import VocabShuffle, VocabStats, attack_recovery, frequency_attack
from plasticlm.data.pretraining import ShuffledConfig, ShuffledStream
from plasticlm.tokenizer import BPETokenizer

OUT = Path(__file__).resolve().parent / "results"


def measure(stats, text, ref, seed, fission, fusion, pool):
    lang = VocabShuffle(stats, seed, fission=fission, fusion=fusion, pool=pool)
    y = lang.apply(text)
    assert np.array_equal(lang.invert(y), text)
    return {"global": attack_recovery(lang, text, frequency_attack(y, ref)),
            "by_category": attack_recovery(lang, text, frequency_attack(y, ref, stats.categories)),
            "split": lang.n_split, "fused": lang.n_fused, "room": lang.n_room, "length_ratio": len(y) / len(text)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="builtin", help="a corpus source for `plasticlm prepare` ('builtin': stdlib docstrings)")
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--min-tokens", type=int, default=100_000, help="text tokens per shuffled sequence")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fission", type=float, default=0.2)
    ap.add_argument("--fusion", type=float, default=0.2)
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="freq-attack-"))
    source = args.corpus
    if source == "builtin":
        from plasticlm.data.builtin import builtin_corpus

        source = str(work / "builtin.txt")
        Path(source).write_text(builtin_corpus())
    unit = "paragraph" if source.endswith(".txt") else "file"
    meta = prepare(source, work / "prepared", vocab_size=args.vocab_size, unit=unit, progress=False)
    tok = BPETokenizer.load(work / "prepared" / "tokenizer.json")
    train, holdout = TokenShard(work / "prepared", "train"), TokenShard(work / "prepared", "holdout")
    ref_stats = VocabStats.from_documents(tok, (train[i] for i in range(len(train))))
    hold_stats = VocabStats.from_documents(tok, (holdout[i] for i in range(len(holdout))))
    # The language is drawn from the holdout's statistics, as the shuffled stream draws it.
    stream = ShuffledStream(holdout, ShuffledConfig(min_tokens=args.min_tokens), hold_stats)
    rows = {}
    settings = {"permutation only": (0.0, 0.0), f"fission {args.fission} only": (args.fission, 0.0),
                f"fusion {args.fusion} only": (0.0, args.fusion),
                f"fission {args.fission} + fusion {args.fusion}": (args.fission, args.fusion)}
    for s in (0.1, 0.3, 0.5):
        settings[f"fission {s} + fusion {s}"] = (s, s)
    for name, (fis, fus) in settings.items():
        vals = [measure(hold_stats, stream.original_text(seed, 0), ref_stats.counts, seed, fis, fus, args.pool)
                for seed in range(args.seeds)]
        rows[name] = {"fission": fis, "fusion": fus,
                      **{k: {"mean": float(np.mean([v[k] for v in vals])), "std": float(np.std([v[k] for v in vals]))}
                         for k in vals[0]}}
        print(f"{name:32} global {rows[name]['global']['mean']:.4f}  by category {rows[name]['by_category']['mean']:.4f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    result = {"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv),
              "commit": commit, "device": f"CPU ({platform.processor() or platform.machine()}), {platform.system()}",
              "corpus": args.corpus, "splits": meta["splits"], "vocab_size": args.vocab_size,
              "min_tokens": args.min_tokens, "seeds": args.seeds, "pool": args.pool,
              "seconds": round(time.time() - t0, 1), "results": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from plasticlm.provenance import result_stem

    stem = result_stem("frequency_attack")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    lines = ["# Frequency-analysis attack on the shuffled vocabulary", "",
             f"- date: {result['date']}; commit: {commit}; device: {result['device']}",
             f"- command: `{result['command']}` ({result['seconds']} s)",
             f"- corpus: {args.corpus}; BPE {args.vocab_size:,} ids trained on its train split; reference counts: "
             f"train split ({meta['splits']['train']['tokens']:,} tokens); attacked text: shuffled-stream sequences "
             f"of {args.min_tokens:,} holdout tokens ({meta['splits']['holdout']['tokens']:,} holdout tokens); "
             f"{args.seeds} seeds (mean ± std); fission/fusion drawn from the {args.pool:,} most frequent tokens/pairs.",
             "", "Recovery = share of original tokens the attacker reads right.", "",
             "| language | recovered (global rank) | recovered (rank within category) | split tokens (+ rare, for room) | fused pairs | length ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['global']['mean']:.2%} ± {r['global']['std']:.2%} | "
                     f"{r['by_category']['mean']:.2%} ± {r['by_category']['std']:.2%} | {r['split']['mean']:.0f} "
                     f"(+ {r['room']['mean']:.0f}) | "
                     f"{r['fused']['mean']:.0f} | {r['length_ratio']['mean']:.3f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sweep = [(0.0, rows["permutation only"])] + [(s, rows[f"fission {s} + fusion {s}"]) for s in
                                                     sorted({0.1, args.fission, 0.3, 0.5})]
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for key, label in (("global", "global rank"), ("by_category", "rank within category")):
            ax.errorbar([s for s, _ in sweep], [r[key]["mean"] for _, r in sweep], [r[key]["std"] for _, r in sweep],
                        marker="o", capsize=3, label=label)
        ax.set_xlabel("fission = fusion share of the most frequent tokens")
        ax.set_ylabel("tokens recovered by frequency analysis")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title("Frequency attack vs fission/fusion", fontsize=10)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")
    print(f"wrote {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
