"""benchmarks/gpu.py, the one GPU call: its stage order, time boxes and results, checked on CPU."""
import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu():
    spec = importlib.util.spec_from_file_location("gpu_script", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_script"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    del sys.modules["gpu_script"]


def call(gpu, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["gpu.py", *argv])
    return gpu.main()


def test_without_cuda_every_stage_is_skipped_in_order_and_reported(gpu, monkeypatch, tmp_path):
    assert call(gpu, monkeypatch, "--out", str(tmp_path)) == 0
    s = json.loads((tmp_path / "gpu_summary.json").read_text())
    assert [x["name"] for x in s["stages"]] == ["tests", "headline", "memory", "infer", "mqar"]
    assert all(x["status"] in ("skipped: no CUDA", "skipped: dry run") for x in s["stages"])
    assert s["commit"] and s["torch"] and s["date"] and s["command"].startswith("bash benchmarks/gpu.sh")
    assert "untuned" in (tmp_path / "gpu_summary.md").read_text()
    assert tarfile.open(tmp_path / "gpu_results.tar.gz").getnames() == []


def test_stages_run_in_their_boxes_and_results_are_packed_after_each(gpu, monkeypatch, tmp_path):
    """With CUDA stood in: a stage that outruns its box is cut and noted, the next still runs, a
    stage the budget cannot fit is skipped, and what each wrote comes back in the tarball."""
    import plasticlm.provenance

    real = plasticlm.provenance.provenance
    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    monkeypatch.setattr(gpu.subprocess, "run", _fake_nvidia_smi(gpu.subprocess.run))
    monkeypatch.setattr(plasticlm.provenance, "provenance", lambda device, command: real("cpu", command))
    sleeps = {"tests": 0.1, "headline": 60, "memory": 0.1, "infer": 0.1, "mqar": 0.1}

    def command(self, work):
        return [sys.executable, "-c", f"import time, pathlib; pathlib.Path({str(work)!r}, '{self.name}.txt')"
                                      f".write_text('x'); time.sleep({sleeps[self.name]})"]

    monkeypatch.setattr(gpu.Stage, "command", command)
    boxes = {"tests": 60, "headline": 25, "memory": 60, "infer": 60, "mqar": 600}  # process start may take 10 s
    monkeypatch.setattr(gpu, "STAGES", [gpu.Stage(s.name, boxes[s.name], s.what) for s in gpu.STAGES])
    assert call(gpu, monkeypatch, "--out", str(tmp_path), "--budget", "300") == 0
    st = {x["name"]: x["status"] for x in json.loads((tmp_path / "gpu_summary.json").read_text())["stages"]}
    assert st["tests"] == "ok" and st["headline"].startswith("cut at its box of 25 s")
    assert st["memory"] == "ok" and st["infer"] == "ok"
    assert st["mqar"].startswith("ok") or st["mqar"].startswith("skipped: the budget is spent")
    names = tarfile.open(tmp_path / "gpu_results.tar.gz").getnames()
    assert {"tests.txt", "headline.txt", "memory.txt", "tests.log", "headline.log"} <= set(names)


def _fake_nvidia_smi(real):
    def run(cmd, *a, **k):
        if cmd and cmd[0] == "nvidia-smi":
            class P:
                stdout, returncode = "NVIDIA H200, 143771 MiB, 570.00", 0
            return P()
        return real(cmd, *a, **k)
    return run


def test_unknown_stage_is_refused(gpu, monkeypatch, tmp_path, capsys):
    assert call(gpu, monkeypatch, "--out", str(tmp_path), "--only", "tests,nosuch") == 2
    assert "unknown stages ['nosuch']" in capsys.readouterr().err
