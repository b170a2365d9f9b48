"""Offline training of an AUNN, and its checkpoints.

The stream (any 1-D array-like of token ids: a torch tensor, a numpy array, a uint16/uint32
``np.memmap`` shard) is laid out at indices [offset, offset + N). Each step draws a large
minibatch of positions uniformly at random and fits (index, token) pairs with AdamW; the
trainer's ``state_dict()`` (model, optimizer, sampler RNG, step) resumes a run exactly.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import archs
from ..checkpoint import load_model, save_weights
from ..files import DataError, atomic_write
from ..tokenizer import Tokenizer
from .config import OfflineConfig
from .model import AUNN

WEIGHTS = archs.get("aunn").weights


def check_stream(tokens: Any) -> torch.Tensor | np.ndarray:
    """Accept a 1-D integer torch tensor or numpy array (memmaps included), unchanged."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"token stream must be a 1-D integer tensor, got {tokens.dtype} of shape {tuple(tokens.shape)}")
    elif isinstance(tokens, np.ndarray):
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"token stream must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    else:
        raise TypeError(f"token stream must be a torch tensor or a numpy array (or memmap), got {type(tokens).__name__}")
    if len(tokens) < 1:
        raise ValueError("token stream is empty")
    return tokens


def gather(tokens: torch.Tensor | np.ndarray, positions: torch.Tensor) -> torch.Tensor:
    """tokens[positions] as an int64 CPU tensor; positions (N,) int64 on CPU."""
    if isinstance(tokens, np.ndarray):
        return torch.from_numpy(np.asarray(tokens[positions.numpy()]).astype(np.int64))
    return tokens[positions.to(tokens.device)].long().cpu()


class OfflineTrainer:
    """AdamW on random (index, token) pairs of ``tokens`` laid out at [offset, offset + N).

    Sets ``model.next_index`` to offset + N (unless it is already later), so reading starts
    right after the stream.
    """

    def __init__(self, model: AUNN, tokens, cfg: OfflineConfig, offset: int = 0):
        self.model, self.cfg, self.offset = model, cfg, offset
        self.tokens = check_stream(tokens)
        self.n = len(self.tokens)
        if offset < 0 or offset + self.n > model.config.max_index:
            raise ValueError(f"stream of {self.n} tokens at offset {offset} does not fit the "
                             f"{model.config.index_bits}-bit index code ({model.config.max_index} indices)")
        self.device = model.head.weight.device
        decay = [p for n, p in model.named_parameters() if p.dim() == 2]
        rest = [p for n, p in model.named_parameters() if p.dim() != 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step_count = 0
        with torch.no_grad():
            model.next_index.fill_(max(int(model.next_index), offset + self.n))

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Next minibatch: (index (N,), token (N,)) int64 on the model's device."""
        pos = torch.randint(0, self.n, (self.cfg.batch_size,), generator=self.gen)
        tok = gather(self.tokens, pos)
        if int(tok.max()) >= self.model.config.vocab_size or int(tok.min()) < 0:
            bad = int(((tok >= self.model.config.vocab_size) | (tok < 0)).nonzero()[0, 0])
            raise ValueError(f"token id {int(tok[bad])} at stream position {int(pos[bad])} is outside "
                             f"[0, {self.model.config.vocab_size}) (model.vocab_size)")
        return (pos + self.offset).to(self.device), tok.to(self.device)

    def step(self) -> dict[str, float]:
        """One optimizer step; returns its loss, gradient norm and learning rate."""
        self.model.train()
        index, tok = self.sample()
        lr = self.lr_at(self.step_count)
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(self.model(index).float(), tok)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        return {"step": self.step_count, "loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": lr}

    @torch.no_grad()
    def evaluate(self, max_pairs: int = 65536, batch: int = 8192) -> float:
        """Mean loss (nats) over the stream at its own indices (memorisation), on up to max_pairs
        evenly spaced positions."""
        self.model.eval()
        pos = torch.linspace(0, self.n - 1, min(self.n, max_pairs)).long().unique()
        total = 0.0
        for i in range(0, len(pos), batch):
            p = pos[i:i + batch]
            logits = self.model((p + self.offset).to(self.device)).float()
            total += float(F.cross_entropy(logits, gather(self.tokens, p).to(self.device), reduction="sum"))
        return total / len(pos)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "rng": self.gen.get_state(), "step": self.step_count, "offset": self.offset, "n": self.n}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if (sd["offset"], sd["n"]) != (self.offset, self.n):
            raise ValueError(f"trainer state was made for a stream of {sd['n']} tokens at offset {sd['offset']}, "
                             f"this trainer has {self.n} at offset {self.offset}")
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["optimizer"])
        self.gen.set_state(sd["rng"].cpu())  # the sampler draws on the CPU whatever map_location said
        self.step_count = int(sd["step"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the trainer state for resuming (torch.save; :meth:`load` reads it with weights_only)."""
        atomic_write(Path(path), lambda p: torch.save(self.state_dict(), p))

    def load(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def save_aunn(directory: str | os.PathLike, model: AUNN, tokenizer: Tokenizer,
              extra: dict[str, str] | None = None) -> str:
    """Write weights (config, next_index and model_id in the metadata), tokenizer and manifest, as
    every checkpoint is written (:func:`plasticlm.checkpoint.save_weights`); returns the model_id."""
    return save_weights(directory, model.config, model.state_dict(), tokenizer,
                        {"arch": "aunn", "next_index": int(model.next_index), **(extra or {})}, weights=WEIGHTS)


def load_aunn(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """Returns (model in eval mode, tokenizer, metadata), verified as every checkpoint is
    (:func:`plasticlm.checkpoint.load_model`). Nothing is unpickled."""
    model, tokenizer, meta = load_model(directory, device)
    if meta.get("arch") != "aunn":
        raise DataError(f"{directory}: not an AUNN checkpoint (arch {meta.get('arch', 'plasticlm')!r})")
    return model, tokenizer, meta
