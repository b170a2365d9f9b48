"""Checkpoints: atomic, verified, kept k deep, and never unpickled."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from plasticlm.checkpoint import load_model
from plasticlm.trainer import run_state as ck
from plasticlm.trainer.loop import Trainer, train

from .conftest import TINY, assert_same_weights, final_weights, tiny_config

# Dies (SIGKILL) half-way through writing the optimizer file of the step-4 checkpoint.
DIE_IN_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from plasticlm.trainer import run_state as ck
    write = ck.write_tensors
    def dying(path, tensors, meta=None):
        write(path, tensors, meta)
        if path.parent.name == ".tmp-step_00000004" and path.name == "optim.safetensors":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    ck.write_tensors = dying
    from plasticlm.cli import main
    sys.exit(main(["train", "tiny", *sys.argv[1:], "--no-progress"]))
""")


def test_killed_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "steps=6", "checkpoint.every=2", f"out_dir={out}"]
    p = subprocess.run([sys.executable, "-c", DIE_IN_WRITE, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    root = out / "checkpoints"
    assert [c.name for c in ck.list_checkpoints(root)] == ["step_00000002"]
    assert (root / ".tmp-step_00000004").is_dir()  # the half-written one is there, and ignored
    ck.verify(root / "step_00000002")

    cfg = tiny_config(out, "steps=6", "checkpoint.every=2")
    resumed = Trainer(cfg, progress=False)
    assert resumed.step == 2
    resumed.run()
    assert not (root / ".tmp-step_00000004").exists()  # cleaned up by the next save
    train(tiny_config(tmp_path / "ref", "steps=6", "checkpoint.every=2"), progress=False)
    assert_same_weights(final_weights(out), final_weights(tmp_path / "ref"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, "steps=5", "checkpoint.every=1", "checkpoint.keep=2"), progress=False)
    return out


def test_keeps_the_last_k_checkpoints_and_the_model_loads(finished_run):
    names = [c.name for c in ck.list_checkpoints(finished_run / "checkpoints")]
    assert names == ["step_00000004", "step_00000005"]
    model, tok, meta = load_model(finished_run)  # the final model, as before
    ckpt_model, _, _ = load_model(finished_run / "checkpoints" / "step_00000005")
    for (n, a), (_, b) in zip(model.state_dict().items(), ckpt_model.state_dict().items()):
        assert torch.equal(a, b), n


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_file_is_refused_by_name(finished_run, tmp_path):
    d = _copy(finished_run / "checkpoints" / "step_00000005", tmp_path / "checkpoints" / "step_00000005")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or altered: 1000 bytes on disk"):
        ck.verify(d)
    with pytest.raises(ValueError, match="truncated"):
        Trainer(tiny_config(tmp_path, "steps=5"), progress=False)  # resume refuses it
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated or altered"):  # the manifest, before reading
        load_model(d)


def test_altered_bytes_are_refused(finished_run, tmp_path):
    d = _copy(finished_run / "checkpoints" / "step_00000005", tmp_path / "c")
    f = d / "rank0.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"rank0\.safetensors: corrupt"):
        ck.verify(d)


class Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_and_corrupt_safetensors_are_refused(finished_run, tmp_path):
    marker = tmp_path / "code-ran"
    evil = pickle.dumps({"weight": Planted(marker)})
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Planted(control)))
    assert control.exists(), "the payload must be live for this test to mean anything"
    # 1. in place of a checkpoint file, with the manifest rewritten to match, so only the reader can refuse it
    d = _copy(finished_run / "checkpoints" / "step_00000005", tmp_path / "checkpoints" / "step_00000005")
    (d / "optim.safetensors").write_bytes(evil)
    (d / ck.MANIFEST).unlink()
    manifest = {"step": 5, "files": {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                     for p in d.iterdir()}}
    (d / ck.MANIFEST).write_text(json.dumps(manifest))
    ck.verify(d)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Trainer(tiny_config(tmp_path, "steps=5"), progress=False)
    # 2. as init_from weights, both as .safetensors and as a torch file
    for name in ("evil.safetensors", "evil.pt"):
        (tmp_path / name).write_bytes(evil)
        with pytest.raises(ValueError, match="refused"):
            ck.load_weights(tmp_path / name)
    torch.save({"weight": Planted(marker)}, tmp_path / "evil2.pt")
    with pytest.raises(ValueError, match="refused"):
        ck.load_weights(tmp_path / "evil2.pt")
    # 3. a safetensors file with a corrupt header
    good = (finished_run / "model.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(good[:8] + b"{garbage" + good[16:])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        ck.load_weights(tmp_path / "bad.safetensors")
    assert not marker.exists(), "unpickling ran code"
    assert not os.path.exists("code-ran")


def test_init_from_loads_weights_only(finished_run, tmp_path):
    cfg = tiny_config(tmp_path, "steps=3", f"checkpoint.init_from={finished_run}")
    t = Trainer(cfg, progress=False)
    assert t.step == 0
    assert_same_weights({k: v for k, v in t.model.state_dict().items()}, final_weights(finished_run))
