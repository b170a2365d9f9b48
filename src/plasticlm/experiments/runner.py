"""Running an experiment: its plan of runs, one results.json that grows run by run, tables and plots.

``run_experiment(name)`` builds the experiment's config (the full form, or ``quick`` for CI),
asks it for its plan (a list of :class:`Run`, each a point of the grid with a stable id), and
executes every run that ``OUT/results.json`` does not hold yet: one after the other, or ``jobs``
at a time in worker processes (one torch thread each on CPU). After each run the JSON is
rewritten (atomically) with the run's record, and ``results.md`` and the PNG plots are redrawn,
so a crash keeps every finished run and the same command resumes where it stopped. A results
file made with another config is never mixed with: the command refuses and says so.

Scratch files of runs (trainer checkpoints, metrics) go under ``OUT/work/`` (not committed). An
unfinished run starts over, unless its experiment sets ``RESUMES_RUNS`` (its runs resume from
their trainer checkpoints). A run holds a lock on its folder while it executes, so a second
launch never resumes a folder that a process of the first (say, a worker whose launcher was
killed outright) is still writing; on Linux such workers are also ended by the kernel. A SIGTERM
to the launcher stops its workers, each after its trainer has saved a checkpoint.

``adopt`` takes finished runs over from other results folders of the same experiment: runs this
plan holds, from folders whose config differs from this one only in the fields that choose
which runs are planned (the experiment's ``PLAN_FIELDS``, e.g. mqar's models and learning
rates). Each adopted record keeps its own commit and date and names the folder it came from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..eval.results import jsonable
from ..files import atomic_write, locked
from ..provenance import provenance
from ..settings import apply_overrides, from_dict

RESULTS_ROOT = Path("experiments/results")


@dataclass
class Run:
    """One point of an experiment's grid."""

    id: str
    """Stable and unique within the experiment (e.g. 'gated_average/d128/lr0.003/seed0')."""
    params: dict[str, Any]
    needs: list[str] = dataclasses.field(default_factory=list)
    """Runs that must finish first (their artifacts, under OUT/work/shared, are this one's inputs)."""


def experiment_module(name: str):
    from . import EXPERIMENTS

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    import importlib

    return importlib.import_module(EXPERIMENTS[name])


def make_config(name: str, quick: bool = False, overrides: list[str] | None = None):
    """The experiment's typed config: its defaults (the full form) or ``Config.quick()``, then
    ``field=value`` overrides (dotted for nested fields)."""
    mod = experiment_module(name)
    base = mod.Config.quick() if quick else mod.Config()
    data = apply_overrides(dataclasses.asdict(base), list(overrides or []), example="max_steps=100")
    return from_dict(mod.Config, data, name)


def mean_sd(vals: list[float], signed: bool = False) -> str:
    """'mean ± sd' over seeds (the sample standard deviation; the mean alone for one value)."""
    mean = sum(vals) / len(vals)
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if len(vals) < 2:
        return text
    return f"{text} ± {math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)):.3f}"


def prepare_byte_documents(docs: list[tuple[str, ...]], out: Path, fractions: dict[str, float]) -> None:
    """(id, text) or (id, text, group) documents written to ``out``-src as JSONL, byte-tokenized and
    split into ``out`` by ``plasticlm prepare``: the corpora the experiments build for themselves.
    Documents of one group (pieces of one page) land in one split."""
    from ..data.shards import prepare
    from ..tokenizer import ByteTokenizer

    src = out.parent / (out.name + "-src")
    src.mkdir(parents=True, exist_ok=True)
    atomic_write(src / "documents.jsonl", lambda tmp: Path(tmp).write_text(
        "".join(json.dumps({"id": d[0], "text": d[1], **({"group": d[2]} if len(d) > 2 else {})}) + "\n"
                for d in docs)))
    ByteTokenizer().save(src / "tokenizer.json")
    prepare(str(src / "documents.jsonl"), out, tokenizer=str(src / "tokenizer.json"), fractions=dict(fractions),
            progress=False)


def with_defaults(old: dict, default) -> dict:
    """``old`` (a results file's config) with the fields it lacks, in it or in its nested configs,
    taken from the config ``default``: a field added to a config later defaults to what the code did
    before it, so older runs keep resuming. Dict-valued settings are values, compared whole."""
    out = dict(old)
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if f.name not in out:
            out[f.name] = jsonable(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        elif dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
            out[f.name] = with_defaults(out[f.name], value)
    return out


def _differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings where configs ``a`` and ``b`` differ, nested dicts walked."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differing(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(prefix + k)
    return out


def adopted_runs(name: str, mod, cfg_dict: dict, source: str | os.PathLike, wanted: set[str]) -> dict[str, dict]:
    """The records of ``source``'s results.json that this plan wants (``wanted`` ids), refused with
    the settings named when ``source`` was made with settings that change what a run does."""
    path = Path(source) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"--adopt {source}: no results.json there")
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--adopt {path}: not valid JSON ({e})") from None
    if old.get("experiment") != name:
        raise ValueError(f"--adopt {path}: its runs are of experiment {old.get('experiment')!r}, not {name!r}")
    free = set(getattr(mod, "PLAN_FIELDS", ()))
    changed = [k for k in _differing(with_defaults(old.get("config", {}), mod.Config()), cfg_dict) if k not in free]
    if changed:
        raise ValueError(f"--adopt {path}: its runs were made with other settings ({', '.join(changed)}); only "
                         f"{sorted(free) or 'no fields'} may differ for {name}'s runs to be the same runs")
    return {k: {**v, "adopted_from": str(source)} for k, v in old.get("runs", {}).items() if k in wanted}


def _execute(name: str, cfg_dict: dict, run: dict, device: str, work: str, threads: int, commit: str) -> dict:
    """One run, in this process or a worker's (everything it takes is plain data). ``commit`` is
    the source tree's at launch: the code a worker imports is the code of that moment."""
    import torch

    from ..trainer.loop import Stopped

    if threads:
        torch.set_num_threads(threads)
    mod = experiment_module(name)
    cfg = from_dict(mod.Config, cfg_dict, name)
    r = Run(run["id"], run["params"], run.get("needs", []))
    d = Path(work) / r.id.replace("/", "_")
    with contextlib.ExitStack() as stack:
        # A worker outlives a launcher killed with SIGKILL and goes on writing its run's folder;
        # a second launch must not resume that folder under it.
        lock = d.with_name(d.name + ".lock")
        try:
            stack.enter_context(locked(lock, wait=False))
        except BlockingIOError:
            raise RuntimeError(f"experiment {name}: run {r.id} is being run by another process (it holds {lock}): "
                               "a worker left from an earlier launch? Stop it (its parent is gone: look for "
                               "orphaned python processes) before resuming") from None
        if d.exists() and not getattr(mod, "RESUMES_RUNS", False):  # an unfinished attempt: start over
            shutil.rmtree(d)
        t0 = time.perf_counter()
        try:
            record = mod.execute(cfg, r, device, d)
        except Stopped:
            if _POOL_WORKER:
                # Pool.terminate() sent the SIGTERM and waits for this worker to end; the trainer
                # took the signal to save its checkpoint and would leave the worker waiting for
                # tasks, so end it as the signal would have (the lock is released with it).
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            raise
        shutil.rmtree(d, ignore_errors=True)
    meta = provenance(device)
    return {"id": r.id, **record, "params": r.params, "seconds": round(time.perf_counter() - t0, 1),
            "date": meta["date"], "commit": commit, "device": meta["device"]}


_POOL_WORKER = False
"""Whether this process is one of the runner's pool workers (set by :func:`_init_worker`)."""


def _init_worker(parent: int) -> None:
    """The pool's initializer."""
    global _POOL_WORKER
    _POOL_WORKER = True
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    """In a pool worker, on Linux: ask the kernel for SIGTERM when the launcher dies, however it
    dies (SIGKILL included), so no orphan goes on training into a folder a new launch resumes."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request
        os.kill(os.getpid(), signal.SIGTERM)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _write(out: Path, doc: dict, mod, cfg) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", lambda p: Path(p).write_text(json.dumps(jsonable(doc), indent=1) + "\n"))
    records = list(doc["runs"].values())
    try:
        body = mod.report(cfg, records, out)
    except ImportError as e:  # plots need matplotlib; tables are written anyway
        body = mod.report(cfg, records, None) + f"\n(plots skipped: {e})\n"
    p = doc["provenance"]
    machine = records[-1]["device"] if records else p["device"]  # as the runs saw it (their thread count)
    head = [f"# Experiment `{doc['experiment']}`", "", doc["question"], "",
            f"Command: `{p['command']}`  ", f"Machine: {machine}; torch {p['torch']}; commit {p['commit']}; "
            f"last run {p['date']}.  ", f"Runs: {len(records)} of {doc['planned_runs']} done.", ""]
    atomic_write(out / "results.md", lambda f: Path(f).write_text("\n".join(head) + "\n" + body))


def run_experiment(name: str, *, device: str = "cpu", quick: bool = False, out: str | os.PathLike | None = None,
                   jobs: int = 1, overrides: list[str] | None = None, progress: bool = True,
                   command: list[str] | None = None, adopt: list[str | os.PathLike] | None = None) -> Path:
    """Run (or resume) experiment ``name``, after taking over the runs of the ``adopt`` folders
    (module docstring); returns the results directory."""
    mod = experiment_module(name)
    cfg = make_config(name, quick, overrides)
    out = Path(out) if out else RESULTS_ROOT / (f"{name}-quick" if quick else name)
    runs = mod.plan(cfg)
    ids = [r.id for r in runs]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"experiment {name}: run ids are not unique")
    for i, r in enumerate(runs):
        if not set(r.needs) <= set(ids[:i]):
            raise RuntimeError(f"experiment {name}: run {r.id} needs runs planned after it: {r.needs}")
    cfg_dict = jsonable(dataclasses.asdict(cfg))
    path = out / "results.json"
    doc = {"experiment": name, "question": mod.QUESTION, "config": cfg_dict, "runs": {}}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); move it away to start over") from None
        old_cfg = with_defaults(old.get("config", {}), mod.Config())
        if old_cfg != cfg_dict:
            changed = sorted(k for k in set(cfg_dict) | set(old_cfg) if cfg_dict.get(k) != old_cfg.get(k))
            raise ValueError(f"{path} holds runs made with another config (fields {changed} differ): resume with "
                             f"the same settings, or give another --out")
        doc["runs"] = {k: v for k, v in old.get("runs", {}).items() if k in set(ids)}
    for source in adopt or []:
        doc["runs"].update(adopted_runs(name, mod, cfg_dict, source, set(ids) - set(doc["runs"])))
    import torch

    doc["provenance"] = provenance(device, command)
    commit = doc["provenance"]["commit"]
    doc["planned_runs"] = len(runs)
    todo = [r for r in runs if r.id not in doc["runs"]]
    work = out / "work"
    threads = 1 if torch.device(device).type == "cpu" else 0
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc=f"experiment {name}", unit="run",
               disable=not progress, dynamic_ncols=True)

    def done(record: dict) -> None:
        doc["runs"][record["id"]] = record
        _write(out, doc, mod, cfg)
        bar.set_postfix_str(f"{record['id']}: {mod.headline(record)}")
        bar.update()

    _write(out, doc, mod, cfg)
    try:
        if jobs <= 1:
            for r in todo:
                done(_execute(name, cfg_dict, dataclasses.asdict(r), device, str(work), threads, commit))
        else:
            # A pool whose workers die with the run: the context manager terminates them on any
            # exception, SIGTERM is turned into one, and on Linux the kernel ends them if the
            # launcher is killed outright.
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                with multiprocessing.get_context("spawn").Pool(jobs, _init_worker, (os.getpid(),)) as pool:
                    waiting, pending = list(todo), {}
                    while waiting or pending:
                        ready = [r for r in waiting if all(n in doc["runs"] for n in r.needs)]
                        for r in ready[:max(0, jobs - len(pending))]:  # no more than can run: the order is kept
                            waiting.remove(r)
                            pending[r.id] = pool.apply_async(_execute, (name, cfg_dict, dataclasses.asdict(r),
                                                                        device, str(work), threads, commit))
                        if not pending:
                            raise RuntimeError(f"experiment {name}: runs {[r.id for r in waiting]} wait on runs "
                                               "that cannot finish")
                        finished = [i for i, res in pending.items() if res.ready()]
                        if not finished:
                            time.sleep(0.5)
                        for i in finished:
                            done(pending.pop(i).get())  # a worker's exception is raised here
            finally:
                signal.signal(signal.SIGTERM, previous)
    finally:
        bar.close()
    if len(doc["runs"]) == len(runs):
        shutil.rmtree(work, ignore_errors=True)
    return out
