"""Generation from states: saved = in-process, sampling knobs, stop conditions, incremental decoding."""
from __future__ import annotations

import pytest
import torch

from plasticlm.reading import Reader
from plasticlm.sampling import Sampling, TextStream, next_token, penalize
from plasticlm.tokenizer import ByteTokenizer

from . import test_reading as shared

# The reading tests' checkpoint and reader fixtures, and their tiny model.
ckpt, reader, tiny_model = shared.ckpt, shared.reader, shared.tiny_model

DOCS = ["The cat sat on the mat.\n" * 5, "Ünïcödé ✓ — 日本語のテキスト 🙂\n", "Paris is the capital of France.\n"]
GREEDY = Sampling(temperature=0, max_new_tokens=24)


def test_generation_from_saved_state_equals_in_process(reader, ckpt, tmp_path):
    read_here = reader.read(DOCS)
    expected = reader.generate("Where is Paris?", read_here, GREEDY)
    read_here.save(tmp_path / "kb.state")
    later = Reader.load(ckpt, piece=16)  # a fresh model object, as in a later session
    got = later.generate("Where is Paris?", later.load_state(tmp_path / "kb.state"), GREEDY)
    assert got.tokens == expected.tokens and got.text == expected.text
    assert len(got.tokens) == GREEDY.max_new_tokens
    # Not vacuous: what was read changes the answer.
    assert reader.generate("Where is Paris?", None, GREEDY).tokens != expected.tokens


def test_generation_after_resumed_reading_equals_one_go(reader):
    one_go = reader.read(DOCS)
    resumed = reader.read(DOCS[2:], reader.read(DOCS[:2]))
    assert reader.generate("Q", one_go, GREEDY).tokens == reader.generate("Q", resumed, GREEDY).tokens


def test_streamed_text_is_the_result(reader):
    chunks = []
    g = reader.generate("x", reader.read(DOCS), Sampling(temperature=1.0, max_new_tokens=60, seed=3), chunks.append)
    assert "".join(chunks) == g.text and all(chunks)


def test_seed_reproducibility(reader):
    rs = reader.read(DOCS)
    hot = dict(temperature=1.5, max_new_tokens=30)
    a = reader.generate("x", rs, Sampling(seed=1, **hot)).tokens
    assert a == reader.generate("x", rs, Sampling(seed=1, **hot)).tokens
    assert a != reader.generate("x", rs, Sampling(seed=2, **hot)).tokens


def test_top_k_one_is_greedy(reader):
    rs = reader.read(DOCS)
    g = reader.generate("x", rs, Sampling(temperature=2.0, top_k=1, max_new_tokens=20, seed=5))
    assert g.tokens == reader.generate("x", rs, Sampling(temperature=0, max_new_tokens=20)).tokens


def test_tiny_top_p_is_greedy(reader):
    rs = reader.read(DOCS)
    g = reader.generate("x", rs, Sampling(temperature=1.0, top_p=1e-6, max_new_tokens=20, seed=5))
    assert g.tokens == reader.generate("x", rs, Sampling(temperature=0, max_new_tokens=20)).tokens


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 1.5, 0.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert torch.equal(penalize(logits, seen, 2.0), torch.tensor([[1.0, -2.0, 1.5, 0.0]]))
    greedy = Sampling(temperature=0)
    assert next_token(logits, seen, greedy, None).item() == 0
    assert next_token(logits, seen, Sampling(temperature=0, repetition_penalty=2.0), None).item() == 2


def test_repetition_penalty_reduces_repeats(reader):
    rs = reader.read(DOCS)
    plain = reader.generate("ab", rs, Sampling(temperature=0, max_new_tokens=40)).tokens
    penalized = reader.generate("ab", rs, Sampling(temperature=0, max_new_tokens=40, repetition_penalty=5.0)).tokens
    assert len(set(penalized)) > len(set(plain))


def test_stop_string(reader):
    rs = reader.read(DOCS)
    full = reader.generate("Q", rs, Sampling(temperature=0, max_new_tokens=40))
    stop = full.text[10:13]
    cut = full.text.index(stop)
    chunks = []
    g = reader.generate("Q", rs, Sampling(temperature=0, max_new_tokens=40, stop=(stop, "never seen")), chunks.append)
    assert g.stop_reason == "stop" and g.text == full.text[:cut] == "".join(chunks)
    assert g.tokens == full.tokens[:len(g.tokens)]


def test_eos_ends_generation(monkeypatch):
    model, tok = tiny_model(), ByteTokenizer()
    eos, forward = tok.token_id("[EOS]"), model.forward

    def eos_loving(tokens, state=None):
        logits, state = forward(tokens, state)
        logits[..., eos] += 1e4
        return logits, state

    monkeypatch.setattr(model, "forward", eos_loving)
    reader = Reader(model, tok)
    g = reader.generate("hello", None, GREEDY)
    assert g.stop_reason == "eos" and g.text == "" and g.tokens == []
    assert g.state.pending == [eos]
    g = reader.generate("hello", None, Sampling(temperature=0, max_new_tokens=5, stop_at_eos=False))
    assert g.stop_reason == "length" and g.text == "[EOS]" * 5


def test_continuing_from_a_generation_state(reader):
    """The state after an answer is what reading the prompt and the answer gives (interactive turns)."""
    rs = reader.read(DOCS)
    first = reader.generate("Hi", rs, GREEDY)
    assert first.state.tokens == rs.tokens + len(b"Hi") + len(first.tokens)
    via_reading = reader.read_tokens(reader.encode("Hi") + first.tokens, rs)
    a = reader.generate(" again", first.state, GREEDY)
    b = reader.generate(" again", via_reading, GREEDY)
    assert a.tokens == b.tokens


def test_batch_rows_equal_single_generations(reader):
    rs = reader.read(DOCS)
    prompts = ["Where is Paris?", "x", "The cat"]
    batch = reader.generate_batch(prompts, rs, GREEDY)
    assert [g.tokens for g in batch] == [reader.generate(p, rs, GREEDY).tokens for p in prompts]
    for g, p in zip(batch, prompts):
        assert g.prompt == p


def test_empty_prompt_continues_after_the_text_read(reader):
    rs = reader.read(DOCS)
    assert len(reader.generate("", rs, GREEDY).tokens) == GREEDY.max_new_tokens
    with pytest.raises(ValueError, match="nothing to continue from"):
        reader.generate("", None, GREEDY)


@pytest.mark.parametrize("kwargs, field", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(stop=("",)), "stop"),
])
def test_sampling_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"Sampling.{field} must be"):
        Sampling(**kwargs)


# --- incremental decoding --------------------------------------------------------------------

def test_text_stream_never_splits_a_character():
    text = "héllo wörld — 日本語 🙂 done"
    stream, chunks = TextStream(ByteTokenizer()), []
    for b in text.encode():
        chunks.append(stream.push(b))
    chunks.append(stream.finish())
    assert "".join(chunks) == text
    assert not any("\ufffd" in c for c in chunks)
    assert "🙂" in chunks  # the four bytes of the emoji come out together


def test_text_stream_flushes_invalid_bytes():
    stream = TextStream(ByteTokenizer(), hold_tokens=3)
    out = "".join(stream.push(b) for b in [0xE2, 0x82, 0xFF, 0xFF, 0xFF, 0xFF])
    assert "\ufffd" in out  # shown after hold_tokens, not held forever
    assert "".join([out, stream.finish()]).count("\ufffd") >= 1


def test_text_stream_holds_back_possible_stop_strings():
    stream = TextStream(ByteTokenizer(), stop=("STOP",))
    shown = [stream.push(b) for b in b"abST"]
    assert "".join(shown) == "ab"  # "ST" may begin "STOP"
    assert stream.push(ord("x")) == "STx"  # it did not
    rest = "".join(stream.push(b) for b in b"yySTOP")
    assert rest == "yy" and stream.stopped and stream.text == "abSTxyy"
    assert stream.finish() == ""
    with pytest.raises(RuntimeError, match="after a stop string"):
        stream.push(ord("z"))


class WordTokenizer:
    """Decoding depends on context (words are joined with spaces), as with sentencepiece."""

    vocab_size = 4
    words = ["alpha", "beta", "gamma", "[EOS]"]

    def encode(self, text):
        return [self.words.index(w) for w in text.split()]

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)

    def token_id(self, token):
        return self.words.index(token)

    def save(self, path):
        open(path, "w").write("words")


def test_text_stream_with_context_dependent_decoding():
    tok, ids = WordTokenizer(), [0, 1, 2, 1, 0]
    stream = TextStream(tok)
    out = "".join(stream.push(i) for i in ids) + stream.finish()
    assert out == tok.decode(ids) == "alpha beta gamma beta alpha"
