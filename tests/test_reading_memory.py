"""Memory of `plasticlm read` does not grow with the amount read (small version of benchmarks/read_memory.py)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "read_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("read_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and Linux ru_maxrss units")
def test_peak_rss_is_flat_in_tokens_read(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ckpt = bench.make_checkpoint(tmp_path / "ckpt")
    runs = {}
    for n in (15_000, 150_000):
        n_exact = bench.make_corpus(tmp_path / f"c{n}.jsonl", n)
        runs[n] = bench.measure(ckpt, tmp_path / f"c{n}.jsonl", tmp_path / "s.state", piece=1024)
        assert runs[n]["tokens"] == n_exact
    small, large = runs[15_000]["peak_rss_mib"], runs[150_000]["peak_rss_mib"]
    # Keeping the activations of 150k tokens would cost hundreds of MiB (their tokens alone, ~1 MiB,
    # are below RSS noise: tests/test_reading.py checks the pieces and the streaming exactly).
    assert large - small < 16, (small, large)
    assert 50 < small < 2048  # the measurement itself is sane (interpreter + torch)
