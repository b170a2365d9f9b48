"""Files written so that a crash leaves the old or the new one, and read without trusting them.

Writing: :func:`atomic_write` leaves the old file or the new one, never half of either, and
replaces only a regular file (or a symlink, which it replaces and never writes through): a
device such as /dev/full, a FIFO or a folder at the target is refused before anything is
written, and so is a target whose folder is missing or is a file.

Reading what a user or a run folder hands us (checkpoints, states, tokenizers, manifests): only
regular files, of bounded size where their kind allows, never through a symlink that leaves the
folder being read, all checked with ``lstat``/``stat`` before anything is opened. So a FIFO
named model.safetensors cannot hang a load, and a tokenizer.json linked to /dev/zero cannot fill
memory. A manifest (:func:`write_manifest`) records the size and sha256 of every file of a
checkpoint, written last; :func:`verify_manifest` checks them before any is read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

MAX_JSON_BYTES = 1 << 28
"""Largest JSON file read (manifests, tokenizers, trainer state): 256 MiB, far above any that
plasticlm writes (a 256k-token BPE tokenizer is about 30 MB), far below what would exhaust memory."""
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "plasticlm.manifest/1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DataError(ValueError):
    """A file is corrupt, truncated, foreign or holds values that fail a check: bad data, not bad
    usage. The command line exits 1 for it (2 for other ValueErrors, which are usage errors)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "special file"


# -- reading -------------------------------------------------------------------------------------

def regular_file(path: str | os.PathLike, *, within: str | os.PathLike | None = None,
                 max_bytes: int | None = None) -> os.stat_result:
    """``path``'s stat if it is a regular file of at most ``max_bytes``, without opening it.

    A symlink is followed only when its target lies inside the folder ``within`` (any target when
    ``within`` is None, for a file the user named). FileNotFoundError when nothing is there,
    :class:`DataError` (naming the file and what it is) for anything else that is not a regular file.
    """
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} does not exist") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{p} does not exist (a part of its path is a file, not a folder)") from None
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(p))
        if within is not None and not target.is_relative_to(os.path.realpath(within)):
            raise DataError(f"{p} is a symlink to {target}, outside {within}: refused")
        try:
            st = os.stat(p)
        except OSError:
            raise DataError(f"{p} is a symlink to {target}, which does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{p} is a {_kind(st.st_mode)}, not a regular file: refused")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataError(f"{p} holds {st.st_size:,} bytes, more than the {max_bytes:,} such a file may: refused")
    return st


def open_regular(path: str | os.PathLike, *, within: str | os.PathLike | None = None,
                 max_bytes: int | None = None) -> BinaryIO:
    """``path`` opened for binary reading once :func:`regular_file` accepts it. It is opened
    non-blocking and checked again on the open descriptor, so a FIFO swapped in after the check
    cannot block the open either."""
    before = regular_file(path, within=within, max_bytes=max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise DataError(f"{path} was replaced while being opened: refused")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, max_bytes: int, *, within: str | os.PathLike | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`regular_file`)."""
    with open_regular(path, within=within, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DataError(f"{path} grew past {max_bytes:,} bytes while being read: refused")
    return data


def read_json(path: str | os.PathLike, *, within: str | os.PathLike | None = None,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, read as a bounded regular file; anything else is a :class:`DataError` naming it."""
    data = read_bytes(path, max_bytes, within=within)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None


def sha256_file(path: str | os.PathLike, *, within: str | os.PathLike | None = None) -> str:
    h = hashlib.sha256()
    with open_regular(path, within=within) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- writing -------------------------------------------------------------------------------------

def check_output(path: str | os.PathLike, probe: bool = False) -> Path:
    """``path`` if a file may be written there: its folder exists and is a folder, and whatever is
    at ``path`` is a regular file or a symlink (replaced, never written through) or nothing.
    ``probe`` also creates and removes the temporary file :func:`atomic_write` would use, so a
    folder where nothing can be created (/proc) fails now rather than after hours of work.
    A ValueError (a usage error) names the path and the reason."""
    p = Path(path)
    try:
        parent = os.stat(p.parent)
    except FileNotFoundError:
        raise ValueError(f"cannot write {p}: the folder {p.parent} does not exist") from None
    except NotADirectoryError:
        raise ValueError(f"cannot write {p}: a part of {p.parent} is a file, not a folder") from None
    if not stat.S_ISDIR(parent.st_mode):
        raise ValueError(f"cannot write {p}: {p.parent} is a {_kind(parent.st_mode)}, not a folder")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        st = None
    if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise ValueError(f"cannot write {p}: it is a {_kind(st.st_mode)}; only a regular file is ever replaced")
    if probe:
        tmp = _tmp_path(p)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            raise ValueError(f"cannot write {p}: {e.strerror or e}") from None
        os.unlink(tmp)
    return p


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(tmp_path)``, fsync, then rename over ``path``, once :func:`check_output` accepts it.
    The temporary file sits beside ``path`` (same file system) and is removed if anything fails."""
    path = check_output(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


@contextlib.contextmanager
def locked(path: str | os.PathLike, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: processes
    that build the same shared file (an experiment's corpus, from parallel runs) take turns.
    ``wait=False``: raise BlockingIOError at once if another holder has it."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- manifests -----------------------------------------------------------------------------------

def write_manifest(directory: str | os.PathLike, names: Iterable[str], **fields: Any) -> dict[str, Any]:
    """Record the size and sha256 of each file ``names`` in ``directory``'s manifest.json, written
    last and atomically, so a folder whose writing was cut short has no manifest (or the old one,
    which no longer matches) and is refused. ``fields`` (the step, the weight files, ...) go beside
    ``files``; returns the manifest."""
    d = Path(directory)
    files = {n: {"bytes": (d / n).stat().st_size, "sha256": sha256_file(d / n)} for n in sorted(names)}
    manifest = {"format": MANIFEST_FORMAT, **fields, "files": files}
    atomic_write(d / MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=1)))
    return manifest


def verify_manifest(directory: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``directory`` against its manifest; returns the manifest.

    The manifest must list every file of ``required`` and of its own ``weights`` (the files that
    hold a model's tensors, one or several); each file it lists must be a regular file
    inside ``directory`` (no FIFO, device, or symlink out of it) of the recorded size and sha256.
    A :class:`DataError` names the first file that is not.
    """
    d = Path(directory)
    mpath = d / MANIFEST
    if not os.path.lexists(mpath):
        raise DataError(f"{d}: incomplete checkpoint (no {MANIFEST}); was it written by plasticlm?")
    manifest = read_json(mpath, within=d)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    # Training checkpoints written before manifests had a format carry none; they are otherwise alike.
    if not isinstance(files, dict) or manifest.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise DataError(f"{mpath}: not a plasticlm manifest (expected {{'format': {MANIFEST_FORMAT!r}, 'files': "
                        "{name: {'bytes': n, 'sha256': hex}}}})")
    weights = manifest.get("weights", [])
    if not (isinstance(weights, list) and all(isinstance(w, str) for w in weights)):
        raise DataError(f"{mpath}: 'weights' must be a list of file names, got {weights!r}")
    missing = [n for n in dict.fromkeys([*required, *weights]) if n not in files]
    if missing:
        raise DataError(f"{mpath} does not list {', '.join(missing)}: the checkpoint is incomplete or was altered")
    for name, info in files.items():
        if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name or "\\" in name:
            raise DataError(f"{mpath}: {name!r} is not the name of a file in this folder")
        if not (isinstance(info, dict) and isinstance(info.get("bytes"), int) and info["bytes"] >= 0
                and isinstance(info.get("sha256"), str) and _SHA256.match(info["sha256"])):
            raise DataError(f"{mpath}: malformed entry for {name}: {info!r}")
        p = d / name
        try:
            size = regular_file(p, within=d).st_size
        except FileNotFoundError:
            raise DataError(f"{p}: missing from checkpoint {d} (listed in {mpath})") from None
        if size != info["bytes"]:
            raise DataError(f"{p}: truncated or altered: {size} bytes on disk, {info['bytes']} written "
                            f"(as {mpath} records)")
        if sha256_file(p, within=d) != info["sha256"]:
            raise DataError(f"{p}: corrupt: its sha256 differs from the one {mpath} recorded when it was written")
    return manifest
