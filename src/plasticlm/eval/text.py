"""Evaluation text: documents from the hub, a local file, or the held-out tail of the builtin corpus.

``builtin`` is the last ``HELD_OUT`` fraction of :func:`plasticlm.data.builtin.builtin_corpus`,
the part the tiny recipe holds out for validation (``data.valid_fraction`` = 0.02), so a model
trained by ``plasticlm train tiny`` has not read it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

HELD_OUT = 0.02
HUB = {"wikitext": ("EleutherAI/wikitext_document_level", "wikitext-103-raw-v1", "test", "page")}


class SourceUnavailable(ValueError):
    """A data source (the hub, a package) cannot be reached or used here; the message says what to do."""


def hub_error(name: str, what: str, e: Exception) -> SourceUnavailable:
    return SourceUnavailable(f"cannot load {name} from the Hugging Face hub ({type(e).__name__}: {e}); "
                        f"offline, point the suite at a local file instead ({what})")


# WikiText's tokenized spacing undone before scoring, rule for rule as lm-evaluation-harness's
# wikitext task does (its word and byte counts stay those of the raw page). (pattern, replacement,
# is_regex), applied in order.
WIKITEXT_RULES = [
    ("s '", "s'", False), (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False), (" @,@ ", ",", False), (" @.@ ", ".", False),
    *[(f" {p} ", f"{p} ", False) for p in ":;.!?,"],
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True), (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True), (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False), ("= = =", "===", False), ("= =", "==", False),
    (" \u00b0 ", "\u00b0", False), (" \n", "\n", False), ("\n ", "\n", False), (" N ", " 1 ", False),
    (" 's", "'s", False),
]


def wikitext_detokenize(page: str) -> str:
    for pattern, repl, regex in WIKITEXT_RULES:
        page = re.sub(pattern, repl, page) if regex else page.replace(pattern, repl)
    return page


def load_hub(name: str) -> list[str]:
    path, config, split, field = HUB[name]
    try:
        import datasets

        ds = datasets.load_dataset(path, config, split=split)
    except ImportError as e:
        raise hub_error(name, "perplexity.source=PATH to a .txt or .jsonl file; or pip install datasets", e) from None
    except Exception as e:  # the hub raises many types (ConnectionError, HfHubHTTPError, ...)
        raise hub_error(name, "perplexity.source=PATH to a .txt or .jsonl file", e) from None
    return [d[field] for d in ds if d[field].strip()]


def builtin_split() -> tuple[str, str]:
    """(training part, held-out tail) of the builtin corpus, cut where the trainer cuts its byte
    tokens: the last int(bytes * HELD_OUT) bytes are held out."""
    from ..data.builtin import builtin_corpus

    raw = builtin_corpus().encode("utf-8")
    cut = len(raw) - int(len(raw) * HELD_OUT)
    return raw[:cut].decode("utf-8", errors="ignore"), raw[cut:].decode("utf-8", errors="ignore")


def builtin_held_out() -> str:
    return builtin_split()[1]


def split_documents(text: str) -> list[str]:
    """Documents separated by blank lines."""
    return [d.strip("\n") for d in re.split(r"\n\s*\n", text) if d.strip()]


def documents(source: str) -> list[str]:
    """'builtin', a hub name ('wikitext': raw pages), a .txt file (blank-line separated) or a .jsonl
    file ({"text": ...})."""
    if source == "builtin":
        return split_documents(builtin_held_out())
    if source in HUB:
        return load_hub(source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"text source {source!r} is neither 'builtin', a hub name ({', '.join(HUB)}) "
                                "nor an existing file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string field 'text'")
            docs.append(doc["text"])
    else:
        docs = split_documents(raw)
    if not docs:
        raise ValueError(f"{path}: holds no document")
    return docs


def sentences(text: str, min_words: int = 4, max_words: int = 30) -> list[str]:
    """Plain one-line sentences of moderate length (for probes built from real text)."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = s.split()
        if min_words <= len(words) <= max_words and s[-1] in ".!?" and s.isascii():
            out.append(s)
    return out
