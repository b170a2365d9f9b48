import json

import numpy as np
import pytest

from plasticlm.tokenizer import (
    CONTINUATION,
    DIGIT_PUNCT,
    OTHER,
    WORD_INITIAL,
    BPETokenizer,
    categorize_bytes,
)
from plasticlm.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer

TEXTS = ["Hello, world!", "  leading spaces\tand tabs\n\nnewlines  ", "ünïcödé — emoji 🦜 and 中文",
         "literal [SEP] and [USER] stay text", "", "1234567890 +-*/ {}[]()", "a" * 500]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_roundtrip(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_protocol_specials_and_vocab_size(bpe, paragraphs):
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size == 1000
    assert [bpe.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    # Literal control-token text never yields a control id (no injection from documents).
    assert bpe.token_id("[SEP]") not in bpe.encode("a [SEP] b")
    with pytest.raises(KeyError, match="unknown special token"):
        bpe.token_id("[NOPE]")
    small = BPETokenizer.train(paragraphs[:200], vocab_size=400)
    assert small.vocab_size == 400


def test_save_load_through_load_tokenizer(bpe, tmp_path):
    p = tmp_path / "tokenizer.json"
    bpe.save(p)
    assert json.loads(p.read_text())["type"] == "bpe"
    tok = load_tokenizer(p)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == bpe.vocab_size
    for t in TEXTS:
        assert tok.encode(t) == bpe.encode(t)
    assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]


def test_bad_tokenizer_files(tmp_path, paragraphs):
    with pytest.raises(ValueError, match="below the 272 ids"):
        BPETokenizer.train(paragraphs[:10], vocab_size=100)
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "bpe", "tokenizer": {"model": 3}}')
    with pytest.raises(ValueError, match="bad.json: malformed BPE tokenizer"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        BPETokenizer.load(tmp_path / "missing.json")


def test_categories(bpe):
    assert categorize_bytes(b" the") == WORD_INITIAL
    assert categorize_bytes(b"ing") == CONTINUATION
    assert categorize_bytes(b" 12") == DIGIT_PUNCT and categorize_bytes(b"),") == DIGIT_PUNCT
    assert categorize_bytes(b"\xc3") == OTHER  # half of a UTF-8 character
    cats = bpe.token_categories()
    assert cats.shape == (bpe.vocab_size,)
    assert (cats[:len(SPECIAL_TOKENS)] == 0).all() and (cats[len(SPECIAL_TOKENS):] != 0).all()
    counts = np.bincount(cats, minlength=5)
    assert counts[WORD_INITIAL] > 100 and counts[CONTINUATION] > 100 and counts[DIGIT_PUNCT] > 10


def test_saved_and_loaded_with_the_run(bpe, tmp_path):
    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.checkpoint import load_model, save_model

    model = PlasticLM(ModelConfig(vocab_size=bpe.vocab_size, d_model=32, n_layers=1, n_heads=2))
    save_model(tmp_path / "run", model, bpe)
    _, tok, _ = load_model(tmp_path / "run")
    assert isinstance(tok, BPETokenizer) and tok.encode(TEXTS[2]) == bpe.encode(TEXTS[2])
