"""Tokenizers share one small interface and are saved as one JSON file beside the weights.

``ByteTokenizer`` (bytes 0-255, then the special tokens) needs no training and is the embedded
default. Trained BPE tokenizers live in ``plasticlm.data.tokenizer`` and load through
:func:`load_tokenizer` as well.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

# Control tokens of every plasticlm vocabulary, in this order, plus reserved ones for later tasks.
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[SEP]", "[USER]", "[AI]"] + [f"[CTRL{i}]" for i in range(10)]


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_id(self, token: str) -> int: ...

    def save(self, path: str | os.PathLike) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0-255, then :data:`SPECIAL_TOKENS`. Bits per byte = nats per token / ln 2."""

    kind = "bytes"

    def __init__(self) -> None:
        self.specials = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.vocab_size = 256 + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            out.append(SPECIAL_TOKENS[i - 256] if i < self.vocab_size else f"[UNK{i}]")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def token_categories(self):
        """Category of every id (plasticlm.data.tokenizer: SPECIAL, CONTINUATION, ...), shape (V,) int8.

        A byte is never word-initial: letters are continuations, space and punctuation
        DIGIT_PUNCT, bytes of multi-byte characters OTHER."""
        import numpy as np

        from .data.tokenizer import SPECIAL, categorize_bytes

        cats = np.array([categorize_bytes(bytes([i])) for i in range(256)] + [SPECIAL] * len(SPECIAL_TOKENS),
                        dtype=np.int8)
        return cats

    def token_id(self, token: str) -> int:
        try:
            return self.specials[token]
        except KeyError:
            raise KeyError(f"unknown special token {token!r}; known: {list(self.specials)}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"type": self.kind, "specials": SPECIAL_TOKENS}, indent=1))


def load_tokenizer(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Tokenizer:
    """Load a tokenizer saved by any plasticlm tokenizer's ``save``.

    The file must be a regular file of bounded size (a symlink only into the folder ``within``, when
    given), so a FIFO or /dev/zero in its place is refused instead of read forever.
    """
    from .files import DataError, read_json

    spec = read_json(path, within=within)
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "bpe":
        from .data.tokenizer import BPETokenizer

        return BPETokenizer.from_spec(spec, path)
    raise DataError(f"{path}: unknown tokenizer type {kind!r} (expected 'bytes' or 'bpe')")
