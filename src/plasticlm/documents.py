"""Documents from text files, folders and JSONL files, streamed in blocks for ``plasticlm read``.

A document is an iterator of text blocks, so a file of any size is never whole in memory.
"""
from __future__ import annotations

import codecs
import io
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from .files import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class Documents:
    """Documents from text files, folders and JSONL files, read lazily, in a fixed order.

    - A text file is one document. Files are read in blocks of about ``block_chars``
      characters cut after a newline, so a large file is never whole in memory (the block
      cut depends only on the file, so every run tokenizes it the same way).
    - A ``.jsonl``/``.ndjson`` file holds one document per line, in the string field ``field``.
    - A folder stands for every file below it matching ``glob``, in sorted order; hidden files
      (a name or folder starting with '.'), files that are not regular files (FIFOs, devices,
      broken links) and files that are empty, binary or not UTF-8 are skipped and counted in
      ``skipped``. A file named on its own must be UTF-8 text.
    - ``-`` is standard input, one document.

    ``skip_documents`` passes over the first documents (to continue an interrupted read).
    """

    def __init__(self, inputs: Iterable[str | Path], field: str = "text", glob: str = "*",
                 skip_documents: int = 0, block_chars: int = 1 << 16):
        self.field, self.skip_documents, self.block_chars = field, skip_documents, block_chars
        self.skipped: dict[str, list[str]] = {}
        self.files: list[tuple[Path | None, bool]] = []  # (path or None for stdin, found in a folder)
        for item in inputs:
            if str(item) == "-":
                self.files.append((None, False))
                continue
            path = Path(item)
            if path.is_dir():
                found = []
                for p in sorted(path.rglob(glob)):
                    if any(part.startswith(".") for part in p.relative_to(path).parts):
                        if not p.is_dir():
                            self.skipped.setdefault("hidden", []).append(str(p))
                    elif p.is_file():
                        found.append(p)
                    elif not p.is_dir():
                        self.skipped.setdefault("not regular files", []).append(str(p))
                if not found:
                    raise ValueError(f"{path}: no files matching {glob!r} in this folder")
                self.files += [(p, True) for p in found]
            elif path.is_file():
                self.files.append((path, False))
            elif path.exists():
                raise ValueError(f"{path}: not a regular file, a folder or - (standard input)")
            else:
                raise FileNotFoundError(f"input not found: {path}")
        if not self.files:
            raise ValueError("no inputs given")
        self.total_bytes = sum(p.stat().st_size for p, _ in self.files if p is not None)
        self.bytes_read = 0

    def __iter__(self) -> Iterator[Iterator[str]]:
        index = 0  # documents met so far, for skip_documents
        for path, in_folder in self.files:
            if path is not None:
                problem = _text_problem(path)
                if problem is not None:
                    if not in_folder:
                        hint = "" if problem == "empty" else "; pass UTF-8 text or JSONL files"
                        raise DataError(f"{path}: the file is {problem}{hint}")
                    self.skipped.setdefault(problem.split(" (")[0], []).append(str(path))
                    self.bytes_read += path.stat().st_size
                    continue
            if path is not None and path.suffix.lower() in JSONL_SUFFIXES:
                for text in self._jsonl(path):
                    index += 1
                    if index > self.skip_documents:
                        yield iter([text])
            else:
                index += 1
                if index > self.skip_documents:
                    yield self._blocks(path)
                elif path is not None:
                    self.bytes_read += path.stat().st_size

    def _blocks(self, path: Path | None) -> Iterator[str]:
        if path is None:
            f = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
        else:
            f = open(path, encoding="utf-8", newline="")  # newline="": read the bytes as they are
        try:
            buf, n = [], 0
            while line := f.readline(self.block_chars):
                buf.append(line)
                n += len(line)
                if n >= self.block_chars:
                    block, buf, n = "".join(buf), [], 0
                    self.bytes_read += len(block.encode("utf-8"))
                    yield block
            if buf:
                block = "".join(buf)
                self.bytes_read += len(block.encode("utf-8"))
                yield block
        finally:
            if path is None:
                f.detach()  # leave sys.stdin open
            else:
                f.close()

    def _jsonl(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                self.bytes_read += len(line.encode("utf-8"))
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict) or self.field not in record:
                    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(f"{path}:{lineno}: no field {self.field!r} (found {keys}); choose the "
                                     f"text field with --field")
                text = record[self.field]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: field {self.field!r} holds {type(text).__name__}, "
                                     f"expected a string")
                if text:
                    yield text
                else:
                    self.skipped.setdefault("empty", []).append(f"{path}:{lineno}")


def _text_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as text, or None. Reads it once, in blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if b"\0" in chunk:
                return f"binary (NUL byte at offset {offset + chunk.index(0)})"
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return f"not UTF-8 (invalid byte near offset {offset + e.start})"
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "not UTF-8 (ends inside a character)"
    return "empty" if offset == 0 else None
