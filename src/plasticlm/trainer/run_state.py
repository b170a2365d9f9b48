"""Training checkpoints: everything a run needs to continue bit-identically, and nothing pickled.

A checkpoint is a directory ``out_dir/checkpoints/step_NNNNNNNN/``::

    model.safetensors, tokenizer.json   the model (plasticlm.checkpoint.load_model reads it)
    optim.safetensors                   optimizer tensors; the rest of its state in optim.json
    trainer.json                        step, counters, schedule, config, optimizer groups
    rank{r}.safetensors, rank{r}.json   per rank: RNG states, carried recurrent state, data cursor
    manifest.json                       size and sha256 of every file above, written last

All files go into a hidden temporary directory that is renamed into place once complete and
synced, so a crash mid-write leaves the previous checkpoint as the newest. Loading checks the
manifest first (it must list every file above; a truncated or altered file is refused, naming
it), then reads safetensors and JSON only: no file is ever unpickled, so a planted pickle cannot
run code. Only real directories with a manifest count as checkpoints: a symlink named like one
(say, to another run's step) is never resumed from, and rotation never deletes through one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import TOKENIZER, WEIGHTS, latest_checkpoint, list_checkpoints, read_checkpoint, step_of
from ..files import (MANIFEST, DataError, atomic_write, read_json, regular_file, verify_manifest,
                     write_manifest)

FILES = (WEIGHTS, TOKENIZER, "optim.safetensors", "optim.json", "trainer.json")
"""What every checkpoint's manifest must list, beside the rank files of each of its ranks."""


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


def staging_dir(root: Path, step: int) -> Path:
    d = root / f".tmp-step_{step:08d}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def commit(root: Path, step: int, keep: int) -> Path:
    """Write the manifest of the staged checkpoint, rename it into place, drop older ones beyond ``keep``.

    Rotation counts only checkpoints at or before ``step``: one newer than the checkpoint being
    written (the run resumed from an older one) is never deleted, and neither is anything that is
    not a real checkpoint directory (a symlink, a folder without a manifest).
    """
    tmp, final = root / f".tmp-step_{step:08d}", root / f"step_{step:08d}"
    files = sorted(p.name for p in tmp.iterdir() if p.is_file() and not p.name.startswith("."))
    write_manifest(tmp, files, step=step, weights=[WEIGHTS])
    _fsync_dir(tmp)
    if final.is_symlink():  # a link in the way goes, never what it points to
        final.unlink()
    elif final.exists():  # a re-run of the same step (after a restart) replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    older = [c for c in list_checkpoints(root) if step_of(c) <= step]
    for old in older[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step_*"):  # left by a crash mid-write
        if stale != tmp and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    return final


# -- reading -------------------------------------------------------------------------------------

def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest, which must list every file a checkpoint has; a
    DataError names the first bad one. Returns the manifest."""
    manifest = verify_manifest(directory, FILES)
    trainer = read_json(directory / "trainer.json", within=directory)
    world = trainer.get("world_size") if isinstance(trainer, dict) else None
    if not isinstance(world, int) or world < 1:
        raise DataError(f"{directory / 'trainer.json'}: world_size must be a count of ranks >= 1, got {world!r}")
    missing = [f"rank{r}.{ext}" for r in range(world) for ext in ("json", "safetensors")
               if f"rank{r}.{ext}" not in manifest["files"]]
    if missing:
        raise DataError(f"{directory / MANIFEST} does not list {', '.join(missing)}: the checkpoint is incomplete "
                        "or was altered")
    return manifest


def read_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file of finite tensors; anything else (a pickle, a truncated file, NaNs) is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    regular_file(path)
    try:
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: not a readable safetensors file (truncated, corrupt, or a pickle?); "
                        f"refused: {e}") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"{path}: tensor {name} holds non-finite values (NaN or inf): refused")
    return tensors


def read_state(directory: Path, name: str) -> dict[str, Any]:
    return join_tensors(read_json(directory / f"{name}.json", within=directory),
                        read_tensors(directory / f"{name}.safetensors"))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights ``checkpoint.init_from`` names (the caller checks that they fit its model).

    ``path`` is a run dir (its newest checkpoint, else its top-level model), a checkpoint or model
    dir, or a weights file. Folders, and files in a folder with a manifest, are verified as
    :func:`plasticlm.checkpoint.read_checkpoint` does; a file from elsewhere has no manifest to
    verify: safetensors, or a torch file loaded with ``weights_only=True``. None of these paths can
    execute code: safetensors holds no code, and the restricted unpickler refuses any global that
    is not a tensor type, before calling it.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"init_from: {p} does not exist")
    if p.is_dir():
        return read_checkpoint(latest_checkpoint(p / "checkpoints") or p).tensors
    if os.path.lexists(p.parent / MANIFEST):
        manifest = verify_manifest(p.parent, [TOKENIZER])
        if p.name not in manifest.get("weights", [WEIGHTS]):
            raise DataError(f"init_from: {p.parent / MANIFEST} does not list {p.name} among the weights")
        return read_checkpoint(p.parent, manifest=manifest).tensors
    if p.suffix == ".safetensors":
        return read_tensors(p)
    regular_file(p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError... all mean "refused"
        raise DataError(f"{p}: refused to load (weights_only=True allows tensors only): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise DataError(f"{p}: expected a mapping of parameter names to tensors")
    return obj
