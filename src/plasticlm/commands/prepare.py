"""plasticlm prepare SOURCE OUT_DIR: corpus -> tokenizer + memory-mapped token shards per split."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="encode a corpus into token shards (train/valid/test/holdout)",
        description="Read SOURCE (a hub name: wikitext-103, wikitext-2, squad, wmt-en-de, german-wiki; a "
                    ".txt/.jsonl/.parquet file; or a folder of them), train a byte-level BPE on its train split "
                    "(or use --tokenizer), and write memory-mapped token shards per split into OUT_DIR. Splits "
                    "are fixed by a hash of each document's text, so they never overlap. Bad files inside a "
                    "folder are skipped and counted; the summary lists them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("source", help="hub name, file or folder")
    p.add_argument("out_dir", help="where the shards, tokenizer.json and meta.json go")
    p.add_argument("--tokenizer", help="an existing tokenizer.json (skips BPE training)")
    p.add_argument("--vocab-size", type=int, default=32768, help="BPE vocabulary size (specials and bytes included)")
    p.add_argument("--unit", choices=["file", "paragraph", "line"], default="file",
                   help="what one document of a plain-text file is")
    p.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    p.add_argument("--fractions", default="train=0.90,valid=0.02,test=0.02,holdout=0.06",
                   help="split fractions, summing to 1")
    p.add_argument("--hub-split", default="train", help="which split of a hub dataset to read")
    p.add_argument("--linked-min-tokens", type=int, default=65536,
                   help="for a graph (documents with cites): report walks of at least this many tokens")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def parse_fractions(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"--fractions: {item!r} must look like split=fraction (e.g. train=0.9)")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"--fractions: {v!r} is not a number") from None
    return out


def run(args) -> int:
    import logging

    from ..data.corpus import SPLITS
    from ..data.shards import prepare

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    meta = prepare(args.source, args.out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size, unit=args.unit,
                   text_field=args.text_field, fractions=parse_fractions(args.fractions), hub_split=args.hub_split,
                   progress=not args.no_progress)
    print(f"{'split':8} {'documents':>10} {'tokens':>13} {'bytes':>14}")
    for s in SPLITS:
        v = meta["splits"][s]
        print(f"{s:8} {v['documents']:>10,} {v['tokens']:>13,} {v['bytes']:>14,}")
    skipped = meta["skipped"]
    print("skipped: " + (", ".join(f"{r}: {v['count']} (e.g. {v['examples'][0]})" for r, v in skipped.items())
                         or "nothing"))
    from ..data.shards import TokenShard

    if any(TokenShard(args.out_dir, "train").cites):
        from ..data.linked import LinkedGraph

        r = LinkedGraph.from_prepared(args.out_dir, "train").sequence_report(args.linked_min_tokens)
        print(f"linked (train split): {r['pages']} pages, {r['citations']} citations; walks of >= "
              f"{r['min_tokens']:,} tokens: {r['sequences']} sequences, {r['roots_too_short']} roots too short; "
              f"tokens per sequence {r['tokens_per_sequence']}")
    print(f"wrote {args.out_dir} (vocabulary {meta['vocab_size']:,}, {meta['dtype']})")
    return 0
