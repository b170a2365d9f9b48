"""Model checkpoints: weights in safetensors with the config in the metadata, tokenizer and manifest beside.

A checkpoint is a directory::

    model.safetensors   weights; metadata: format, arch, config (JSON), model_id, vocab_size
    tokenizer.json      the tokenizer (plasticlm.tokenizer.load_tokenizer)
    manifest.json       size and sha256 of both, and which files hold the weights; written last

A training checkpoint (``plasticlm.trainer.run_state``) is one with more files in its
manifest; an AUNN's (``plasticlm.aunn.offline``) keeps its weights in aunn.safetensors. The
manifest's ``weights`` list names the weight files, so that a model may be split over several.

``model_id`` is a hash of the config and the weights, so a saved recurrent state can name the
exact model that produced it.

A checkpoint is a folder someone hands over, so :func:`read_checkpoint` trusts nothing in it:
every file the manifest lists is checked first (a regular file inside the folder, of the
recorded size and sha256) and a manifest that leaves out the weights or the tokenizer is
refused; the config is bounded, and every tensor's name, shape and dtype is compared with the
model it describes, built on the meta device (no memory, no time), before any module is built
for real; non-finite weights are refused by name; and the model_id is recomputed from the
tensors loaded and must equal the recorded one, so what a state or an evaluation names is what
was loaded. Nothing is ever unpickled. Training state (optimizer, schedule, RNG, data cursor) is
the trainer's business and sits beside these files.

A folder written by transformers' ``save_pretrained`` (``plasticlm export-hf``, :mod:`plasticlm.hf_folder`)
loads too: it has no manifest, so its config, tensors and tokenizer are checked from the files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import archs, hf_folder
from .files import MANIFEST, DataError, atomic_write, read_json, verify_manifest, write_manifest
from .tokenizer import Tokenizer, load_tokenizer

FORMAT = "plasticlm.model/1"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


def model_id(config, tensors: dict[str, torch.Tensor]) -> str:
    """The identity of config and weights. A field its config class lists in ``ADDED_LATER`` is
    left out at its default (that default is the model as it was before the field existed), so
    checkpoints written before it keep their identity."""
    later = getattr(type(config), "ADDED_LATER", ())
    defaults = {f.name: f.default for f in dataclasses.fields(config)} if later else {}
    fields = {k: v for k, v in config.to_dict().items() if not (k in later and v == defaults[k])}
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(directory: str | os.PathLike, model, tokenizer: Tokenizer,
               extra: dict[str, str] | None = None) -> str:
    """Write weights, tokenizer and manifest into ``directory``; returns the model_id. The
    metadata's ``arch`` names the model's registered architecture."""
    return save_weights(directory, model.config, model.state_dict(), tokenizer,
                        {"arch": archs.arch_of(model), **(extra or {})})


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def save_weights(directory: str | os.PathLike, config, state_dict: dict[str, torch.Tensor], tokenizer: Tokenizer,
                 extra: dict[str, str] | None = None, *, weights: str = WEIGHTS, manifest: bool = True,
                 dtype: str = "float32", shard_mib: float = 0) -> str:
    """:func:`save_model` from a config and a state dict (e.g. gathered from sharded training).

    ``weights`` names the weights file; ``manifest=False`` leaves the manifest to a caller that
    writes one for more files (a training checkpoint). ``dtype="bfloat16"`` stores the floating
    tensors in bf16 (half the bytes; they load back into a float32 model) and ``shard_mib`` splits
    the weights into files of at most that many MiB (``model-00001-of-00003.safetensors``, ...),
    for a checkpoint that must travel in small files.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().to(DTYPES[dtype] if v.is_floating_point() else v.dtype).contiguous()
               for k, v in state_dict.items()}
    mid = model_id(config, tensors)
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict()), "model_id": mid,
            "vocab_size": str(tokenizer.vocab_size), "dtype": dtype, **{k: str(v) for k, v in (extra or {}).items()}}
    shards = _shards(tensors, shard_mib)
    names = [weights] if len(shards) == 1 else [
        f"{Path(weights).stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    atomic_write(d / TOKENIZER, tokenizer.save)
    for i, (name, part) in enumerate(zip(names, shards)):  # the first file carries the metadata
        atomic_write(d / name, lambda p, part=part, i=i: save_file(part, p, metadata=meta if i == 0 else None))
    if manifest:
        write_manifest(d, [*names, TOKENIZER], weights=names)
    return mid


def _shards(tensors: dict[str, torch.Tensor], shard_mib: float) -> list[dict[str, torch.Tensor]]:
    """Tensors in name order, cut into groups of at most ``shard_mib`` MiB (0: one group)."""
    limit = shard_mib * 2 ** 20
    out, size = [{}], 0
    for name in sorted(tensors):
        n = tensors[name].numel() * tensors[name].element_size()
        if limit and out[-1] and size + n > limit:
            out.append({})
            size = 0
        if limit and n > limit:
            raise ValueError(f"tensor {name} takes {n / 2 ** 20:.1f} MiB, more than shards of {shard_mib} MiB")
        out[-1][name] = tensors[name]
        size += n
    return out


@dataclass
class Checkpoint:
    """A checkpoint's contents, verified by :func:`read_checkpoint`, before any module is built for it."""

    arch: str
    config: Any
    tensors: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    metadata: dict[str, str]
    """The (first) weights file's metadata."""
    model_id: str
    """Computed from the config and the tensors loaded (and equal to the metadata's)."""


def read_checkpoint(directory: str | os.PathLike, device: str | torch.device = "cpu",
                    manifest: dict[str, Any] | None = None) -> Checkpoint:
    """Read a checkpoint directory, checking everything the module docstring lists.

    ``manifest`` is the directory's manifest when the caller has verified it already (a training
    checkpoint's, which must list more files). A :class:`~plasticlm.files.DataError` names the file
    and what is wrong with it; FileNotFoundError when ``directory`` holds no checkpoint at all.
    """
    d = Path(directory)
    if manifest is None and hf_folder.is_hf_folder(d):  # written by save_pretrained: checked from its files
        return _read_hf_folder(d, device)
    if manifest is None:
        manifest = verify_manifest(d, [TOKENIZER]) if os.path.lexists(d / MANIFEST) else _no_manifest(d)
    names = manifest.get("weights", [WEIGHTS])  # training checkpoints written before the list hold one file
    if not names or any(n not in manifest["files"] for n in names):
        raise DataError(f"{d / MANIFEST} does not list {', '.join(names) or 'any weights file'}: the checkpoint is "
                        "incomplete or was altered")
    metas, tensors = [], {}
    for name in names:
        file_meta, more = _read_weights(d / name, device)
        clash = sorted(set(more) & set(tensors))
        if clash:
            raise DataError(f"{d / name}: holds tensors that an earlier weights file holds too: {clash[:3]}")
        metas.append(file_meta)
        tensors.update(more)
    meta, where = metas[0], d / names[0]
    if meta.get("format") != FORMAT:
        raise DataError(f"{where}: not a plasticlm checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    arch = meta.get("arch", "plasticlm")
    try:
        data = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: the metadata holds no valid config ({type(e).__name__}: {e})") from None
    try:
        config = archs.make_config(arch, data, where=f"{where}: config")
    except ValueError as e:
        raise DataError(str(e)) from None
    try:
        expected = archs.meta_state_dict(arch, config, max_blocks=len(tensors))
    except ValueError as e:
        raise DataError(f"{where}: config: {e}") from None
    stored = meta.get("dtype", "float32")
    if stored not in DTYPES:
        raise DataError(f"{where}: the metadata's dtype {stored!r} is not one of {sorted(DTYPES)}")
    expected = {k: v.to(DTYPES[stored]) if v.is_floating_point() else v for k, v in expected.items()}
    check_tensors(tensors, expected, str(where))
    tokenizer = load_tokenizer(d / TOKENIZER, within=d)
    if tokenizer.vocab_size != config.vocab_size:
        raise DataError(f"{d}: tokenizer has {tokenizer.vocab_size} tokens, model vocab_size is {config.vocab_size}")
    mid = model_id(config, tensors)
    if meta.get("model_id") != mid:
        raise DataError(f"{where}: the metadata says model_id {meta.get('model_id')!r}, the weights and config "
                        f"loaded give {mid}: the file was altered after it was written")
    return Checkpoint(arch, config, tensors, tokenizer, meta, mid)


def _read_hf_folder(d: Path, device) -> Checkpoint:
    """A folder written by ``save_pretrained`` (:mod:`plasticlm.hf_folder`), verified from its own files:
    there is no manifest, so config, tensors and tokenizer are each checked as read_checkpoint does."""
    config, _ = hf_folder.split_config(read_json(d / hf_folder.CONFIG, within=d), str(d / hf_folder.CONFIG))
    names, tensors = hf_folder.weight_files(d), {}
    for name in names:
        for key, t in _read_weights(d / name, device)[1].items():
            if not key.startswith(hf_folder.PREFIX):
                raise DataError(f"{d / name}: tensor {key!r} is not a PlasticLMForCausalLM's (names start "
                                f"{hf_folder.PREFIX!r})")
            tensors[key[len(hf_folder.PREFIX):]] = t
    where = str(d / names[0])
    try:
        expected = archs.meta_state_dict(hf_folder.MODEL_TYPE, config, max_blocks=len(tensors))
    except ValueError as e:
        raise DataError(f"{d / hf_folder.CONFIG}: {e}") from None
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    dtype = next((k for k, v in DTYPES.items() if {v} == floats), None)
    if dtype is None:  # save_pretrained writes one dtype; mixed or float16 tensors are not an export's
        raise DataError(f"{where}: tensors of dtypes {sorted(map(str, floats))}: expected all float32 or all bfloat16")
    check_tensors(tensors, {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in expected.items()}, where)
    tokenizer = hf_folder.load_hf_tokenizer(d / hf_folder.TOKENIZER, within=d)
    if tokenizer.vocab_size != config.vocab_size:
        raise DataError(f"{d / hf_folder.TOKENIZER}: {tokenizer.vocab_size} tokens, but {d / hf_folder.CONFIG} says "
                        f"vocab_size={config.vocab_size}")
    mid = model_id(config, tensors)
    meta = {"format": "transformers", "arch": hf_folder.MODEL_TYPE, "config": json.dumps(config.to_dict()),
            "model_id": mid, "vocab_size": str(config.vocab_size), "dtype": dtype}
    return Checkpoint(hf_folder.MODEL_TYPE, config, tensors, tokenizer, meta, mid)


STEP_DIR = re.compile(r"^step_(\d{8})$")
"""A training checkpoint's folder under RUN/checkpoints/ (written by plasticlm.trainer.run_state)."""


def step_of(checkpoint: Path) -> int:
    return int(STEP_DIR.match(checkpoint.name).group(1))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first: real directories named step_N holding a
    manifest (staging directories, symlinks and anything else are not listed)."""
    if not root.is_dir() or root.is_symlink():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and not p.is_symlink() and p.is_dir()
                  and (p / MANIFEST).is_file() and not (p / MANIFEST).is_symlink())


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def _no_manifest(d: Path):
    """The error for a folder without a manifest: no checkpoint at all, or one that cannot be verified."""
    if not any(os.path.lexists(d / a.weights) for a in archs.ARCHS.values()):
        raise FileNotFoundError(f"no checkpoint at {d}: {d / MANIFEST} does not exist")
    newest = latest_checkpoint(d / "checkpoints")
    hint = f"; its newest training checkpoint, {newest}, has one: load that" if newest else ""
    raise DataError(f"{d}: no {MANIFEST} to verify the weights against (written by a plasticlm before "
                    f"manifests?){hint}")


def _read_weights(path: Path, device) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: cannot read weights (truncated or corrupt?): {e}") from None


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    """Refuse ``tensors`` unless they have exactly the names, shapes and dtypes of ``expected``
    (e.g. :func:`plasticlm.archs.meta_state_dict`) and finite values; the DataError names the tensor."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DataError(f"{where}: the tensors do not fit the model (missing {missing[:3]}"
                        f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                        f"{' ...' if len(unexpected) > 3 else ''})")
    for name in sorted(expected):
        t, want = tensors[name], expected[name]
        if t.shape != want.shape:
            raise DataError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the model's is {tuple(want.shape)}")
        if t.dtype != want.dtype:
            raise DataError(f"{where}: tensor {name} has dtype {t.dtype}, the model's is {want.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"{where}: tensor {name} holds non-finite values (NaN or inf): refused")


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Returns (model in eval mode, tokenizer, metadata) of a checkpoint verified by :func:`read_checkpoint`.

    The model is the architecture the metadata's ``arch`` names (plasticlm when absent), built
    through :mod:`plasticlm.archs`; the metadata's ``model_id`` is the one recomputed.
    """
    ckpt = read_checkpoint(directory, device)
    model = archs.build(ckpt.arch, ckpt.config).to(device)
    model.load_state_dict(ckpt.tensors)
    model.eval()
    return model, ckpt.tokenizer, ckpt.metadata


def load_lm(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", **options):
    """Any checkpoint directory as an evaluation :class:`~plasticlm.lm.LM`: (lm, tokenizer, metadata).

    Models saved by :func:`save_model`, ``plasticlm train`` or ``plasticlm aunn train`` all load
    through :func:`load_model`. ``options`` go to the arch's adapter: ``piece`` (tokens per
    forward of the recurrent and attention models), ``online`` (how an AUNN reads, an
    ``OnlineConfig``).
    """
    model, tok, meta = load_model(checkpoint, device)
    if meta.get("arch") == "aunn":
        options = {"online": options.get("online")}
    else:
        options = {k: v for k, v in options.items() if k != "online"}
    return archs.as_lm(model, **options), tok, meta
