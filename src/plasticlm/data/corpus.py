"""One interface over every text source: hub datasets, local files and folders, built corpora.

:func:`read_corpus` turns a *source* into an iterator of :class:`Document`:

- a hub name (``wikitext-103``, ``squad``, ``wmt-en-de``, ``german-wiki``; see ``hub.py``);
- a ``.txt``/``.md``/``.rst``/``.raw`` file, a ``.jsonl`` file (one JSON object per line, text
  in field ``text``; optional ``id``, ``cites`` for a linked-articles graph, ``group`` to keep
  pieces of one source in one split, ``en``/``de`` for sentence pairs), a ``.parquet`` file
  (column ``text``), or a folder holding any of these.

Bad input never crashes deep inside a worker and is never dropped silently. A source that is
itself unusable (missing, empty file, empty folder, not UTF-8, binary) raises ``ValueError`` or
``FileNotFoundError`` naming it; inside a folder the same problems are *skips*: counted by
reason in a :class:`SkipLog`, logged with the file (and line) name, and reported at the end.

Splits (:func:`split_of`) are by document hash: the SHA-256 of the whitespace-normalised text
(the English side for pairs) picks a point in [0, 1) that falls in the train, valid, test or
holdout interval. So a document's split never depends on order, on which other documents
exist, or on the machine, and exact duplicates always land in the same split. A document with a
``group`` takes the split of the group's name instead: pieces of one page stay together.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator

from .records import Document, SkipLog

log = logging.getLogger("plasticlm.data")

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".raw", ".text"}
TABLE_SUFFIXES = {".jsonl", ".parquet"}
SPLITS = ("train", "valid", "test", "holdout")
DEFAULT_FRACTIONS = {"train": 0.90, "valid": 0.02, "test": 0.02, "holdout": 0.06}
UNITS = ("file", "paragraph", "line")


# ---- splits -------------------------------------------------------------------------------
def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; splits are {list(SPLITS)}")
    if any(not 0 <= f <= 1 for f in fractions.values()):
        raise ValueError(f"split fractions must lie in [0, 1], got {fractions}")
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {sum(fractions.values()):.6f} from {fractions}")
    return {s: fractions.get(s, 0.0) for s in SPLITS}


def doc_hash(text: str) -> float:
    """A point in [0, 1) fixed by the text's content (whitespace-normalised)."""
    h = hashlib.sha256(" ".join(text.split()).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_of(doc: Document, fractions: dict[str, float] = DEFAULT_FRACTIONS) -> str:
    """The split of ``doc``: train, valid, test or holdout (see the module docstring)."""
    u, edge = doc_hash(doc.text if doc.group is None else doc.group), 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if u < edge:
            return name
    return SPLITS[-1] if fractions.get(SPLITS[-1], 0) > 0 else max(fractions, key=fractions.get)


# ---- local files ---------------------------------------------------------------------------
class BadFile(ValueError):
    """A file that cannot be read as a corpus; the message names it, ``reason`` counts it."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path, self.reason, self.detail = path, reason, detail


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; ValueError naming the file when it is empty, binary or not UTF-8."""
    data = path.read_bytes()
    if not data.strip():
        raise BadFile(path, "empty file")
    if b"\x00" in data[:8192]:
        raise BadFile(path, "binary file", "NUL bytes, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadFile(path, "invalid UTF-8", f"byte {e.start}, line {line}: {e.reason}") from None


def _text_documents(path: Path, text: str, unit: str, name: str) -> Iterator[Document]:
    if unit == "file":
        yield Document(id=name, text=text)
    elif unit == "paragraph":
        for i, para in enumerate(p for p in text.split("\n\n") if p.strip()):
            yield Document(id=f"{name}#{i}", text=para.strip("\n"))
    elif unit == "line":
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                yield Document(id=f"{name}:{i + 1}", text=line)
    else:
        raise ValueError(f"unknown text unit {unit!r}; choose one of {UNITS}")


def _jsonl_documents(path: Path, text: str, name: str, text_field: str, skips: SkipLog) -> Iterator[Document]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            skips.skip("invalid JSON line", f"{where} ({e.msg})")
            continue
        doc = _record_document(obj, f"{name}:{n}", text_field, where, skips)
        if doc is not None:
            yield doc


def _record_document(obj, default_id: str, text_field: str, where: str, skips: SkipLog) -> Document | None:
    """A document from one JSON object / table row, or None (counted) when it has no usable text."""
    if not isinstance(obj, dict):
        skips.skip("record is not a JSON object", where)
        return None
    doc_id = str(obj.get("id", default_id))
    if "en" in obj and "de" in obj and text_field not in obj:  # an English-German pair
        en, de = obj["en"], obj["de"]
        if not (isinstance(en, str) and isinstance(de, str) and en.strip() and de.strip()):
            skips.skip("pair with an empty or non-text side", where)
            return None
        return Document(id=doc_id, text=en, translation=de)
    text = obj.get(text_field)
    if not isinstance(text, str):
        skips.skip(f"record without a text field {text_field!r}", where)
        return None
    if not text.strip():
        skips.skip("empty document", where)
        return None
    cites = obj.get("cites", ())
    if not isinstance(cites, (list, tuple)):
        skips.skip("'cites' is not a list", where)
        return None
    group = obj.get("group")
    if group is not None and not isinstance(group, str):
        skips.skip("'group' is not a string", where)
        return None
    return Document(id=doc_id, text=text, cites=tuple(str(c) for c in cites), group=group)


def _parquet_documents(path: Path, name: str, text_field: str, skips: SkipLog) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install 'plasticlm[data]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends on a damaged file
        raise BadFile(path, "not a readable Parquet file", str(e)) from None
    cols = pf.schema_arrow.names
    if text_field not in cols and not {"en", "de"} <= set(cols):
        raise BadFile(path, f"no column {text_field!r}", f"columns: {cols}; pass --text-field")
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            row += 1
            doc = _record_document(obj, f"{name}:{row}", text_field, f"{path}:row {row}", skips)
            if doc is not None:
                yield doc


def _file_documents(path: Path, name: str, unit: str, text_field: str, skips: SkipLog) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_documents(path, name, text_field, skips)
        return
    text = _read_text(path)
    if suffix == ".jsonl":
        yield from _jsonl_documents(path, text, name, text_field, skips)
    else:
        yield from _text_documents(path, text, unit, name)


def _folder_documents(root: Path, unit: str, text_field: str, skips: SkipLog) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    found = 0
    for f in files:
        suffix = f.suffix.lower()
        name = str(f.relative_to(root))
        if suffix not in TEXT_SUFFIXES | TABLE_SUFFIXES:
            skips.skip(f"unsupported file type {suffix or '(none)'!r}", str(f))
            continue
        try:
            for doc in _file_documents(f, name, unit, text_field, skips):
                found += 1
                yield doc
        except BadFile as e:  # an unusable file inside a folder is a counted skip, not the end
            skips.skip(e.reason, f"{f} ({e.detail})" if e.detail else str(f))
    if found == 0:
        raise ValueError(f"{root}: no documents found ({len(files)} files; {skips.summary()})")


def read_corpus(source: str | Path, *, unit: str = "file", text_field: str = "text",
                skips: SkipLog | None = None, hub_split: str = "train") -> Iterator[Document]:
    """Documents of ``source`` (hub name, file or folder), in a deterministic order.

    ``unit`` says what one document of a plain-text file is: the whole ``file``, each
    blank-line-separated ``paragraph``, or each ``line``. JSONL and Parquet rows are documents.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown text unit {unit!r}; choose one of {UNITS}")
    skips = skips if skips is not None else SkipLog()
    from .hub import HUB_DATASETS, read_hub

    if str(source) in HUB_DATASETS:
        yield from read_hub(str(source), split=hub_split)
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus source not found: {path} (and not a hub name: {sorted(HUB_DATASETS)})")
    if path.is_dir():
        yield from _folder_documents(path, unit, text_field, skips)
        return
    n = 0  # a single file named by the user is read as text whatever its suffix (once checked)
    for doc in _file_documents(path, path.name, unit, text_field, skips):
        n += 1
        yield doc
    if n == 0:
        raise ValueError(f"{path}: no documents ({skips.summary()})")
