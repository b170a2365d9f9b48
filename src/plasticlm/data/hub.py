"""Hub datasets by name, through Hugging Face ``datasets`` (``pip install 'plasticlm[data]'``).

Each name maps to a dataset on the hub and to a function that turns its rows into
:class:`~plasticlm.data.corpus.Document` objects, so a hub corpus and a local one look the same
downstream. Without a network (these project machines have none) the loader fails fast with
:class:`HubUnreachable`, which says how to use local files instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .records import Document


class HubUnreachable(ValueError):
    """The Hugging Face hub cannot be reached (no network, offline mode, or a missing dataset)."""


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(lines: Iterable[str], prefix: str = "wikitext") -> Iterator[Document]:
    """Regroup WikiText's one-row-per-line layout into articles (a ' = Title = ' line opens one)."""
    title, buf, n = None, [], 0

    def flush():
        text = "".join(buf).strip("\n")
        return Document(id=f"{prefix}:{n}:{title}", text=text) if text.strip() else None

    for line in lines:
        if _WIKITEXT_TITLE.match(line.rstrip("\n")):
            if title is not None and (doc := flush()):
                yield doc
                n += 1
            title, buf = line.strip().strip("=").strip(), [line]
        elif title is not None:
            buf.append(line)
    if title is not None and (doc := flush()):
        yield doc


def _wikitext(rows) -> Iterator[Document]:
    yield from wikitext_articles((r["text"] for r in rows), "wikitext")


def _squad(rows) -> Iterator[Document]:
    seen = set()  # SQuAD repeats each context once per question
    for r in rows:
        if r["context"] not in seen:
            seen.add(r["context"])
            yield Document(id=f"squad:{r['title']}:{len(seen)}", text=r["context"])


def _wmt(rows) -> Iterator[Document]:
    for i, r in enumerate(rows):
        t = r["translation"]
        if t["en"].strip() and t["de"].strip():
            yield Document(id=f"wmt:{i}", text=t["en"], translation=t["de"])


def _wikipedia(rows) -> Iterator[Document]:
    for r in rows:
        if r["text"].strip():
            yield Document(id=f"wikipedia-de:{r['id']}:{r['title']}", text=r["text"])


@dataclass(frozen=True)
class HubDataset:
    path: str
    config: str | None
    to_documents: Callable
    what: str


HUB_DATASETS = {
    "wikitext-103": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1", _wikitext, "English Wikipedia articles (raw)"),
    "wikitext-2": HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1", _wikitext, "a 2M-token subset of wikitext-103"),
    "squad": HubDataset("rajpurkar/squad", None, _squad, "SQuAD v1.1 contexts (one document per paragraph)"),
    "wmt-en-de": HubDataset("wmt/wmt14", "de-en", _wmt, "WMT14 English-German sentence pairs"),
    "german-wiki": HubDataset("wikimedia/wikipedia", "20231101.de", _wikipedia, "German Wikipedia articles"),
}


def read_hub(name: str, split: str = "train") -> Iterator[Document]:
    """Stream the documents of hub dataset ``name`` (a key of :data:`HUB_DATASETS`)."""
    spec = HUB_DATASETS[name]
    try:
        import datasets
    except ImportError:
        raise ImportError(f"hub dataset {name!r} needs Hugging Face `datasets`: pip install 'plasticlm[data]'") from None
    split = {"valid": "validation"}.get(split, split)
    try:
        rows = datasets.load_dataset(spec.path, spec.config, split=split, streaming=True)
        yield from spec.to_documents(rows)
    except (ConnectionError, OSError) as e:
        raise HubUnreachable(
            f"cannot reach the Hugging Face hub for {name!r} ({spec.path}): {e}. Without a network, point at "
            f"local files instead: a .txt/.jsonl/.parquet file or a folder of them (e.g. WikiText's "
            f"wiki.train.raw with --unit paragraph, or a downloaded dataset's Parquet files), or build the "
            f"offline corpus of this machine with `plasticlm build-corpus DIR`") from None
