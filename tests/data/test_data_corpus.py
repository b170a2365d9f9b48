import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from plasticlm.data.corpus import (
    DEFAULT_FRACTIONS,
    SPLITS,
    Document,
    SkipLog,
    check_fractions,
    read_corpus,
    split_of,
)
from plasticlm.data.hub import HubUnreachable, wikitext_articles


def _docs(source, **kw):
    skips = SkipLog()
    return list(read_corpus(source, skips=skips, **kw)), skips


def test_text_jsonl_parquet_and_units(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nline two\n\nsecond paragraph\n")
    docs, _ = _docs(tmp_path / "a.txt")
    assert [d.text for d in docs] == ["first paragraph\nline two\n\nsecond paragraph\n"]
    docs, _ = _docs(tmp_path / "a.txt", unit="paragraph")
    assert [d.text for d in docs] == ["first paragraph\nline two", "second paragraph"]
    docs, _ = _docs(tmp_path / "a.txt", unit="line")
    assert len(docs) == 3 and docs[2].id == "a.txt:4"

    rows = [{"id": "x", "text": "t1", "cites": ["y"]}, {"text": "t2"}, {"en": "hello there", "de": "hallo du"}]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs, skips = _docs(tmp_path / "g.jsonl")
    assert docs[0] == Document("x", "t1", ("y",)) and docs[1].id == "g.jsonl:2"
    assert docs[2].text == "hello there" and docs[2].translation == "hallo du" and skips.total == 0

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", "", "p3"]}), tmp_path / "t.parquet")
    docs, skips = _docs(tmp_path / "t.parquet")
    assert [d.text for d in docs] == ["p1", "p3"] and skips.counts["empty document"] == 1
    with pytest.raises(ValueError, match="t.parquet: no column 'body'"):
        _docs(tmp_path / "t.parquet", text_field="body")


def test_bad_single_files_name_the_file(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt: empty file"):
        _docs(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ok".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: invalid UTF-8 \(byte 3, line 1: invalid continuation"):
        _docs(tmp_path / "latin1.txt")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="blob.bin: binary file"):
        _docs(tmp_path / "blob.bin")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="empty_dir: no documents found"):
        _docs(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="corpus source not found"):
        _docs(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="unknown text unit"):
        _docs(tmp_path / "empty.txt", unit="sentence")


def test_folder_counts_and_logs_every_skip(tmp_path, caplog):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "good.txt").write_text("a good document")
    (d / "sub" / "good2.md").write_text("another one")
    (d / "empty.txt").write_text("")
    (d / "latin1.txt").write_bytes(b"caf\xe9")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02text")
    (d / "image.png").write_bytes(b"\x89PNG")
    (d / "rows.jsonl").write_text('{"text": "row one"}\nnot json\n{"title": "no text"}\n[1, 2]\n')
    with caplog.at_level("WARNING", logger="plasticlm.data"):
        docs, skips = _docs(d)
    assert sorted(x.text for x in docs) == ["a good document", "another one", "row one"]
    assert skips.counts == Counter({"empty file": 1, "invalid UTF-8": 1, "binary file": 1,
                                    "unsupported file type '.png'": 1, "invalid JSON line": 1,
                                    "record without a text field 'text'": 1, "record is not a JSON object": 1})
    assert skips.examples["invalid JSON line"][0].startswith(str(d / "rows.jsonl") + ":2")
    assert skips.examples["invalid UTF-8"] == [f"{d / 'latin1.txt'} (byte 3, line 1: unexpected end of data)"]
    logged = caplog.text
    for name in ("empty.txt", "latin1.txt", "binary.txt", "image.png", "rows.jsonl:2", "rows.jsonl:3"):
        assert name in logged


def test_splits_deterministic_disjoint_documented_fractions():
    docs = [Document(f"d{i}", f"document number {i} with some text") for i in range(20000)]
    first = [split_of(d) for d in docs]
    assert first == [split_of(d) for d in reversed(docs)][::-1]  # order-independent
    assert split_of(Document("other id", "document  number 7 with\nsome text")) == first[7]  # by content
    c = Counter(first)
    assert set(c) == set(SPLITS)
    for s in SPLITS:
        assert abs(c[s] / len(docs) - DEFAULT_FRACTIONS[s]) < 0.01
    fr = {"train": 0.5, "valid": 0.0, "test": 0.0, "holdout": 0.5}
    assert {split_of(d, fr) for d in docs} == {"train", "holdout"}
    with pytest.raises(ValueError, match="sum to 1"):
        check_fractions({"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match="unknown split names"):
        check_fractions({"train": 0.5, "dev": 0.5})


def test_pieces_of_one_group_share_the_split_of_its_name(tmp_path):
    pieces = [Document(f"page{g}#{i}", f"piece {i} of page {g}", group=f"page{g}") for g in range(1000) for i in range(3)]
    for g in range(1000):
        splits = {split_of(d) for d in pieces[3 * g:3 * g + 3]}
        assert splits == {split_of(Document("any id", f"page{g}"))}  # the group's name decides, not the text
    assert len({split_of(d) for d in pieces}) == len(SPLITS)  # groups still spread over every split
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "text": "one piece", "group": "ls(1)"}) + "\n"
                    + json.dumps({"id": "b", "text": "no group"}) + "\n"
                    + json.dumps({"id": "c", "text": "bad group", "group": 7}) + "\n")
    docs, skips = _docs(rows)
    assert [(d.id, d.group) for d in docs] == [("a", "ls(1)"), ("b", None)]
    assert dict(skips.counts) == {"'group' is not a string": 1}
    assert skips.examples["'group' is not a string"][0].startswith(f"{rows}:3")


def test_wikitext_articles_regrouped():
    lines = ["", " = Alpha = \n", "", " Alpha text . \n", " = = Section = = \n", " more \n", " = Beta = \n", " b \n"]
    arts = list(wikitext_articles(lines))
    assert [a.id for a in arts] == ["wikitext:0:Alpha", "wikitext:1:Beta"]
    assert "Section" in arts[0].text and arts[1].text.startswith(" = Beta")


def test_hub_unreachable_is_clear(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnreachable, match="cannot reach the Hugging Face hub for 'wikitext-103'.*local files"):
        list(read_corpus("wikitext-103"))


def test_hub_unreachable_real_loader_through_cli(tmp_path):
    """The real `datasets` loader in offline mode, through the CLI: one clear line, exit 2."""
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "plasticlm.cli", "prepare", "squad", str(tmp_path / "out"),
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "cannot reach the Hugging Face hub for 'squad'" in r.stderr and "local files" in r.stderr
    assert "Traceback" not in r.stderr
