"""Token shards: a corpus encoded once, read back memory-mapped (``plasticlm prepare``).

A prepared directory holds, per split (train, valid, test, holdout):

    {split}.bin        every document's token ids, concatenated (uint16, or uint32 for V > 65536)
    {split}.idx.npy    int64 offsets, shape (n_docs + 1,): document i is bin[idx[i]:idx[i+1]]
    {split}.docs.jsonl one line per document: {"id": ..., "cites": [...]} (cites for graphs)

plus ``tokenizer.json`` and ``meta.json`` (sizes per split in documents, tokens and bytes, the
skip report, the split fractions, the source, and ``aliases``: the id of each exact duplicate
dropped -> the id of the document kept, so that citations of a duplicate still resolve). ``meta.json`` is written last, after every other
file has been renamed into place, so a directory with a ``meta.json`` is complete.

An English-German pair is stored as one document, ``en [SEP] de``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from ..files import atomic_write
from ..tokenizer import Tokenizer, load_tokenizer
from .corpus import DEFAULT_FRACTIONS, SPLITS, Document, SkipLog, check_fractions, doc_hash, read_corpus, split_of

FORMAT = 1


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class TokenShard:
    """The documents of one split as memory-mapped token arrays: ``shard[i]`` -> (n_i,) ints."""

    def __init__(self, directory: str | os.PathLike, split: str) -> None:
        d = Path(directory)
        meta = read_meta(d)
        self.split, self.directory = split, d
        self.offsets = np.load(d / f"{split}.idx.npy")
        n_tokens = int(self.offsets[-1])
        dtype = np.dtype(meta["dtype"])
        # np.memmap refuses a zero-length file; an empty split is an empty array.
        self.tokens = (np.memmap(d / f"{split}.bin", dtype=dtype, mode="r") if n_tokens
                       else np.zeros(0, dtype=dtype))
        if len(self.tokens) != n_tokens:
            raise ValueError(f"{d / f'{split}.bin'}: holds {len(self.tokens)} tokens, its index says {n_tokens}")
        self._docs = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _records(self) -> list[dict]:
        if self._docs is None:
            path = self.directory / f"{self.split}.docs.jsonl"
            self._docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return self._docs

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self._records()]

    @property
    def cites(self) -> list[list[str]]:
        return [r.get("cites", []) for r in self._records()]


def read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: not a prepared corpus (no meta.json); run `plasticlm prepare` first")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: shard format {meta.get('format')!r}, this plasticlm reads format {FORMAT}")
    return meta


def load_prepared(directory: str | os.PathLike) -> tuple[dict, Tokenizer]:
    """``(meta, tokenizer)`` of a prepared directory."""
    meta = read_meta(directory)
    return meta, load_tokenizer(Path(directory) / meta["tokenizer"])


def document_ids(doc: Document, tok: Tokenizer, sep: int) -> list[int]:
    ids = tok.encode(doc.text)
    if doc.translation is not None:
        ids = ids + [sep] + tok.encode(doc.translation)
    return ids


def _encode_many(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]


def write_shards(docs: Iterable[Document], tok: Tokenizer, out_dir: str | os.PathLike, *,
                 fractions: dict[str, float] = DEFAULT_FRACTIONS, skips: SkipLog | None = None,
                 progress: bool = True, batch_docs: int = 256, extra_meta: dict | None = None) -> dict:
    """Encode ``docs`` into per-split shards under ``out_dir``; returns (and writes) ``meta``.

    Exact duplicates (same normalised text) are kept once and counted as skips.
    """
    fractions = check_fractions(fractions)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skips = skips if skips is not None else SkipLog()
    dtype = token_dtype(tok.vocab_size)
    sep = tok.token_id("[SEP]")
    files = {s: open(out / f"{s}.bin.tmp", "wb") for s in SPLITS}
    records = {s: open(out / f"{s}.docs.jsonl.tmp", "w", encoding="utf-8") for s in SPLITS}
    offsets = {s: [0] for s in SPLITS}
    sizes = {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    seen: dict[float, str] = {}  # content hash -> id of the document kept
    aliases: dict[str, str] = {}  # id of a dropped duplicate -> id of the kept document
    bar = tqdm(desc="encode", unit="doc", disable=not progress, dynamic_ncols=True)

    def flush(batch: list[Document]) -> None:
        texts = [d.text for d in batch]
        encoded = _encode_many(tok, texts)
        pairs = [i for i, d in enumerate(batch) if d.translation is not None]
        if pairs:
            de = _encode_many(tok, [batch[i].translation for i in pairs])
            for i, ids in zip(pairs, de):
                encoded[i] = encoded[i] + [sep] + ids
        for d, ids in zip(batch, encoded):
            s = split_of(d, fractions)
            files[s].write(np.asarray(ids, dtype=dtype).tobytes())
            offsets[s].append(offsets[s][-1] + len(ids))
            rec = {"id": d.id, "cites": list(d.cites)} if d.cites else {"id": d.id}
            records[s].write(json.dumps(rec, ensure_ascii=False) + "\n")
            sizes[s]["documents"] += 1
            sizes[s]["tokens"] += len(ids)
            sizes[s]["bytes"] += len(d.text.encode()) + (len(d.translation.encode()) if d.translation else 0)
        bar.update(len(batch))

    try:
        batch: list[Document] = []
        for d in docs:
            key = doc_hash(d.text + "\x00" + (d.translation or ""))
            if key in seen:
                skips.skip("duplicate document", d.id)
                aliases[d.id] = seen[key]
                continue
            seen[key] = d.id
            batch.append(d)
            if len(batch) == batch_docs:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        bar.close()
        for f in (*files.values(), *records.values()):
            f.close()
    for s in SPLITS:
        np.save(out / f"{s}.idx.npy.tmp.npy", np.asarray(offsets[s], dtype=np.int64))
        os.replace(out / f"{s}.idx.npy.tmp.npy", out / f"{s}.idx.npy")
        os.replace(out / f"{s}.bin.tmp", out / f"{s}.bin")
        os.replace(out / f"{s}.docs.jsonl.tmp", out / f"{s}.docs.jsonl")
    tok.save(out / "tokenizer.json")
    meta = {"format": FORMAT, "tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
            "dtype": np.dtype(dtype).name, "fractions": fractions, "splits": sizes,
            "skipped": skips.report(), "aliases": aliases, **(extra_meta or {})}
    text = json.dumps(meta, indent=1)
    atomic_write(out / "meta.json", lambda tmp: tmp.write_text(text))
    return meta


def prepare(source: str, out_dir: str | os.PathLike, *, tokenizer: str | None = None, vocab_size: int = 32768,
            unit: str = "file", text_field: str = "text", fractions: dict[str, float] = DEFAULT_FRACTIONS,
            hub_split: str = "train", progress: bool = True) -> dict:
    """Read ``source``, train a BPE on its train split unless ``tokenizer`` names one, write shards."""
    fractions = check_fractions(fractions)
    skips = SkipLog()

    def docs():
        return read_corpus(source, unit=unit, text_field=text_field, skips=skips, hub_split=hub_split)

    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    else:
        from ..tokenizer import BPETokenizer

        def train_texts():
            for d in docs():
                if split_of(d, fractions) == "train":
                    yield d.text
                    if d.translation is not None:
                        yield d.translation
        texts = tqdm(train_texts(), desc="read for BPE", unit="text", disable=not progress, dynamic_ncols=True)
        tok = BPETokenizer.train(texts, vocab_size=vocab_size)
        skips = SkipLog()  # the encoding pass below meets (and counts) the same skips again
    meta = write_shards(docs(), tok, out_dir, fractions=fractions, skips=skips, progress=progress,
                        extra_meta={"source": str(source), "unit": unit})
    empty = [s for s in SPLITS if fractions[s] > 0 and meta["splits"][s]["documents"] == 0]
    if empty:
        total = sum(v["documents"] for v in meta["splits"].values())
        raise ValueError(f"{source}: splits {empty} came out empty from {total} documents; a plain-text file is one "
                         f"document with --unit file: use --unit paragraph or line, or more files")
    return meta
