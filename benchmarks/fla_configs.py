"""Pin every autotuned fla kernel to one launch config, so that a fresh GPU machine does not spend
minutes autotuning on first calls (on one lent GPU a first small chunk_gla forward + backward did
not finish in 250 s).

fla's own cache (``FLA_CACHE_MODE=default`` with ``FLA_CONFIG_DIR``) covers only the kernels
decorated with its ``fla_cache_autotune``; chunk_gla also launches kernels under plain
``triton.autotune`` (``fla.ops.common.chunk_h``, ``chunk_o``), which would still tune. So
:func:`pin` keeps, in every autotuner of the modules chunk_gla and chunk_simple_gla use, the one
config of its own list closest to num_warps=4, num_stages=2: a middle point, not the tuned
optimum. Timings measured so are untuned, and the GPU script says so beside them.

``benchmarks/gpu.sh`` puts a ``sitecustomize.py`` that calls :func:`pin` on the path of every
Python process it starts.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

PACKAGES = ("fla.ops.gla", "fla.ops.simple_gla", "fla.ops.common", "fla.ops.utils")


def _autotuner(obj, cls):
    """The autotuner inside a kernel's decorators (triton.heuristics wraps it), or None."""
    for _ in range(4):
        if isinstance(obj, cls):
            return obj
        obj = getattr(obj, "fn", None)
    return None


def _pick(configs):
    return min(configs, key=lambda c: (abs(c.num_warps - 4), abs(c.num_stages - 2)))


def pin(packages=PACKAGES) -> dict[str, dict]:
    """Pin the autotuners of ``packages``; returns {kernel: the config kept}."""
    from triton.runtime.autotuner import Autotuner

    pinned = {}
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        for name in [pkg_name] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]:
            if ".backends." in name:  # other hardware (Ascend, TileLang): not what runs on CUDA
                continue
            try:
                module = importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - an optional backend's module may not import
                print(f"fla_configs: skipped {name}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            for value in vars(module).values():
                tuner = _autotuner(value, Autotuner)
                if tuner is not None and len(tuner.configs) > 1:
                    c = _pick(tuner.configs)
                    tuner.configs = [c]
                    pinned[getattr(tuner.fn, "__name__", repr(tuner.fn))] = {
                        **c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
    return pinned


if __name__ == "__main__":
    import json

    print(json.dumps(pin(), indent=1))
