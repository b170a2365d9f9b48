"""Training checkpoints: everything a run needs to continue bit-identically, and nothing pickled.

A checkpoint is a directory ``out_dir/checkpoints/step_NNNNNNNN/``::

    model.safetensors, tokenizer.json   the model (plasticlm.checkpoint.load_model reads it)
    optim.safetensors                   optimizer tensors; the rest of its state in trainer.json
    trainer.json                        step, counters, schedule, config, optimizer groups
    rank{r}.safetensors, rank{r}.json   per rank: RNG states, carried recurrent state, data cursor
    manifest.json                       size and sha256 of every file above, written last

All files go into a hidden temporary directory that is renamed into place once complete and
synced, so a crash mid-write leaves the previous checkpoint as the newest. Loading checks the
manifest first (a truncated or altered file is refused, naming it), then reads safetensors and
JSON only: no file is ever unpickled, so a planted pickle cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import WEIGHTS
from ..files import atomic_write

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")


# -- nested state <-> (JSON, tensors) ------------------------------------------------------------

def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """A JSON-able copy of ``obj`` with each tensor moved into ``tensors`` under a fresh key."""
    if torch.is_tensor(obj):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: split_tensors(v, tensors, prefix) for k, v in obj.items()}
        return {"__items__": [[k, split_tensors(v, tensors, prefix)] for k, v in obj.items()]}  # int keys
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} ({obj!r}); use tensors, numbers, strings, lists, dicts")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: join_tensors(v, tensors) for k, v in obj["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# -- writing -------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta or {}))


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1)))


def write_state(directory: Path, name: str, state: dict[str, Any]) -> None:
    """``state`` as ``name.json`` plus ``name.safetensors`` for its tensors."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    write_tensors(directory / f"{name}.safetensors", tensors)
    write_json(directory / f"{name}.json", skeleton)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def staging_dir(root: Path, step: int) -> Path:
    d = root / f".tmp-step_{step:08d}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def commit(root: Path, step: int, keep: int) -> Path:
    """Write the manifest of the staged checkpoint, rename it into place, drop all but the last ``keep``."""
    tmp, final = root / f".tmp-step_{step:08d}", root / f"step_{step:08d}"
    files = sorted(p.name for p in tmp.iterdir() if p.is_file() and not p.name.startswith("."))
    write_json(tmp / MANIFEST, {"step": step, "files": {n: {"bytes": (tmp / n).stat().st_size,
                                                             "sha256": _sha256(tmp / n)} for n in files}})
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step (after a restart) replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # left by a crash mid-write
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


# -- reading -------------------------------------------------------------------------------------

def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (staging directories are not listed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; a clear ValueError names the first bad one."""
    mpath = directory / MANIFEST
    if not mpath.is_file():
        raise ValueError(f"{directory}: incomplete checkpoint (no {MANIFEST}); was it written by plasticlm?")
    manifest = read_json(mpath)
    for name, info in manifest.get("files", {}).items():
        p = directory / name
        if not p.is_file():
            raise ValueError(f"{p}: missing from checkpoint {directory}")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise ValueError(f"{p}: truncated or altered: {size} bytes on disk, {info['bytes']} written")
        if _sha256(p) != info["sha256"]:
            raise ValueError(f"{p}: corrupt: its sha256 differs from the one recorded when it was written")
    return manifest


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None


def read_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file; anything else (a pickle, a truncated file) is refused unread."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated, corrupt, or a pickle?); "
                         f"refused: {e}") from None


def read_state(directory: Path, name: str) -> dict[str, Any]:
    return join_tensors(read_json(directory / f"{name}.json"), read_tensors(directory / f"{name}.safetensors"))


def resolve_weights(path: str | os.PathLike) -> Path:
    """The weights file that ``init_from`` names: a run dir, a checkpoint dir, a model dir or a file."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"init_from: {p} does not exist")
    newest = latest_checkpoint(p / "checkpoints")
    for candidate in ([newest / WEIGHTS] if newest else []) + [p / WEIGHTS]:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"init_from: {p} holds neither checkpoints/step_*/{WEIGHTS} nor {WEIGHTS}")


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from safetensors, or from a torch file loaded with ``weights_only=True``.

    Neither path can execute code: safetensors holds no code, and the restricted unpickler
    refuses any global that is not a tensor type, before calling it.
    """
    file = resolve_weights(path)
    if file.suffix == ".safetensors":
        if file.parent.joinpath(MANIFEST).is_file():
            verify(file.parent)
        return read_tensors(file)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError... all mean "refused"
        raise ValueError(f"{file}: refused to load (weights_only=True allows tensors only): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{file}: expected a mapping of parameter names to tensors")
    return obj
