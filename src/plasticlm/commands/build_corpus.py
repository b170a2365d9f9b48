"""plasticlm build-corpus OUT_DIR: the offline corpora (English, German, pairs, linked graph)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "build-corpus", help="build English, German, en-de pairs and a linked-articles graph from this machine",
        description="Turn text installed on this (Debian) machine into four corpora: English man pages "
                    "(en.jsonl), German man pages (de.jsonl), English-German pairs from gettext catalogs and "
                    "parallel man pages (en-de.jsonl), and the SEE ALSO citation graph of the English pages "
                    "(graph.jsonl). Reports sizes in documents, words, tokens and bytes (report.md). "
                    "Feed any of them to `plasticlm prepare`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--install", action="store_true",
                   help="apt-get install the German man pages first (manpages-de, manpages-de-dev; needs root)")
    p.add_argument("--max-pages", type=int, default=0, help="at most this many pages per language (0: all)")
    p.add_argument("--vocab-size", type=int, default=32768, help="BPE used to count tokens (saved as tokenizer.json)")
    p.add_argument("--min-tokens", type=int, default=65536, help="walk length the linked-graph report counts")
    p.add_argument("--man-root", default="/usr/share/man")
    p.add_argument("--de-root", default="/usr/share/man/de")
    p.add_argument("--locale-dir", default="/usr/share/locale/de/LC_MESSAGES")
    p.add_argument("--workers", type=int, default=0, help="rendering processes (0: one per core)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from ..data.offline import BuildConfig, build_offline, report_markdown

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = BuildConfig(man_root=args.man_root, de_root=args.de_root, locale_dir=args.locale_dir,
                      max_pages=args.max_pages, vocab_size=args.vocab_size, min_tokens=args.min_tokens,
                      workers=args.workers)
    report = build_offline(args.out_dir, cfg, install=args.install, progress=not args.no_progress)
    print(report_markdown(report))
    print(f"wrote {args.out_dir}: en.jsonl, de.jsonl, en-de.jsonl, graph.jsonl, tokenizer.json, report.json, report.md")
    return 0
