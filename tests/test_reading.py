"""Reading into a state: resumed = one go, bounded pieces, identity checks, corrupt files, corpus inputs."""
from __future__ import annotations

import json
import pickle
import random

import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, State
from plasticlm.checkpoint import save_model
from plasticlm.reading import Documents, Reader, ReadState
from plasticlm.tokenizer import ByteTokenizer

DOCS = ["The cat sat on the mat.\n" * 7, "Ünïcödé ✓ — 日本語のテキスト 🙂\n", "short", "x" * 130,
        "A third paragraph, of moderate length, about nothing in particular.\n" * 3, "end"]


def tiny_model(seed: int = 0, vocab_size: int = 272) -> PlasticLM:
    torch.manual_seed(seed)
    # Large init_std: an untrained model whose outputs depend strongly on what it read.
    return PlasticLM(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, init_std=0.3,
                                 chunk_size=16)).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    save_model(d, tiny_model(), ByteTokenizer())
    return d


@pytest.fixture(scope="module")
def reader(ckpt):
    return Reader.load(ckpt, piece=16)


def assert_same_state(a: ReadState, b: ReadState, documents: bool = True) -> None:
    assert all(s.dtype == torch.float32 for s in a.state.layers)
    assert all(torch.equal(x, y) for x, y in zip(a.state.layers, b.state.layers, strict=True))
    assert (a.pending, a.tokens) == (b.pending, b.tokens)
    assert a.documents == b.documents or not documents


@pytest.mark.parametrize("cuts", [[1], [2, 3], [1, 2, 3, 4, 5], [5]], ids=lambda c: "cuts" + "-".join(map(str, c)))
def test_resumed_reading_equals_one_go(reader, tmp_path, cuts):
    one_go = reader.read(DOCS)
    rs, bounds = None, [0, *cuts, len(DOCS)]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        rs = reader.read(DOCS[a:b], rs)
        rs.save(tmp_path / f"s{i}.state")
        rs = reader.load_state(tmp_path / f"s{i}.state")
    assert_same_state(rs, one_go)
    assert one_go.tokens == sum(len(d.encode()) + 1 for d in DOCS)  # one [EOS] after each document
    # The equality is not vacuous: another order of the same documents gives another state.
    other = reader.read(DOCS[::-1])
    assert not all(torch.equal(x, y) for x, y in zip(other.state.layers, one_go.state.layers))


@pytest.mark.parametrize("seed", range(4))
def test_token_stream_split_anywhere_equals_one_go(reader, tmp_path, seed):
    """Splits inside documents and inside pieces, at random token positions."""
    ids = [t for d in DOCS for t in list(d.encode()) + [reader.tokenizer.token_id("[EOS]")]]
    one_go = reader.read_tokens(ids)
    cuts = sorted(random.Random(seed).sample(range(1, len(ids)), 5))
    rs = None
    for a, b in zip([0, *cuts], [*cuts, len(ids)]):
        rs = reader.read_tokens(ids[a:b], rs)
        rs.save(tmp_path / "s.state")
        rs = reader.load_state(tmp_path / "s.state")
    assert_same_state(rs, one_go)
    assert_same_state(reader.read(DOCS), one_go, documents=False)  # documents are their tokens plus [EOS]


def test_separator_choice(ckpt):
    eos = ByteTokenizer().token_id("[EOS]")
    with_eos = Reader.load(ckpt, piece=1000).read(["ab", "cd"])
    assert with_eos.pending == [97, 98, eos, 99, 100, eos] and with_eos.documents == 2
    bare = Reader.load(ckpt, piece=1000, separator="").read(["ab", "cd"])
    assert bare.pending == [97, 98, 99, 100]
    sep = Reader.load(ckpt, piece=1000, separator="[SEP]").read(["ab"])
    assert sep.pending == [97, 98, ByteTokenizer().token_id("[SEP]")]
    with pytest.raises(ValueError, match="separator '\\[NOPE\\]' is not a special token"):
        Reader.load(ckpt, separator="[NOPE]")


def test_reading_runs_in_fixed_pieces_and_streams(reader, monkeypatch):
    """Constant memory: every forward pass is one piece; the corpus is consumed as it is read."""
    calls = []
    real = reader.model.hidden
    monkeypatch.setattr(reader.model, "hidden", lambda x, s: calls.append(tuple(x.shape)) or real(x, s))
    fed = []

    def documents():
        for i in range(40):
            # Reading interleaves with the iteration: by document i, all but one piece of the
            # earlier documents has gone through the model.
            assert sum(c[1] for c in calls) >= sum(fed) - reader.piece
            fed.append(len(DOCS[i % len(DOCS)].encode()) + 1)
            yield DOCS[i % len(DOCS)]

    rs = reader.read(documents())
    assert calls and set(calls) == {(1, reader.piece)}
    assert 1 <= len(rs.pending) <= reader.piece
    assert sum(c[1] for c in calls) + len(rs.pending) == rs.tokens == sum(fed)


def test_read_leaves_input_state_unchanged(reader):
    first = reader.read(DOCS[:2])
    copy = first.copy()
    reader.read(DOCS[2:], first)
    assert_same_state(first, copy)


class ShiftedBytes(ByteTokenizer):
    """Same vocabulary size as ByteTokenizer, another mapping: a different tokenizer."""

    kind = "shifted-bytes"

    def encode(self, text):
        return [(b + 1) % 256 for b in text.encode()]


class WideBytes(ByteTokenizer):
    kind = "wide-bytes"

    def __init__(self):
        super().__init__()
        self.vocab_size += 8


def test_state_from_another_checkpoint_or_vocabulary_is_refused(ckpt, tmp_path):
    path = tmp_path / "kb.state"
    Reader.load(ckpt).read(DOCS).save(path)
    other_weights = tmp_path / "other"
    save_model(other_weights, tiny_model(seed=1), ByteTokenizer())
    with pytest.raises(ValueError, match=r"read by model [0-9a-f]{16}, this checkpoint is [0-9a-f]{16}"):
        Reader.load(other_weights).load_state(path)
    with pytest.raises(ValueError, match="vocabulary of 272 tokens, this checkpoint's has 280"):
        Reader(tiny_model(vocab_size=280), WideBytes()).load_state(path)
    with pytest.raises(ValueError, match="read with another tokenizer"):
        Reader(tiny_model(), ShiftedBytes()).load_state(path)
    Reader.load(ckpt).load_state(path)  # and the right checkpoint takes it


def test_truncated_or_corrupt_state_is_refused(reader, tmp_path):
    path = tmp_path / "kb.state"
    reader.read(DOCS).save(path)
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    for n in (0, 4, 40, header - 3, header + 10, len(data) - 1):
        bad = tmp_path / f"cut{n}.state"
        bad.write_bytes(data[:n])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            reader.load_state(bad)
    flipped = bytearray(data)
    flipped[header + 50] ^= 0x10  # one bit of a memory value
    (tmp_path / "flip.state").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum mismatch"):
        reader.load_state(tmp_path / "flip.state")
    meta_edit = data.replace(f'"tokens":"{reader.read(DOCS).tokens}"'.encode(), b'"tokens":"999"')
    assert meta_edit != data
    (tmp_path / "meta.state").write_bytes(meta_edit)
    with pytest.raises(ValueError, match="truncated or corrupt|checksum mismatch"):
        reader.load_state(tmp_path / "meta.state")


def test_state_loading_never_unpickles(reader, tmp_path, monkeypatch):
    evil = tmp_path / "evil.state"
    torch.save({"layer.0": torch.zeros(1)}, evil)  # a pickle archive
    good = tmp_path / "good.state"
    reader.read(DOCS).save(good)

    def forbidden(*a, **k):
        raise AssertionError("unpickling attempted")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(ValueError, match="cannot read state file"):
        reader.load_state(evil)
    reader.load_state(good)


def test_foreign_and_missing_files(reader, tmp_path):
    plain = tmp_path / "plain.state"
    reader.model.init_state(1).save(plain)  # a bare State, no reading identity
    with pytest.raises(ValueError, match="without reading metadata"):
        reader.load_state(plain)
    with pytest.raises(FileNotFoundError, match="state file not found"):
        reader.load_state(tmp_path / "absent.state")
    with pytest.raises(ValueError, match="reserved"):
        reader.new_state().save(tmp_path / "x.state", {"tokens": "5"})


def test_user_metadata_round_trips(reader, tmp_path):
    reader.read(DOCS).save(tmp_path / "m.state", {"corpus": "my notes"})
    rs, meta = ReadState.load(tmp_path / "m.state")
    assert meta["corpus"] == "my notes" and rs.documents == len(DOCS)


# --- corpus inputs ---------------------------------------------------------------------------

def test_corpus_files_jsonl_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    sub = tmp_path / "folder"
    (sub / "deep").mkdir(parents=True)
    (sub / "b.md").write_text("beta")
    (sub / "deep" / "c.txt").write_text("gamma")
    (sub / ".hidden").write_text("never read")
    (sub / "blob.bin").write_bytes(b"\x00\x01binary")
    (sub / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (sub / "empty.txt").write_text("")
    corpus = Documents([tmp_path / "a.txt", tmp_path / "d.jsonl", sub], field="body")
    assert ["".join(d) for d in corpus] == ["alpha\n", "one", "two", "beta", "gamma"]
    assert {k: len(v) for k, v in corpus.skipped.items()} == {"hidden": 1, "binary": 1, "not UTF-8": 1, "empty": 1}
    assert corpus.bytes_read == corpus.total_bytes
    skipped = Documents([tmp_path / "a.txt", tmp_path / "d.jsonl", sub], field="body", skip_documents=2)
    assert ["".join(d) for d in skipped] == ["two", "beta", "gamma"]
    assert ["".join(d) for d in Documents([sub], glob="*.txt")] == ["gamma"]


def test_large_file_is_read_in_blocks(tmp_path):
    text = "".join(f"line {i} ünï\n" for i in range(3000)) + "x" * 5000  # ends with one long line
    (tmp_path / "big.txt").write_text(text)
    blocks = list(next(iter(Documents([tmp_path / "big.txt"], block_chars=1000))))
    assert "".join(blocks) == text and len(blocks) > 30
    assert all(len(b) <= 2000 for b in blocks)
    assert all(b.endswith("\n") for b in blocks[:-6])  # cut after a newline, except inside the long line


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"text": broken\n', r"d\.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', r"d\.jsonl:2: no field 'text' \(found \['body'\]\); choose the text field with --field"),
    ('{"text": 5}\n', r"d\.jsonl:1: field 'text' holds int, expected a string"),
    ('[1, 2]\n', r"d\.jsonl:1: no field 'text'"),
], ids=["bad-json", "missing-field", "not-a-string", "not-an-object"])
def test_bad_jsonl_names_file_and_line(reader, tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        reader.read_files([tmp_path / "d.jsonl"])


def test_bad_named_inputs(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="blob.bin: the file is binary"):
        list(Documents([tmp_path / "blob.bin"]))
    with pytest.raises(ValueError, match="empty.txt: the file is empty"):
        list(Documents([tmp_path / "empty.txt"]))
    with pytest.raises(FileNotFoundError, match="input not found"):
        Documents([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="no files matching"):
        Documents([tmp_path / "nothing"])


def test_reading_files_equals_reading_their_text(reader, tmp_path):
    for i, d in enumerate(DOCS):
        (tmp_path / f"{i}.txt").write_text(d, encoding="utf-8")
    assert_same_state(reader.read_files([tmp_path]), reader.read(DOCS))


def test_specials_in_text(reader):
    plain = reader.encode("[USER] hi [NOPE]")
    parsed = reader.encode("[USER] hi [NOPE]", specials=True)
    assert plain == list(b"[USER] hi [NOPE]")
    assert parsed == [reader.tokenizer.token_id("[USER]"), *b" hi [NOPE]"]


def test_state_object_api(reader, ckpt):
    rs = reader.read(DOCS)
    assert isinstance(rs.state, State) and rs.state.batch_size == 1
    assert rs.model_id == Reader.load(ckpt).model_id and len(rs.model_id) == 16
    assert rs.vocab_size == 272 and rs.tokenizer_hash == reader.tokenizer_hash
    assert "tokens in 6 documents" in rs.describe()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reading_on_gpu(ckpt, tmp_path):
    """On CUDA: resumed = one go exactly; a state read on the GPU loads and continues on the CPU."""
    gpu = Reader.load(ckpt, device="cuda", piece=16)
    one_go = gpu.read(DOCS)
    gpu.read(DOCS[:2]).save(tmp_path / "a.state")
    resumed = gpu.read(DOCS[2:], gpu.load_state(tmp_path / "a.state"))
    assert_same_state(resumed, one_go)
    one_go.save(tmp_path / "gpu.state")
    cpu = Reader.load(ckpt, piece=16)
    on_cpu = cpu.load_state(tmp_path / "gpu.state")
    for a, b in zip(on_cpu.state.layers, cpu.read(DOCS).state.layers):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
