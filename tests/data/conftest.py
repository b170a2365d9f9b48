"""Shared fixtures of the data tests: a small BPE and a prepared corpus, both from the builtin
standard-library docstring corpus, so these tests run on any machine with Python sources."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tokenizers")


@pytest.fixture(scope="session")
def paragraphs() -> list[str]:
    from plasticlm.data.builtin import builtin_corpus

    return [p for p in builtin_corpus().split("\n\n") if len(p) > 80][:3000]


@pytest.fixture(scope="session")
def bpe(paragraphs):
    from plasticlm.tokenizer import BPETokenizer

    return BPETokenizer.train(paragraphs, vocab_size=1000)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, paragraphs, bpe):
    """A prepared directory: the paragraphs as JSONL, encoded with ``bpe``."""
    from plasticlm.data.shards import prepare

    d = tmp_path_factory.mktemp("prepared")
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(paragraphs)))
    tok = d / "tok.json"
    bpe.save(tok)
    prepare(str(src), d / "out", tokenizer=str(tok), progress=False)
    return d / "out"


@pytest.fixture(scope="session")
def token_docs(bpe, paragraphs):
    """``token_docs(start, stop)``: paragraphs[start:stop] encoded, as int64 arrays."""
    def make(start: int, stop: int) -> list[np.ndarray]:
        return [np.asarray(x, dtype=np.int64) for x in bpe.encode_batch(paragraphs[start:stop])]
    return make
