"""How often an MQAR query's key reappears among the random fillers before the query, followed by a
value-range token: a distractor pair a model must learn to ignore (Zoology's generator, which
``plasticlm.data.recall.mqar`` follows, fills empty positions from the whole vocabulary).

    python benchmarks/mqar_distractors.py            # the E1 protocol: T = 64, 4 and 8 pairs, vocab 256
"""
from __future__ import annotations

import argparse

from plasticlm.data.recall import IGNORE, distractors, mqar
from plasticlm.eval.mqar import Config


def distractor_share(n: int, seq_len: int, pairs: int, vocab: int, power_a: float, seed: int,
                     noise: str = "vocab") -> float:
    x, y = mqar(n, seq_len, pairs, vocab, power_a, seed, noise)
    return float(distractors(x, y, pairs, vocab).sum() / (y != IGNORE).sum())


def main() -> None:
    cfg = Config()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="sequences per number of pairs")
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    for noise in ("vocab", "not_keys"):
        for pairs in cfg.num_kv_pairs:
            share = distractor_share(args.n, cfg.seq_len, pairs, cfg.vocab, cfg.power_a, args.seed, noise)
            print(f"T={cfg.seq_len}, {pairs} pairs, vocab {cfg.vocab}, noise {noise!r}: {share:.4f} of queries "
                  "have a distractor")


if __name__ == "__main__":
    main()
