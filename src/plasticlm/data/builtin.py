"""The embedded default corpus: English prose built from the docstrings of Python's standard library.

Every machine that runs plasticlm has it, it needs no network, and it is real technical English
(about 1 MB). The text is built once and cached; its order is deterministic for a given Python.
"""
from __future__ import annotations

import ast
import hashlib
import os
import sysconfig
from pathlib import Path

MIN_CHARS = 200  # shorter docstrings are mostly one-line signatures


def cache_dir() -> Path:
    return Path(os.environ.get("PLASTICLM_CACHE", Path.home() / ".cache" / "plasticlm"))


def _sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3")
    return [f for f in files if not any(part in skip for part in f.relative_to(root).parts[:-1])]


def build_builtin_corpus() -> str:
    docs = []
    for f in _sources():
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_CHARS:
                    docs.append(doc)
    if not docs:
        raise RuntimeError(f"no docstrings found under {sysconfig.get_paths()['stdlib']}: "
                           "this Python has no standard-library sources; pass a text file instead")
    return "\n\n".join(docs) + "\n"


def builtin_corpus() -> str:
    """The corpus text, from the cache when present."""
    import sys

    key = hashlib.sha1(f"{sys.version}|{sysconfig.get_paths()['stdlib']}".encode()).hexdigest()[:12]
    path = cache_dir() / f"builtin-corpus-{key}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    text = build_builtin_corpus()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text
