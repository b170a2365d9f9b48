"""What reading alone can give on the shuffled-vocabulary task: the loss of the model-free
predictors of ``plasticlm.eval.oracles`` (a global unigram fitted on the scored text, and each
sequence's own counts so far) on the held-out sequences the H3 and RQ6 experiments score, by
position. The plasticity experiment's report now shows the same two on exactly the rows its
models are scored on (``eval_sequences`` rows, those without text left out); this script takes
any number of rows with text, for any seed.

    python benchmarks/shuffled_oracle.py        # plasticity's stream: 4,096 tokens, 60 translations

Writes DATE_MACHINE_shuffled_oracle.{json,md} under --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from plasticlm.eval.common import log_bins
from plasticlm.eval.oracles import oracle_losses
from plasticlm.experiments import make_config
from plasticlm.experiments import plasticity
from plasticlm.provenance import provenance, result_stem
from plasticlm.trainer.stream_kinds import build_stream


def scored_rows(kind: str, rows: int, seed: int, work: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """(positions, targets) of the scored tokens of ``rows`` valid-split sequences of the
    plasticity experiment's ``kind`` stream (its held-out measure reads these), and seq_len."""
    cfg = make_config("plasticity", False, [])
    stream = build_stream(plasticity.data_config(cfg, plasticity.prepared_corpus(cfg, work), kind),
                          split="valid", seed=seed)
    out = []
    while len(out) < rows:
        b = stream.next_batch()
        for targets, weights in zip(b.targets.numpy(), b.weights.numpy()):
            idx = np.flatnonzero(weights > 0)
            if len(idx):
                out.append((idx, targets[idx]))
    return out[:rows], cfg.seq_len


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64, help="held-out sequences per stream")
    ap.add_argument("--alpha", type=float, default=0.5, help="add-alpha smoothing of the counts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    vocab = 272  # ByteTokenizer: 256 bytes and the specials
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("shuffled", "traditional"):
            rows, T = scored_rows(kind, args.rows, args.seed, Path(tmp) / "work")
            per = oracle_losses([ids for _, ids in rows], vocab, args.alpha)
            bins = [(lo, hi) for lo, hi in log_bins(T) if hi - 1 <= T]  # whole bins only
            for name, ls in per.items():
                tot, cnt = np.zeros(T + 1), np.zeros(T + 1)
                for (idx, _), l in zip(rows, ls):
                    np.add.at(tot, idx + 1, l)  # position of the predicted token
                    np.add.at(cnt, idx + 1, 1)
                table[f"{kind}/{name}"] = {
                    "mean": float(np.concatenate(ls).mean()),
                    "bins": {f"{lo}-{hi - 1}": float(tot[lo:hi].sum() / cnt[lo:hi].sum()) if cnt[lo:hi].sum() else None
                             for lo, hi in bins}}
    meta = provenance("cpu", ["python", "benchmarks/shuffled_oracle.py", *sys.argv[1:]])
    out = Path(args.out)
    stem = result_stem("shuffled_oracle")
    (out / f"{stem}.json").write_text(json.dumps({"provenance": meta, "args": vars(args), "table": table}, indent=1))
    cols = [c for c in next(iter(table.values()))["bins"] if any(v["bins"][c] is not None for v in table.values())]
    lines = [f"# Model-free predictors on the plasticity experiment's held-out streams ({args.rows} rows each)", "",
             f"{meta['date']}, {meta['device']}, commit `{meta['commit']}`; command `{meta['command']}`.", "",
             "Loss in nats per byte of the scored positions (the text after the Rosetta header), by position. "
             "The global unigram is fitted on the scored text itself: slightly better than any model can know.", "",
             "| stream / predictor | mean | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    lines += [f"| {k} | {v['mean']:.3f} | " + " | ".join("-" if v["bins"][c] is None else f"{v['bins'][c]:.3f}" for c in cols) + " |"
              for k, v in table.items()]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
