"""plasticlm read CHECKPOINT INPUT... --state OUT"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Stream text through a trained model and save its recurrent state: what the model has read,
to be queried later with `plasticlm generate CHECKPOINT --state OUT`.

Inputs:
  a text file        one document (read in blocks, however large)
  a .jsonl file      one document per line, taken from the string field --field (default "text")
  a folder           every file below it matching --glob, in sorted order; hidden files (a
                     name or folder starting with '.'), FIFOs and devices, and empty, binary
                     and non-UTF-8 files are skipped and counted in the summary
  -                  standard input, one document

Each document is followed by the separator token (--separator, default [EOS]). Memory stays
constant however much is read: the model reads pieces of --piece tokens and keeps only its
state. The state file (safetensors) records the checkpoint's model_id, the tokenizer's hash,
and the tokens and documents read; a state from another checkpoint is refused. OUT must be
a regular file (or not exist yet) in an existing folder; that is checked before reading.

Reading in several runs with --resume-state gives a state identical, bit for bit, to reading
everything in one run. A run stopped by an error or Ctrl-C saves the state after the last
whole document and prints how to continue (--resume-state OUT --skip-documents N);
--save-every also saves along the way, against a crash that leaves no time to save.

examples:
  plasticlm read runs/tiny notes/ --state notes.state
  plasticlm read runs/tiny more.jsonl --field body --resume-state notes.state --state notes.state
"""


def register(sub) -> None:
    p = sub.add_parser("read", help="read text into a model's state and save it",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + tokenizer.json)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, .jsonl files, folders, or - for stdin")
    p.add_argument("--state", required=True, metavar="OUT", help="where to write the state (.state, safetensors)")
    p.add_argument("--resume-state", metavar="IN", help="continue reading into this state (may equal OUT)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not --resume-state")
    p.add_argument("--field", default="text", help="JSONL field holding each document's text (default: text)")
    p.add_argument("--glob", default="*", help="which files of a folder to read (default: * = all)")
    p.add_argument("--separator", default=None,
                   help="special token after each document, or 'none' (default [EOS]; a resumed state keeps its own)")
    p.add_argument("--piece", type=int, default=None,
                   help="tokens per forward pass, >= 1 (default 4096; a resumed state keeps its own)")
    p.add_argument("--parse-specials", action="store_true",
                   help="turn special-token names in the text ([USER], [SEP], ...) into their tokens")
    p.add_argument("--save-every", type=int, default=0, metavar="TOKENS",
                   help="also save the state to OUT after the first document that ends TOKENS tokens after "
                        "the last save (0: only at the end)")
    p.add_argument("--skip-documents", type=int, default=0, metavar="N",
                   help="pass over the first N documents of the inputs (to continue an interrupted read)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..device import pick_device
    from ..files import check_output
    from ..reading import Documents, Reader

    out = Path(args.state)
    if os.path.lexists(out) and not args.overwrite and (args.resume_state is None or Path(args.resume_state) != out):
        raise ValueError(f"{out} exists: pass --resume-state {out} to read more into it, or --overwrite to replace it")
    if args.save_every < 0 or args.skip_documents < 0:
        raise ValueError("--save-every and --skip-documents must be >= 0")
    if args.piece is not None and args.piece < 1:
        raise ValueError(f"--piece must be >= 1, got {args.piece}")
    check_output(out, probe=True)  # fail now, not after hours of reading
    separator = None if args.separator is None else ("" if args.separator.lower() == "none" else args.separator)
    reader = Reader.load(args.checkpoint, device=pick_device(args.device), piece=args.piece or 4096,
                         separator="[EOS]" if separator is None else separator)
    state = None
    if args.resume_state:
        state = reader.load_state(args.resume_state)
        for name, given, kept in (("separator", separator, state.separator), ("piece", args.piece, state.piece)):
            if given is not None and given != kept:
                raise ValueError(f"--{name} {given!r} differs from the resumed state's {kept!r}: a state is read "
                                 f"with one {name} throughout, so that resumed and one-go reading agree")
        print(f"resuming {args.resume_state}: {state.describe()}", file=sys.stderr)
    corpus = Documents(args.inputs, field=args.field, glob=args.glob, skip_documents=args.skip_documents)

    read_here = [args.skip_documents]  # documents of these inputs inside the state
    last = {"state": None, "documents": 0, "saved_tokens": state.tokens if state else 0}

    def on_document(rs) -> None:
        read_here[0] += 1
        last.update(state=rs, documents=read_here[0])
        if args.save_every and rs.tokens - last["saved_tokens"] >= args.save_every:
            rs.save(out, {"input_documents": str(read_here[0])})
            last["saved_tokens"] = rs.tokens

    t0 = time.perf_counter()
    start = state.tokens if state else 0
    try:
        rs = reader.read(corpus, state, parse_specials=args.parse_specials, progress=not args.no_progress,
                         on_document=on_document)
    except (Exception, KeyboardInterrupt):
        # Keep what was read up to the last whole document, and say how to go on from there.
        if last["state"] is not None:
            last["state"].save(out, {"input_documents": str(last["documents"])})
            print(f"plasticlm read: saved the state after {last['documents']} documents of these inputs to {out}; "
                  f"continue with --resume-state {out} --state {out} --skip-documents {last['documents']}",
                  file=sys.stderr)
        raise
    rs.save(out, {"input_documents": str(read_here[0])})
    seconds = time.perf_counter() - t0
    new = rs.tokens - start
    skipped = "".join(f"; skipped {len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                      for k, v in corpus.skipped.items())
    print(f"read {read_here[0] - args.skip_documents:,} documents, {new:,} tokens in {seconds:.1f}s "
          f"({new / max(seconds, 1e-9):,.0f} tok/s){skipped}; state {out}: {rs.describe()}")
    return 0
