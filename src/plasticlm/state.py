"""The recurrent state: one (B, H, K, V) memory per layer, as a first-class object (DESIGN 1.5)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch

FORMAT = "plasticlm.state/1"


@dataclass
class State:
    """Per-layer memories S_l of shape (B, H, K, V). Methods return new states; none works in place."""

    layers: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.layers[0].shape[0]

    def detach(self) -> "State":
        return State([s.detach() for s in self.layers])

    def clone(self) -> "State":
        return State([s.clone() for s in self.layers])

    def to(self, *args, **kwargs) -> "State":
        return State([s.to(*args, **kwargs) for s in self.layers])

    def reset(self, rows: Sequence[int] | torch.Tensor) -> "State":
        """Zero the memories of the given batch rows (a document boundary), keep the others.

        ``rows`` is a list of row indices or a (B,) boolean mask.
        """
        B = self.batch_size
        rows = torch.as_tensor(rows, device=self.layers[0].device)
        if rows.dtype == torch.bool:
            if rows.shape != (B,):
                raise ValueError(f"reset mask must have shape ({B},), got {tuple(rows.shape)}")
            mask = rows
        else:
            if rows.numel() and (rows.min() < 0 or rows.max() >= B):
                raise ValueError(f"reset rows must lie in [0, {B}), got {rows.tolist()}")
            mask = torch.zeros(B, dtype=torch.bool, device=rows.device)
            mask[rows.long()] = True
        keep = (~mask).view(B, 1, 1, 1)
        return State([s * keep.to(s.dtype) for s in self.layers])

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the state as safetensors, atomically (temporary file, fsync, rename)."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "n_layers": str(len(self.layers))}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        tensors = {f"layer.{i}": s.detach().contiguous().cpu() for i, s in enumerate(self.layers)}
        tmp = f"{os.fspath(path)}.tmp"
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple["State", dict[str, str]]:
        """Read a state written by :meth:`save`; returns (state, metadata). Nothing is unpickled."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a plasticlm state file (format {meta.get('format')!r}, "
                                     f"expected {FORMAT!r})")
                n = int(meta["n_layers"])
                keys = set(f.keys())
                want = {f"layer.{i}" for i in range(n)}
                if keys != want:
                    raise ValueError(f"{path}: expected tensors {sorted(want)}, found {sorted(keys)}")
                layers = [f.get_tensor(f"layer.{i}") for i in range(n)]
        except (SafetensorError, json.JSONDecodeError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{path}: cannot read state file (truncated or corrupt?): {e}") from e
        return State(layers), meta
