"""torchrun, 2 processes on gloo: a worker killed mid-run, elastic restart, exact resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plasticlm.trainer.metrics import read_metrics

from .conftest import TINY, assert_same_weights, final_weights

WORKER = str(Path(__file__).with_name("elastic_worker.py"))
ARGS = ["tiny", *TINY, "data.kind=parking_bytes", "steps=8", "checkpoint.every=2", "loss.proxy_every=3"]


JOBS: list[subprocess.Popen] = []


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.fixture(autouse=True)
def _no_stray_jobs():
    """A failed test must not leave a torchrun job behind (its workers run in their own sessions)."""
    yield
    while JOBS:
        job = JOBS.pop()
        if job.poll() is None:
            for pid in _children(job.pid) + [job.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            job.wait()


def start(out: Path, max_restarts: int, park_at: int | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if park_at:
        env.update(PARK_FILE=str(out) + ".pid", PARK_AT=str(park_at))
    code = ("import sys; from plasticlm.trainer.distributed import launch; "
            f"sys.exit(launch(2, {max_restarts}, sys.argv[1:]))")
    job = subprocess.Popen([sys.executable, "-c", code, WORKER, *ARGS, *extra, f"out_dir={out}"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    JOBS.append(job)
    return job


def kill_parked_worker(out: Path, job: subprocess.Popen) -> None:
    pid_file = Path(str(out) + ".pid")
    deadline = time.time() + 120
    while not pid_file.exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.time() < deadline, "rank 1 never reached the batch it parks at"
        time.sleep(0.1)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_sigkilled_worker_restarts_from_checkpoint_and_matches_uninterrupted(tmp_path):
    ref = start(tmp_path / "ref", max_restarts=0)
    job = start(tmp_path / "elastic", max_restarts=1, park_at=5)
    kill_parked_worker(tmp_path / "elastic", job)
    out, err = job.communicate(timeout=240)
    assert job.returncode == 0, err[-3000:]
    assert "resumed from" in err and "step_00000004" in err
    ref_out, ref_err = ref.communicate(timeout=240)
    assert ref.returncode == 0, ref_err[-3000:]
    assert_same_weights(final_weights(tmp_path / "elastic"), final_weights(tmp_path / "ref"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "elastic") if "loss" in r]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "ref") if "loss" in r] and len(losses) == 8


def test_without_restarts_the_kill_ends_the_job_with_a_clear_message(tmp_path):
    job = start(tmp_path / "run", max_restarts=0, park_at=3)
    kill_parked_worker(tmp_path / "run", job)
    t0 = time.time()
    _, err = job.communicate(timeout=120)
    assert time.time() - t0 < 30, "the job took too long to notice the dead worker"
    assert job.returncode == 1
    assert "worker rank 1 failed (killed by signal SIGKILL) and no restarts are left (--max-restarts=0)" in err


@pytest.mark.slow
def test_fsdp2_matches_replicated_data_parallel_and_resumes(tmp_path):
    """dist.fsdp=true shards the model with FSDP2; on gloo it reaches the weights of the all-reduce
    path (to float rounding), with evaluations and proxy probes mid-run and a resume."""
    extra = ("log.eval_every=3",)
    for steps in (8, 10):  # the second round resumes from the step-8 checkpoints, with more steps on purpose
        more = (*extra, f"steps={steps}", "checkpoint.allow_changed=[steps]")
        jobs = [start(tmp_path / "ddp", 0, extra=more), start(tmp_path / "fsdp", 0, extra=(*more, "dist.fsdp=true"))]
        for j in jobs:
            _, err = j.communicate(timeout=240)
            assert j.returncode == 0, err[-3000:]
        assert steps == 8 or "resumed from" in err
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, f"FSDP2 and replicated weights differ by up to {worst}"
