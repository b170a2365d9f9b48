import json
import subprocess
import sys

import numpy as np
import pytest

from plasticlm.data.corpus import SPLITS, Document, split_of
from plasticlm.data.shards import TokenShard, load_prepared, prepare, read_meta


def test_prepared_shards_hold_every_document_once(prepared, paragraphs, bpe):
    meta = read_meta(prepared)
    seen = {}
    for s in SPLITS:
        shard = TokenShard(prepared, s)
        assert len(shard) == meta["splits"][s]["documents"]
        assert int(shard.lengths.sum()) == meta["splits"][s]["tokens"]
        for i in range(len(shard)):
            text = bpe.decode(shard[i])
            assert text not in seen, "a document in two splits"
            seen[text] = s
    def norm(t):  # duplicates are found on whitespace-normalised text
        return " ".join(t.split())
    distinct = {norm(p) for p in paragraphs}
    assert {norm(t) for t in seen} == distinct and len(seen) == len(distinct)  # nothing lost, nothing twice
    dups = len(paragraphs) - len(distinct)
    assert meta["skipped"].get("duplicate document", {"count": 0})["count"] == dups
    for text, s in seen.items():
        assert split_of(Document("x", text)) == s
    _, tok = load_prepared(prepared)
    assert tok.vocab_size == bpe.vocab_size
    assert meta["dtype"] == "uint16"


def test_pairs_and_graph_records(tmp_path, bpe):
    rows = [{"id": "a", "text": "alpha page text", "cites": ["b"]}, {"id": "b", "text": "beta page"},
            {"en": "good morning to you", "de": "guten Morgen dir"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bpe.save(tmp_path / "t.json")
    meta = prepare(str(tmp_path / "c.jsonl"), tmp_path / "out", tokenizer=str(tmp_path / "t.json"), progress=False,
                   fractions={"train": 1.0})
    shard = TokenShard(tmp_path / "out", "train")
    assert shard.ids == ["a", "b", "c.jsonl:3"] and shard.cites == [["b"], [], []]
    assert bpe.decode(shard[2]) == "good morning to you[SEP]guten Morgen dir"
    assert meta["splits"]["train"]["bytes"] == sum(len(x.encode()) for x in
                                                   ["alpha page text", "beta page", "good morning to you",
                                                    "guten Morgen dir"])


def test_single_file_with_empty_splits_is_explained(tmp_path, bpe):
    (tmp_path / "one.txt").write_text("just one document of text\n\nwith two paragraphs\n")
    bpe.save(tmp_path / "t.json")
    with pytest.raises(ValueError, match="came out empty.*--unit paragraph"):
        prepare(str(tmp_path / "one.txt"), tmp_path / "out", tokenizer=str(tmp_path / "t.json"), progress=False)


def test_prepare_cli_trains_a_tokenizer_and_reports_sizes(tmp_path, paragraphs):
    d = tmp_path / "src"
    d.mkdir()
    for i in range(0, 600, 100):
        (d / f"part{i}.txt").write_text("\n\n".join(paragraphs[i:i + 100]))
    (d / "broken.txt").write_bytes(b"\xff\xfe broken")
    r = subprocess.run([sys.executable, "-m", "plasticlm.cli", "prepare", str(d), str(tmp_path / "out"),
                        "--unit", "paragraph", "--vocab-size", "600", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "holdout" in r.stdout and "invalid UTF-8: 1" in r.stdout
    meta = read_meta(tmp_path / "out")
    assert meta["vocab_size"] == 600
    assert sum(v["documents"] for v in meta["splits"].values()) > 500
    assert np.all(TokenShard(tmp_path / "out", "valid").lengths > 0)


def test_prepared_graph_resolves_duplicates_and_other_splits(tmp_path, bpe):
    from plasticlm.data.linked import LinkedGraph

    pages = [{"id": f"p{i}", "text": f"page number {i} " * 5, "cites": [f"p{(i + 1) % 40}", "copy"]} for i in range(40)]
    pages.append({"id": "copy", "text": pages[0]["text"], "cites": []})  # an exact duplicate of p0
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pages))
    bpe.save(tmp_path / "t.json")
    meta = prepare(str(tmp_path / "g.jsonl"), tmp_path / "out", tokenizer=str(tmp_path / "t.json"), progress=False,
                   fractions={"train": 0.5, "holdout": 0.5})
    assert meta["aliases"] == {"copy": "p0"}
    for split in ("train", "holdout"):
        g = LinkedGraph.from_prepared(tmp_path / "out", split)
        here = set(g.ids)
        assert "copy" not in here and g.n_dangling == 0  # "copy" stands for p0; nothing dangles
        targets = [t for p in pages[:40] if p["id"] in here for t in (f"p{(int(p['id'][1:]) + 1) % 40}", "p0")]
        assert g.skips.counts["citation of a page in another split"] == sum(t not in here for t in targets)
        if "p0" in here:
            p0 = g.ids.index("p0")
            assert all(p0 in c for i, c in enumerate(g.cites) if i != p0)
            assert g.n_self == 1  # p0 cites "copy", i.e. itself
