"""`plasticlm read` and `plasticlm generate` end to end."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plasticlm import ModelConfig, PlasticLM
from plasticlm.checkpoint import save_model
from plasticlm.cli import main
from plasticlm.reading import Reader, ReadState
from plasticlm.sampling import Sampling
from plasticlm.tokenizer import ByteTokenizer

DOCS = ["The cat sat on the mat.\n" * 5, "Ünïcödé ✓ — 日本語のテキスト 🙂\n", "Paris is the capital of France.\n",
        "short", "Another document about reading and memory.\n" * 2]


def make_ckpt(path, seed=0):
    torch.manual_seed(seed)
    model = PlasticLM(ModelConfig(vocab_size=272, d_model=32, n_layers=2, n_heads=2, init_std=0.3, chunk_size=16))
    save_model(path, model, ByteTokenizer())
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(DOCS[:3]):
        (d / f"doc{i}.txt").write_text(text, encoding="utf-8")
    (d / "more.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in DOCS[3:]), encoding="utf-8")
    return d


def load(ckpt, path) -> ReadState:
    return Reader.load(ckpt).load_state(path)


def same(a: ReadState, b: ReadState) -> bool:
    return (all(torch.equal(x, y) for x, y in zip(a.state.layers, b.state.layers, strict=True))
            and (a.pending, a.tokens, a.documents) == (b.pending, b.tokens, b.documents))


def test_read_in_one_go_equals_resumed_runs(ckpt, corpus, tmp_path, capsys):
    files = [corpus / "doc0.txt", corpus / "doc1.txt", corpus / "doc2.txt", corpus / "more.jsonl"]
    args = ["--piece", "16", "--field", "body", "--no-progress"]
    assert main(["read", str(ckpt), *map(str, files), "--state", str(tmp_path / "one.state"), *args]) == 0
    out = capsys.readouterr().out
    assert "read 5 documents" in out and "5 documents, model" in out
    s = tmp_path / "pieces.state"
    assert main(["read", str(ckpt), str(files[0]), "--state", str(s), *args]) == 0
    assert main(["read", str(ckpt), str(files[1]), "--state", str(s), "--resume-state", str(s), *args]) == 0
    assert main(["read", str(ckpt), *map(str, files[2:]), "--state", str(s), "--resume-state", str(s),
                 "--field", "body", "--no-progress"]) == 0
    one, resumed = load(ckpt, tmp_path / "one.state"), load(ckpt, s)
    assert one.documents == 5 and one.tokens == sum(len(d.encode()) + 1 for d in DOCS)
    assert same(one, resumed)
    # A folder reads its files in sorted order: the same documents, the same state.
    assert main(["read", str(ckpt), str(corpus), "--state", str(tmp_path / "dir.state"), *args]) == 0
    assert same(one, load(ckpt, tmp_path / "dir.state"))


@pytest.mark.parametrize("save_every", ["0", "1"])
def test_failed_read_continues_from_its_last_document(ckpt, tmp_path, capsys, save_every):
    good = "".join(json.dumps({"text": f"document number {i}. " * (i + 1)}) + "\n" for i in range(8))
    broken = good.splitlines(keepends=True)
    broken[5] = "{not json\n"
    (tmp_path / "broken.jsonl").write_text("".join(broken))
    (tmp_path / "good.jsonl").write_text(good)
    out, args = tmp_path / "kb.state", ["--piece", "16", "--no-progress"]
    assert main(["read", str(ckpt), str(tmp_path / "broken.jsonl"), "--state", str(out), "--save-every", save_every,
                 *args]) == 1  # bad data
    err = capsys.readouterr().err
    assert "broken.jsonl:6: not valid JSON" in err and "--skip-documents 5" in err
    assert load(ckpt, out).documents == 5
    assert main(["read", str(ckpt), str(tmp_path / "good.jsonl"), "--state", str(out), "--resume-state", str(out),
                 "--skip-documents", "5", *args]) == 0
    assert main(["read", str(ckpt), str(tmp_path / "good.jsonl"), "--state", str(tmp_path / "one.state"),
                 *args]) == 0
    assert same(load(ckpt, out), load(ckpt, tmp_path / "one.state"))


def test_save_every_survives_a_hard_crash(ckpt, corpus, tmp_path, monkeypatch):
    """A crash that leaves no time to save (here SystemExit in the middle of reading) keeps the periodic save."""
    feed, calls = Reader._feed, []

    def crashing_feed(self, rs, ids):
        calls.append(1)
        if len(calls) == 8:
            raise SystemExit("killed")
        feed(self, rs, ids)

    monkeypatch.setattr(Reader, "_feed", crashing_feed)
    for every in ("0", "100"):
        calls.clear()
        out = tmp_path / f"every{every}.state"
        with pytest.raises(SystemExit):
            main(["read", str(ckpt), str(corpus), "--field", "body", "--state", str(out), "--save-every", every,
                  "--no-progress"])
        assert out.exists() == (every == "100")
    assert 1 <= load(ckpt, tmp_path / "every100.state").documents < 5


def test_read_refusals(ckpt, corpus, tmp_path, capsys):
    s = tmp_path / "kb.state"
    assert main(["read", str(ckpt), str(corpus / "doc0.txt"), "--state", str(s), "--no-progress"]) == 0
    assert main(["read", str(ckpt), str(corpus / "doc1.txt"), "--state", str(s), "--no-progress"]) == 2
    assert "exists: pass --resume-state" in capsys.readouterr().err
    assert main(["read", str(ckpt), str(corpus / "doc1.txt"), "--state", str(s), "--resume-state", str(s),
                 "--piece", "8", "--no-progress"]) == 2
    assert "--piece 8 differs from the resumed state's 4096" in capsys.readouterr().err
    other = make_ckpt(tmp_path / "other", seed=1)
    assert main(["read", str(other), str(corpus / "doc1.txt"), "--state", str(s), "--resume-state", str(s),
                 "--no-progress"]) == 1  # a foreign state is bad data, not bad usage
    assert "the state was read by model" in capsys.readouterr().err
    assert main(["generate", str(other), "--state", str(s), "--prompt", "x"]) == 1
    assert "the state was read by model" in capsys.readouterr().err
    (tmp_path / "cut.state").write_bytes(s.read_bytes()[:-7])
    assert main(["generate", str(ckpt), "--state", str(tmp_path / "cut.state"), "--prompt", "x"]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_read_reports_skipped_files(ckpt, corpus, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(b"\x00\x00")
    assert main(["read", str(ckpt), str(tmp_path), "--state", str(tmp_path / "s.state"), "--no-progress"]) == 0
    assert "skipped 1 binary" in capsys.readouterr().out


def test_help_explains(capsys):
    for cmd, words in (("read", ["--field", "[EOS]", "--resume-state", "constant", "JSONL", "bit for bit"]),
                       ("generate", ["--top-p", "--repetition-penalty", "--stop", "--seed", "--interactive",
                                     "--prompts", "[EOS]"])):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert all(w in text for w in words), [w for w in words if w not in text]


def test_generate_from_a_state_written_by_another_process(ckpt, corpus, tmp_path):
    """`plasticlm read` in one process, `plasticlm generate` in another = read and generate here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    cli = [sys.executable, "-m", "plasticlm.cli"]
    s = tmp_path / "kb.state"
    subprocess.run([*cli, "read", str(ckpt), str(corpus), "--field", "body", "--state", str(s), "--no-progress"],
                   check=True, env=env, capture_output=True)
    gen = subprocess.run([*cli, "generate", str(ckpt), "--state", str(s), "--prompt", "Where is Paris?",
                          "--temperature", "0", "--max-new-tokens", "30", "--ignore-eos"],
                         check=True, env=env, capture_output=True)
    reader = Reader.load(ckpt)
    here = reader.read_files([corpus], field="body")
    expected = reader.generate("Where is Paris?", here, Sampling(temperature=0, max_new_tokens=30, stop_at_eos=False))
    assert gen.stdout.decode("utf-8") == expected.text + "\n"
    assert "[30 tokens in" in gen.stderr.decode()


def test_generate_prompt_file_and_output(ckpt, corpus, tmp_path, capsys):
    s = tmp_path / "kb.state"
    assert main(["read", str(ckpt), str(corpus), "--field", "body", "--state", str(s), "--no-progress"]) == 0
    prompts = ["Where is Paris?", "The cat", "Ünï", "x"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n\n")
    common = ["--state", str(s), "--temperature", "0", "--max-new-tokens", "12", "--no-progress"]
    assert main(["generate", str(ckpt), "--prompts", str(tmp_path / "p.txt"), "--batch-size", "3",
                 "--output", str(tmp_path / "out.jsonl"), *common]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    reader = Reader.load(ckpt)
    rs = reader.load_state(s)
    assert [r["prompt"] for r in rows] == prompts
    assert [r["completion"] for r in rows] == [
        reader.generate(p, rs, Sampling(temperature=0, max_new_tokens=12)).text for p in prompts]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"q": p}) + "\n" for p in prompts[:2]))
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--prompts", str(tmp_path / "p.jsonl"), "--field", "q", *common]) == 0
    assert [json.loads(line)["completion"] for line in capsys.readouterr().out.splitlines()] == [
        r["completion"] for r in rows[:2]]


def test_generate_stop_and_template(ckpt, capsys):
    reader = Reader.load(ckpt)
    full = reader.generate("[USER] hi [AI]", None, Sampling(temperature=0, max_new_tokens=30)).text
    stop = full[8:10]
    assert main(["generate", str(ckpt), "--prompt", "hi", "--template", "[USER] {prompt} [AI]", "--temperature",
                 "0", "--max-new-tokens", "30", "--stop", stop.replace("\n", "\\n")]) == 0
    captured = capsys.readouterr()
    assert captured.out == full[:full.index(stop)] + "\n" and "stopped: stop" in captured.err


def test_interactive_keeps_the_state_between_turns(ckpt, corpus, tmp_path, capsys, monkeypatch):
    s = tmp_path / "kb.state"
    assert main(["read", str(ckpt), str(corpus / "doc2.txt"), "--state", str(s), "--no-progress"]) == 0
    lines = ["Where is Paris?", "/save " + str(tmp_path / "turn1.state"), "And Rome?", "/bogus", "/read",
             f"/read {corpus / 'doc0.txt'}", "/reset", "/save " + str(tmp_path / "reset.state"), "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    capsys.readouterr()
    assert main(["generate", str(ckpt), "--state", str(s), "--interactive", "--temperature", "0",
                 "--max-new-tokens", "10", "--ignore-eos"]) == 0
    captured = capsys.readouterr()
    reader = Reader.load(ckpt)
    greedy = Sampling(temperature=0, max_new_tokens=10, stop_at_eos=False)
    first = reader.generate("Where is Paris?", reader.load_state(s), greedy)
    second = reader.generate("And Rome?", first.state, greedy)  # the second turn sees the first
    assert captured.out == f"> {first.text}\n> > {second.text}\n" + "> " * 6  # one "> " per line read
    assert same(reader.load_state(tmp_path / "turn1.state"), first.state)
    assert same(reader.load_state(tmp_path / "reset.state"), reader.load_state(s))
    assert "unknown command /bogus" in captured.err and "/read needs an argument" in captured.err


def test_reading_guide_python_example_runs(ckpt, tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    for i, text in enumerate(DOCS):
        (tmp_path / "docs" / f"{i}.txt").write_text(text, encoding="utf-8")
    section = (Path(__file__).resolve().parent.parent / "docs" / "reading.md").read_text()
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    code = (code.replace('"runs/tiny"', repr(str(ckpt))).replace('"/usr/share/common-licenses"', repr(str(tmp_path / "docs")))
            .replace("max_new_tokens=100", "max_new_tokens=10"))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/reading.md", "exec"), {})
    assert (tmp_path / "licenses.state").exists()


def test_readme_python_api_example_runs(ckpt, monkeypatch, tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")].replace('"runs/tiny"', repr(str(ckpt)))
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["loss"] > 0 and scope["meta"]["model_id"] and scope["lm"].vocab_size == 272
