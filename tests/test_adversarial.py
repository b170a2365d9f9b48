"""Issue 13, case by case: checkpoints and states handed over by a careless or hostile user.

Every test works on copies of one tiny run and states the outcome exactly: the exit code (2 for
bad usage, 1 for bad data), the file, field or option the one-line message names, and that
nothing was written or deleted. The cases that used to hang or exhaust memory run in a
subprocess under a time and memory limit, so that a regression fails instead of taking the
machine with it. The test names carry the issue's case numbers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from plasticlm import archs
from plasticlm.checkpoint import model_id
from plasticlm.cli import main
from plasticlm.reading import Reader, ReadState
from plasticlm.trainer import run_state as ck

from .trainer.conftest import TINY

TRAIN = ["train", "tiny", *TINY, "steps=3", "checkpoint.every=1", "checkpoint.keep=3", "--no-progress"]
CHECKPOINT_FILES = ["model.safetensors", "tokenizer.json", "optim.safetensors", "optim.json", "trainer.json",
                    "rank0.json", "rank0.safetensors", "manifest.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run: checkpoints at steps 1, 2, 3 and its top-level weights."""
    out = tmp_path_factory.mktemp("adversarial") / "run"
    assert main([*TRAIN, f"out_dir={out}"]) == 0
    return out


@pytest.fixture()
def doc(tmp_path) -> Path:
    (tmp_path / "doc.txt").write_text("The cat sat on the mat. " * 4)
    return tmp_path / "doc.txt"


# -- helpers ---------------------------------------------------------------------------------------

def copy(run: Path, dst: Path, interrupted: bool = False) -> Path:
    """A copy of the run; ``interrupted``: as if killed after its step-2 checkpoint (work left to resume)."""
    shutil.copytree(run, dst, symlinks=True)
    if interrupted:
        shutil.rmtree(dst / "checkpoints" / "step_00000003")
        (dst / "summary.json").unlink()
    return dst


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Kind, size and mtime of everything under ``root`` (links not followed): equal before and
    after means nothing was written or deleted there."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(Path(folder) / name)
            out[os.path.relpath(Path(folder) / name, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def cli(capsys, *args) -> tuple[int, str]:
    """`plasticlm ARGS` in this process: (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(code: int, err: str, want: int, *words: str) -> None:
    """Exit code ``want``, no traceback, and a last stderr line that is the one-line error naming ``words``."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == want, err[-3000:]
    assert "Traceback" not in err and ": error: " in last, err[-3000:]
    for w in words:
        assert w in last, f"{w!r} not in {last!r}"


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def cli_limited(*args, timeout: float = 90) -> subprocess.CompletedProcess:
    """`plasticlm ARGS` in a subprocess with 4 GiB of address space: a hang is a TimeoutExpired, a
    runaway allocation a MemoryError, and either fails the test."""
    return subprocess.run([sys.executable, "-m", "plasticlm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit_memory)


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def rewrite_weights(path: Path, change=None, config: dict | None = None, recompute_id: bool = False) -> None:
    """Rewrite a weights file as a forger would: tensors changed in place by ``change``, the config's
    fields replaced by ``config``, and the model_id recomputed to match when ``recompute_id``."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if change is not None:
        change(tensors)
    cfg = {**json.loads(meta["config"]), **(config or {})}
    meta["config"] = json.dumps(cfg)
    if recompute_id:
        meta["model_id"] = model_id(archs.make_config(meta.get("arch", "plasticlm"), cfg), tensors)
    save_file(tensors, str(path), metadata=meta)


def reseal(directory: Path, files: dict | None = None) -> None:
    """Recompute the manifest's sizes and digests (or replace its file list), as a forger would, so
    that only the loader's own checks stand between the forgery and the model."""
    m = json.loads((directory / "manifest.json").read_text())
    m["files"] = files if files is not None else {
        n: {"bytes": (directory / n).stat().st_size, "sha256": hashlib.sha256((directory / n).read_bytes()).hexdigest()}
        for n in m["files"]}
    (directory / "manifest.json").write_text(json.dumps(m))


def forge_state(good: Path, bad: Path, **fields) -> None:
    """A state file with some fields (or its memories) changed, checksum recomputed to match."""
    rs, _ = ReadState.load(good)
    rs = dataclasses.replace(rs, **fields)
    rs.save(bad)


def commands(ckpt: Path, tmp: Path, doc: Path):
    """(name, argv, what it would write) for generate, read and eval on a checkpoint directory."""
    return [("generate", ["generate", ckpt, "--prompt", "The", "--max-new-tokens", "3", "--save-state",
                          tmp / "g.state"], tmp / "g.state"),
            ("read", ["read", ckpt, doc, "--state", tmp / "r.state", "--no-progress"], tmp / "r.state"),
            ("eval", ["eval", ckpt, "--suite", "perplexity", "--preset", "smoke", "--out", tmp / "eval",
                      "--device", "cpu", "--no-progress", "--no-controls"], tmp / "eval")]


# -- 1. integrity of what generate, read and eval load -------------------------------------------

@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_1_flipped_byte_in_any_checkpoint_file_is_refused_by_every_command(run, tmp_path, doc, capsys, name):
    """Acceptance: generate, read, eval and train (resume) exit 1 naming the file, and write nothing."""
    out = copy(run, tmp_path / "run")
    ckpt = out / "checkpoints" / "step_00000003"
    flip(ckpt / name)
    (out / "summary.json").unlink()  # the resume must read the checkpoint, not find the run done
    before = snapshot(out)
    for cmd, argv, written in commands(ckpt, tmp_path, doc):
        refused(*cli(capsys, *argv), 1, name)
        assert not written.exists(), cmd
    refused(*cli(capsys, *TRAIN, f"out_dir={out}"), 1, name)
    assert snapshot(out) == before


def test_1_init_from_verifies_what_it_starts_from(run, tmp_path, capsys):
    src = copy(run, tmp_path / "src")
    flip(src / "checkpoints" / "step_00000003" / "optim.json")
    refused(*cli(capsys, *TRAIN, f"out_dir={tmp_path / 'new'}", f"checkpoint.init_from={src}"), 1, "optim.json",
            "corrupt")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "manifest.json"])
def test_1_flipped_byte_in_the_top_level_weights_is_refused(run, tmp_path, doc, capsys, name):
    out = copy(run, tmp_path / "run")
    flip(out / name)
    before = snapshot(out)
    for cmd, argv, written in commands(out, tmp_path, doc):
        refused(*cli(capsys, *argv), 1, name)
        assert not written.exists(), cmd
    assert snapshot(out) == before


def test_1_top_level_weights_have_a_manifest_and_need_it(run, tmp_path, capsys):
    m = json.loads((run / "manifest.json").read_text())
    assert m["weights"] == ["model.safetensors"] and set(m["files"]) == {"model.safetensors", "tokenizer.json"}
    for n, info in m["files"].items():
        assert info == {"bytes": (run / n).stat().st_size, "sha256": hashlib.sha256((run / n).read_bytes()).hexdigest()}
    out = copy(run, tmp_path / "run")
    (out / "manifest.json").unlink()
    refused(*cli(capsys, "generate", out, "--prompt", "x"), 1, "no manifest.json",
            str(out / "checkpoints" / "step_00000003"))


def test_1_nan_weights_are_refused_naming_the_tensor(run, tmp_path, capsys):
    """Before: `generate --temperature 0` printed NUL bytes and `eval` reported ppl nan, both exit 0."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    rewrite_weights(ckpt / "model.safetensors", lambda t: t["embed.weight"].view(-1)[5].fill_(float("nan")))
    reseal(ckpt)
    refused(*cli(capsys, "generate", ckpt, "--prompt", "x", "--temperature", "0"), 1, "model.safetensors",
            "tensor embed.weight holds non-finite values")
    refused(*cli(capsys, "eval", ckpt, "--suite", "perplexity", "--preset", "smoke", "--out", tmp_path / "e",
                 "--device", "cpu", "--no-progress"), 1, "embed.weight")
    assert not (tmp_path / "e").exists()


def test_1_dtype_changed_in_the_header_is_refused(run, tmp_path, capsys):
    """F32 -> I32 in the header, manifest recomputed: the same bytes, read as integers."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"

    def as_int(t):
        t["norm.weight"] = t["norm.weight"].view(torch.int32)

    rewrite_weights(ckpt / "model.safetensors", as_int)
    reseal(ckpt)
    refused(*cli(capsys, "generate", ckpt, "--prompt", "x", "--temperature", "0"), 1,
            "tensor norm.weight has dtype torch.int32, the model's is torch.float32")


def test_1_model_id_is_computed_from_the_weights_loaded(run, tmp_path, doc, capsys):
    """Before, model_id came from the metadata, so a tampered model accepted the original's states."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    state = tmp_path / "orig.state"
    assert main(["read", str(ckpt), str(doc), "--state", str(state), "--no-progress"]) == 0
    capsys.readouterr()

    def nudge(t):
        t["norm.weight"][0] += 0.5

    rewrite_weights(ckpt / "model.safetensors", nudge)  # metadata (and its model_id) left as they were
    reseal(ckpt)
    refused(*cli(capsys, "generate", ckpt, "--state", state, "--prompt", "x"), 1, "model.safetensors",
            "the metadata says model_id", "altered after it was written")
    rewrite_weights(ckpt / "model.safetensors", recompute_id=True)  # a consistent forgery: another model
    reseal(ckpt)
    refused(*cli(capsys, "generate", ckpt, "--state", state, "--prompt", "x"), 1, "orig.state",
            "the state was read by model")


# -- 2. a manifest that lists nothing ------------------------------------------------------------

def test_2_manifest_listing_no_files_is_refused(run, tmp_path, capsys):
    """Before: resume trained on NaN weights, exit 0, and wrote them to the top level and a new checkpoint."""
    out = copy(run, tmp_path / "run", interrupted=True)
    ckpt = out / "checkpoints" / "step_00000002"
    rewrite_weights(ckpt / "model.safetensors", lambda t: t["norm.weight"].fill_(float("nan")))
    (ckpt / "manifest.json").write_text(json.dumps({"step": 2, "files": {}}))
    before = snapshot(out)
    refused(*cli(capsys, *TRAIN, f"out_dir={out}"), 1, "manifest.json does not list model.safetensors")
    refused(*cli(capsys, "generate", ckpt, "--prompt", "x"), 1, "manifest.json does not list")
    assert snapshot(out) == before
    reseal(out, files={})
    refused(*cli(capsys, "generate", out, "--prompt", "x"), 1, "manifest.json does not list tokenizer.json")


# -- 3. symlinks and strays among the checkpoints ------------------------------------------------

def test_3_symlinked_checkpoint_is_never_resumed_and_rotation_keeps_real_ones(run, tmp_path, capsys):
    """Before: step_00000099 -> another run's step was resumed from, and rotation deleted the real ones."""
    other = copy(run, tmp_path / "other")
    out = copy(run, tmp_path / "run", interrupted=True)
    root = out / "checkpoints"
    (root / "step_00000099").symlink_to(other / "checkpoints" / "step_00000003", target_is_directory=True)
    (root / "step_00000050").mkdir()  # not a complete checkpoint: no manifest
    before_other = snapshot(other)
    code, err = cli(capsys, *TRAIN, f"out_dir={out}", "checkpoint.keep=2")
    assert code == 0, err[-3000:]
    assert f"resumed from {root / 'step_00000002'}" in (out / "metrics.jsonl").read_text() + err
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000003", "step_00000050",
                                                      "step_00000099"]
    assert (root / "step_00000099").is_symlink() and snapshot(other) == before_other
    assert [c.name for c in ck.list_checkpoints(root)] == ["step_00000002", "step_00000003"]


def test_3_rotation_never_deletes_a_checkpoint_newer_than_the_one_written(run, tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 5):
        shutil.copytree(run / "checkpoints" / "step_00000003", root / f"step_{step:08d}")
    staged = ck.staging_dir(root, 4)
    (staged / "trainer.json").write_text("{}")
    ck.commit(root, 4, keep=2)
    assert [c.name for c in ck.list_checkpoints(root)] == ["step_00000003", "step_00000004", "step_00000005"]


# -- 4. one-line messages instead of tracebacks --------------------------------------------------

def test_4_changed_model_size_on_resume_names_the_field(run, tmp_path, capsys):
    """Before: a traceback, 'size mismatch for norm.weight'."""
    out = copy(run, tmp_path / "run", interrupted=True)
    before = snapshot(out)
    refused(*cli(capsys, *TRAIN, f"out_dir={out}", "model.d_model=64"), 2, "model.d_model 32 -> 64",
            "another out_dir", "checkpoint.allow_changed=[model.d_model]")
    refused(*cli(capsys, *TRAIN, f"out_dir={out}", "model.d_model=64", "checkpoint.allow_changed=[model.d_model]"),
            1, "model.safetensors: tensor", "has shape")
    assert snapshot(out) == before


def test_4_tokenizer_that_is_a_folder(run, tmp_path, capsys):
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").mkdir()
    refused(*cli(capsys, "generate", ckpt, "--prompt", "x"), 1, "tokenizer.json is a folder, not a regular file")


def test_4_unknown_device(run, capsys):
    refused(*cli(capsys, "generate", run, "--prompt", "x", "--device", "bogus"), 2, "unknown device 'bogus'")


@pytest.mark.parametrize("temperature", ["0", "0.8"])
def test_4_non_finite_logits_stop_generation_with_a_message(run, tmp_path, capsys, temperature):
    """Finite weights whose logits are NaN (a huge final norm): before, a traceback from sampling
    (or, greedy, arbitrary tokens and exit 0)."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    rewrite_weights(ckpt / "model.safetensors", lambda t: t["norm.weight"].fill_(3e38), recompute_id=True)
    reseal(ckpt)
    refused(*cli(capsys, "generate", ckpt, "--prompt", "The", "--temperature", temperature, "--save-state",
                 tmp_path / "s.state"), 1, "logits are not finite")
    assert not (tmp_path / "s.state").exists()


def test_4_state_paths_that_cannot_be_written_fail_before_reading(run, tmp_path, doc, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("read the corpus before finding that the state cannot be written")

    monkeypatch.setattr(Reader, "read", never)
    (tmp_path / "sdir").mkdir()
    cases = [(doc / "x.state", "doc.txt is a regular file, not a folder"),
             (tmp_path / "sdir", "it is a folder"),
             (tmp_path / "nowhere" / "x.state", "does not exist")]
    if Path("/proc").is_dir():
        cases.append((Path("/proc/x.state"), "cannot write /proc/x.state"))
    for path, words in cases:
        before = snapshot(tmp_path)
        refused(*cli(capsys, "read", run, doc, "--state", path, "--overwrite", "--no-progress"), 2, str(path), words)
        assert snapshot(tmp_path) == before, path  # no sdir.tmp, no created folder


def test_4_forged_state_with_piece_zero(run, tmp_path, doc, capsys):
    """Before: ZeroDivisionError in read, a 'range() arg 3' message in generate."""
    good, bad = tmp_path / "good.state", tmp_path / "bad.state"
    assert main(["read", str(run), str(doc), "--state", str(good), "--no-progress"]) == 0
    forge_state(good, bad, piece=0)
    refused(*cli(capsys, "read", run, doc, "--resume-state", bad, "--state", tmp_path / "out.state",
                 "--no-progress"), 1, "bad.state", "'piece' must be >= 1")
    refused(*cli(capsys, "generate", run, "--state", bad, "--prompt", "x"), 1, "'piece' must be >= 1")
    assert not (tmp_path / "out.state").exists()


def test_4_interactive_save_to_a_folder_reports_and_keeps_going(run, tmp_path, capsys, monkeypatch):
    """Before: IsADirectoryError ended the session and lost its state."""
    (tmp_path / "sdir").mkdir()
    lines = ["Hello", f"/save {tmp_path / 'sdir'}", f"/save {tmp_path / 'turn.state'}", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, err = cli(capsys, "generate", run, "--interactive", "--temperature", "0", "--max-new-tokens", "4",
                    "--save-state", tmp_path / "final.state")
    assert code == 0, err
    assert f"error: cannot write {tmp_path / 'sdir'}: it is a folder" in err
    reader = Reader.load(run)
    assert reader.load_state(tmp_path / "turn.state").tokens == reader.load_state(tmp_path / "final.state").tokens > 0
    assert list((tmp_path / "sdir").iterdir()) == []


# -- 5. what used to hang or fill memory ---------------------------------------------------------

def test_5_fifo_named_model_safetensors_does_not_hang(run, tmp_path):
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")
    p = cli_limited("generate", ckpt, "--prompt", "x")
    refused(p.returncode, p.stderr, 1, "model.safetensors is a FIFO, not a regular file")


def test_5_absurd_layer_count_is_refused_before_building(run, tmp_path):
    """Before: still building the model after 60 s."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    rewrite_weights(ckpt / "model.safetensors", config={"n_layers": 1000000000})
    reseal(ckpt)
    p = cli_limited("generate", ckpt, "--prompt", "x", timeout=60)
    refused(p.returncode, p.stderr, 1, "model.safetensors", "n_layers=1,000,000,000 blocks")


def test_5_tokenizer_linked_to_dev_zero_is_not_read(run, tmp_path):
    """Before: memory exhausted."""
    ckpt = copy(run, tmp_path / "run") / "checkpoints" / "step_00000003"
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").symlink_to("/dev/zero")
    p = cli_limited("generate", ckpt, "--prompt", "x")
    refused(p.returncode, p.stderr, 1, "tokenizer.json is a symlink to /dev/zero, outside")
    p = cli_limited("eval", run, "--tokenizer", "/dev/zero", "--suite", "perplexity", "--preset", "smoke",
                    "--out", tmp_path / "e", "--device", "cpu")
    refused(p.returncode, p.stderr, 1, "/dev/zero is a character device, not a regular file")
    assert not (tmp_path / "e").exists()


# -- 6. no silent acceptance ---------------------------------------------------------------------

def test_6_out_of_range_options_are_refused_by_name(run, tmp_path, doc, capsys):
    """Before: `read --piece 0` quietly became 4096; sampling errors named a dataclass field."""
    for piece in ("0", "-3"):
        refused(*cli(capsys, "read", run, doc, "--state", tmp_path / "s.state", "--piece", piece), 2,
                f"--piece must be >= 1, got {piece}")
    assert not (tmp_path / "s.state").exists()
    refused(*cli(capsys, "generate", run, "--prompt", "x", "--top-p", "2"), 2, "--top-p must be a number in (0, 1]")
    refused(*cli(capsys, "generate", run, "--prompt", "x", "--max-new-tokens", "0"), 2, "--max-new-tokens must be")


def test_6_hidden_files_are_counted_as_skipped_and_help_says_so(run, tmp_path, capsys):
    folder = tmp_path / "notes"
    (folder / ".git").mkdir(parents=True)
    (folder / "a.txt").write_text("visible")
    (folder / ".draft.txt").write_text("hidden")
    (folder / ".git" / "config").write_text("hidden too")
    os.mkfifo(folder / "pipe")
    assert main(["read", str(run), str(folder), "--state", str(tmp_path / "s.state"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "read 1 documents" in out and "skipped 2 hidden" in out and "skipped 1 not regular files" in out
    with pytest.raises(SystemExit):
        main(["read", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "hidden files (a name or folder starting with '.'), FIFOs and devices" in help_text
    assert "are skipped and counted in the summary" in help_text


@pytest.mark.parametrize("fields,words", [({"tokens": -1}, "'tokens' must be >= 0"),
                                          ({"documents": -3}, "'documents' must be >= 0"),
                                          ({"piece": -5}, "'piece' must be >= 1"),
                                          ({"pending": list(range(40))}, "40 pending tokens"),
                                          ({"nan": True}, "holds non-finite values")])
def test_6_forged_state_fields_are_range_checked(run, tmp_path, doc, capsys, fields, words):
    """Re-checksummed forgeries: before, negative counts, piece=-5 and NaN memories were all accepted."""
    good, bad = tmp_path / "good.state", tmp_path / "bad.state"
    assert main(["read", str(run), str(doc), "--state", str(good), "--piece", "32", "--no-progress"]) == 0
    if fields.pop("nan", False):
        rs, _ = ReadState.load(good)
        fields = {"state": rs.state.map(lambda t: t * float("nan"))}
    forge_state(good, bad, **fields)
    with pytest.raises(ValueError, match=words):
        ReadState.load(bad)
    refused(*cli(capsys, "generate", run, "--state", bad, "--prompt", "x"), 1, "bad.state", words)


def test_6_changed_learning_rate_or_seed_on_resume_is_refused_by_name(run, tmp_path, capsys):
    out = copy(run, tmp_path / "run", interrupted=True)
    before = snapshot(out)
    refused(*cli(capsys, *TRAIN, f"out_dir={out}", "optim.lr=1e-3"), 2, "optim.lr 0.003 -> 0.001",
            "checkpoint.allow_changed=[optim.lr]")
    refused(*cli(capsys, *TRAIN, f"out_dir={out}", "seed=1", "optim.beta2=0.9"), 2, "optim.beta2 0.95 -> 0.9",
            "seed 0 -> 1")
    assert snapshot(out) == before
    code, err = cli(capsys, *TRAIN, f"out_dir={out}", "optim.lr=1e-3", "checkpoint.allow_changed=[optim.lr]")
    assert code == 0, err[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_6_state_is_never_written_over_a_device_or_fifo(run, tmp_path, doc, capsys):
    """Before: `read --state /dev/full --overwrite` as root replaced the device node with a state file."""
    targets = [tmp_path / "fifo"]
    os.mkfifo(targets[0])
    try:
        os.mknod(tmp_path / "full", stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
        targets.append(tmp_path / "full")
    except PermissionError:
        pass  # only root makes device nodes; the FIFO stands for them
    for target in targets:
        kind = stat.S_IFMT(os.lstat(target).st_mode)
        refused(*cli(capsys, "read", run, doc, "--state", target, "--overwrite", "--no-progress"), 2, str(target),
                "only a regular file is ever replaced")
        with pytest.raises(ValueError, match="only a regular file is ever replaced"):
            Reader.load(run).new_state().save(target)
        assert stat.S_IFMT(os.lstat(target).st_mode) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["doc.txt", *(t.name for t in targets)])


# -- the loading path itself ---------------------------------------------------------------------

def test_weights_may_be_split_over_files_the_manifest_lists(run, tmp_path):
    """The manifest's ``weights`` list is what a checkpoint's tensors come from, so a model may be
    sharded; a tensor in two files, or a listed file missing from ``files``, is refused."""
    from plasticlm.checkpoint import load_model, read_checkpoint
    from plasticlm.files import write_manifest

    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(run / "tokenizer.json", d)
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[::2]}, str(d / "a.safetensors"), metadata=meta)
    save_file({k: tensors[k] for k in names[1::2]}, str(d / "b.safetensors"))
    write_manifest(d, ["a.safetensors", "b.safetensors", "tokenizer.json"], weights=["a.safetensors", "b.safetensors"])
    model, _, got = load_model(d)
    assert got["model_id"] == read_checkpoint(run).model_id
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    save_file({names[0]: tensors[names[0]]}, str(d / "b.safetensors"))
    write_manifest(d, ["a.safetensors", "b.safetensors", "tokenizer.json"], weights=["a.safetensors", "b.safetensors"])
    with pytest.raises(ValueError, match=f"b.safetensors: holds tensors that an earlier weights file holds too: "
                                         f"\\['{names[0]}'\\]"):
        load_model(d)
    write_manifest(d, ["a.safetensors", "tokenizer.json"], weights=["a.safetensors", "b.safetensors"])
    with pytest.raises(ValueError, match="manifest.json does not list b.safetensors"):
        load_model(d)
