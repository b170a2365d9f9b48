"""Tokenizers: one small interface, saved as one JSON file beside the weights.

- ``ByteTokenizer`` (bytes 0-255, then the special tokens) needs no training and is the embedded
  default. Bits per byte = nats per token / ln 2.
- ``BPETokenizer``: a byte-level BPE trained with Hugging Face ``tokenizers`` (the ``data`` extra).
  Ids 0-15 are :data:`SPECIAL_TOKENS` (same names and order as the byte tokenizer's specials),
  then the 256 byte symbols, then the learned merges. Any text encodes (byte-level: no unknown
  token), and ``decode(encode(text)) == text``. Literal text never yields a control id:
  ``encode("[SEP]")`` gives the bytes of "[SEP]", as the byte tokenizer does, so a document cannot
  inject [USER]/[AI] markers; insert control tokens with :meth:`BPETokenizer.token_id`.

``token_categories()`` sorts a vocabulary into the classes the shuffled-vocabulary task permutes
within (special, word-initial, continuation, digit/punctuation, other bytes).
:func:`load_tokenizer` reads any of them.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

import numpy as np

# Control tokens of every plasticlm vocabulary, in this order, plus reserved ones for later tasks.
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[SEP]", "[USER]", "[AI]"] + [f"[CTRL{i}]" for i in range(10)]


# Token categories (DESIGN 4: permutation within categories). Values index CATEGORY_NAMES.
SPECIAL, WORD_INITIAL, CONTINUATION, DIGIT_PUNCT, OTHER = range(5)
CATEGORY_NAMES = ["special", "word-initial", "continuation", "digit/punct", "other"]


def categorize_bytes(b: bytes) -> int:
    """WORD_INITIAL: whitespace then a letter; CONTINUATION: starts with a letter; DIGIT_PUNCT:
    no letter first (digits, punctuation, whitespace, symbols); OTHER: not whole UTF-8."""
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return OTHER
    body = s.lstrip()
    if not body:
        return DIGIT_PUNCT
    if body[0].isalpha():
        return WORD_INITIAL if len(body) < len(s) else CONTINUATION
    return DIGIT_PUNCT


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_id(self, token: str) -> int: ...

    def save(self, path: str | os.PathLike) -> None: ...


class _Specials:
    """Control tokens by name (``self.specials``), for both tokenizers."""

    specials: dict[str, int]

    def token_id(self, token: str) -> int:
        try:
            return self.specials[token]
        except KeyError:
            raise KeyError(f"unknown special token {token!r}; known: {list(self.specials)}") from None


class ByteTokenizer(_Specials):
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
        """Category of every id (SPECIAL, CONTINUATION, ...), shape (V,) int8.

        A byte is never word-initial: letters are continuations, space and punctuation
        DIGIT_PUNCT, bytes of multi-byte characters OTHER."""
        cats = np.array([categorize_bytes(bytes([i])) for i in range(256)] + [SPECIAL] * len(SPECIAL_TOKENS),
                        dtype=np.int8)
        return cats

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"type": self.kind, "specials": SPECIAL_TOKENS}, indent=1))


# ---- byte-level BPE -----------------------------------------------------------------------------
def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("the BPE tokenizer needs Hugging Face `tokenizers`: pip install 'plasticlm[data]'") from None
    return tokenizers


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The ByteLevel pre-tokenizer's printable stand-in for each byte (GPT-2's table), inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


class BPETokenizer(_Specials):
    """A trained byte-level BPE; implements :class:`plasticlm.tokenizer.Tokenizer`."""

    kind = "bpe"

    def __init__(self, hf_tokenizer) -> None:
        self._tok = hf_tokenizer
        # Literal "[SEP]" in a document stays text (see module docstring).
        self._tok.encode_special_tokens = True
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.specials = {t: hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in self.specials.items() if i is None]
        if missing:
            raise ValueError(f"BPE tokenizer lacks the special tokens {missing}")

    # ---- training -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 32768, min_frequency: int = 2,
              progress: bool = False) -> "BPETokenizer":
        """Learn merges from ``texts`` until ``vocab_size`` ids (specials and bytes included)."""
        tk = _require_tokenizers()
        base = len(SPECIAL_TOKENS) + 256
        if vocab_size < base:
            raise ValueError(f"vocab_size={vocab_size} is below the {base} ids every byte-level BPE needs "
                             f"({len(SPECIAL_TOKENS)} specials + 256 bytes)")
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         special_tokens=list(SPECIAL_TOKENS), show_progress=progress,
                                         initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    # ---- the Tokenizer protocol ------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads); same ids as :meth:`encode` on each."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        spec = {"type": self.kind, "specials": SPECIAL_TOKENS, "tokenizer": json.loads(self._tok.to_str())}
        Path(path).write_text(json.dumps(spec, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPETokenizer":
        from .files import read_json

        return cls.from_spec(read_json(path), path)

    @classmethod
    def from_spec(cls, spec, path: str | os.PathLike) -> "BPETokenizer":
        """The tokenizer of a saved file's parsed JSON ``spec``; ``path`` names the file in errors."""
        from .files import DataError

        tk = _require_tokenizers()
        if not isinstance(spec, dict) or spec.get("type") != cls.kind or "tokenizer" not in spec:
            raise DataError(f"{path}: not a plasticlm BPE tokenizer (expected {{'type': 'bpe', 'tokenizer': ...}})")
        try:
            hf = tk.Tokenizer.from_str(json.dumps(spec["tokenizer"]))
            return cls(hf)
        except Exception as e:  # tokenizers raises its own Exception type on a malformed spec
            raise DataError(f"{path}: malformed BPE tokenizer ({e})") from None

    # ---- vocabulary structure --------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        """The bytes token ``i`` stands for (a special token's name for specials)."""
        piece = self._tok.id_to_token(int(i))
        if piece in self.specials:
            return piece.encode()
        table = _byte_decoder()
        return bytes(table[c] for c in piece)

    def token_categories(self) -> np.ndarray:
        """Category of every id (SPECIAL, WORD_INITIAL, ...), shape (V,) int8."""
        cats = np.empty(self.vocab_size, dtype=np.int8)
        special_ids = set(self.specials.values())
        for i in range(self.vocab_size):
            cats[i] = SPECIAL if i in special_ids else categorize_bytes(self.token_bytes(i))
        return cats

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for x in items:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


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
        return BPETokenizer.from_spec(spec, path)
    raise DataError(f"{path}: unknown tokenizer type {kind!r} (expected 'bytes' or 'bpe')")
