"""Model checkpoints: weights in safetensors with the config in the metadata, tokenizer beside.

A checkpoint is a directory::

    model.safetensors   weights; metadata: format, config (JSON), model_id, vocab_size
    tokenizer.json      the tokenizer (plasticlm.tokenizer.load_tokenizer)

``model_id`` is a hash of the config and the weights, so a saved recurrent state can name
the exact model that produced it. Loading never unpickles anything. Training state
(optimizer, schedule, RNG, data cursor) is the trainer's business and sits beside these files.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from . import archs
from .files import atomic_write
from .tokenizer import Tokenizer, load_tokenizer

FORMAT = "plasticlm.model/1"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"


def model_id(config, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_model(directory: str | os.PathLike, model, tokenizer: Tokenizer,
               extra: dict[str, str] | None = None) -> str:
    """Write weights and tokenizer into ``directory``; returns the model_id. The metadata's ``arch``
    names the model's registered architecture."""
    return save_weights(directory, model.config, model.state_dict(), tokenizer,
                        {"arch": archs.arch_of(model), **(extra or {})})


def save_weights(directory: str | os.PathLike, config, state_dict: dict[str, torch.Tensor], tokenizer: Tokenizer,
                 extra: dict[str, str] | None = None) -> str:
    """:func:`save_model` from a config and a state dict (e.g. gathered from sharded training)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    mid = model_id(config, tensors)
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict()), "model_id": mid,
            "vocab_size": str(tokenizer.vocab_size), **{k: str(v) for k, v in (extra or {}).items()}}
    atomic_write(d / TOKENIZER, tokenizer.save)
    atomic_write(d / WEIGHTS, lambda p: save_file(tensors, p, metadata=meta))
    return mid


def read_metadata(directory: str | os.PathLike) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {directory}: {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a plasticlm checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Returns (model in eval mode, tokenizer, metadata).

    The model is the architecture the metadata's ``arch`` names (plasticlm when absent), built
    through :mod:`plasticlm.archs`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_metadata(d)
    arch = meta.get("arch", "plasticlm")
    config = archs.make_config(arch, json.loads(meta["config"]), where=f"{d / WEIGHTS}: config")
    tokenizer = load_tokenizer(d / TOKENIZER)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{d}: tokenizer has {tokenizer.vocab_size} tokens, model vocab_size is {config.vocab_size}")
    try:
        tensors = load_file(str(d / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{d / WEIGHTS}: cannot read weights (truncated or corrupt?): {e}") from e
    model = archs.build(arch, config).to(device)
    model.load_state_dict(tensors)
    model.eval()
    return model, tokenizer, meta


def load_lm(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", **options):
    """Any checkpoint directory as an evaluation :class:`~plasticlm.lm.LM`: (lm, tokenizer, metadata).

    Models saved by :func:`save_model` or ``plasticlm train`` (metadata ``arch``) load through
    :func:`load_model`; an AUNN checkpoint (``plasticlm aunn train``) through
    :func:`plasticlm.aunn.offline.load_aunn`. ``options`` go to the arch's adapter: ``piece`` (tokens
    per forward of the recurrent and attention models), ``online`` (how an AUNN reads, an
    ``OnlineConfig``).
    """
    from .aunn.offline import WEIGHTS as AUNN_WEIGHTS

    d = Path(checkpoint)
    if (d / AUNN_WEIGHTS).exists() and not (d / WEIGHTS).exists():
        from .aunn.offline import load_aunn

        model, tok, meta = load_aunn(d, device)
        meta = {**meta, "arch": "aunn"}
        options = {"online": options.get("online")}
    else:
        model, tok, meta = load_model(d, device)
        options = {k: v for k, v in options.items() if k != "online"}
    return archs.as_lm(model, **options), tok, meta
