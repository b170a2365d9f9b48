"""The recurrent state: one (B, H, K, V) memory per layer, and what else a layer carries (DESIGN 1.5)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .files import DataError, atomic_write, regular_file

FORMAT = "plasticlm.state/1"
EXTRA_KINDS = ("conv", "log_gate_prod")
"""What a layer may carry beside its memory: 'conv', the last (w - 1) inputs of its short
convolution, (B, w - 1, C); 'log_gate_prod', log prod a since the sequence began, (B, H, K), which
the bias correction of the readout divides by (1 - prod a)."""
EMBED_KINDS = ("table", "log_gate_prod", "context")
"""What a model with mutable embeddings carries once, beside its layers (plasticlm.embedding):
'table' (B, m, d), its 'log_gate_prod' (B, m) and the last base embeddings, 'context' (B, w - 1, d)."""


@dataclass
class State:
    """Per-layer memories S_l of shape (B, H, K, V), plus the per-layer ``extra`` tensors of
    :data:`EXTRA_KINDS` that the model's config asks for, plus the mutable embedding's parts
    (``embed``, :data:`EMBED_KINDS`, one tensor each) when it has one. Every method returns a new
    state; none works in place. A zero state is the state before any token, for every kind: an
    empty memory or table, zero padding before a convolution, and prod a = 1 (log 0)."""

    layers: list[torch.Tensor]
    extra: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    embed: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, ts in self.extra.items():
            if kind not in EXTRA_KINDS:
                raise ValueError(f"unknown state kind {kind!r}; known: {EXTRA_KINDS}")
            if len(ts) != len(self.layers):
                raise ValueError(f"state kind {kind!r} has {len(ts)} layers, the memories have {len(self.layers)}")
        bad = sorted(set(self.embed) - set(EMBED_KINDS))
        if bad:
            raise ValueError(f"unknown embedding state parts {bad}; known: {EMBED_KINDS}")

    @property
    def batch_size(self) -> int:
        return self.layers[0].shape[0]

    # -- per layer ---------------------------------------------------------------------------------
    def layer(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's part: {'memory': S, and each extra kind}."""
        return {"memory": self.layers[i], **{k: v[i] for k, v in self.extra.items()}}

    @staticmethod
    def from_layers(parts: Sequence[dict[str, torch.Tensor]], embed: dict[str, torch.Tensor] | None = None) -> "State":
        kinds = [k for k in parts[0] if k != "memory"]
        return State([p["memory"] for p in parts], {k: [p[k] for p in parts] for k in kinds}, dict(embed or {}))

    # -- every tensor ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Names of :meth:`tensors`, in order: 'layer.i', then 'KIND.i' for each extra kind (sorted),
        then 'embed.PART' for each part of the mutable embedding (sorted)."""
        return [f"layer.{i}" for i in range(len(self.layers))] + [
            f"{k}.{i}" for k in sorted(self.extra) for i in range(len(self.layers))] + [
            f"embed.{k}" for k in sorted(self.embed)]

    def tensors(self) -> list[torch.Tensor]:
        return (list(self.layers) + [t for k in sorted(self.extra) for t in self.extra[k]]
                + [self.embed[k] for k in sorted(self.embed)])

    def with_tensors(self, tensors: Sequence[torch.Tensor]) -> "State":
        """A state of this structure holding ``tensors`` (in the order of :meth:`tensors`)."""
        n = len(self.layers)
        tensors = list(tensors)
        extra = {k: tensors[n * (j + 1):n * (j + 2)] for j, k in enumerate(sorted(self.extra))}
        rest = tensors[n * (len(self.extra) + 1):]
        return State(tensors[:n], extra, dict(zip(sorted(self.embed), rest)))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "State":
        return self.with_tensors([fn(t) for t in self.tensors()])

    def detach(self) -> "State":
        return self.map(torch.Tensor.detach)

    def clone(self) -> "State":
        return self.map(torch.Tensor.clone)

    def to(self, *args, **kwargs) -> "State":
        return self.map(lambda t: t.to(*args, **kwargs))

    def rows(self, index: slice | Sequence[int]) -> "State":
        """The state of some batch rows."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(states: Sequence["State"]) -> "State":
        """Batch rows of several states of one structure, stacked."""
        columns = zip(*(s.tensors() for s in states))
        return states[0].with_tensors([torch.cat(c) for c in columns])

    def reset(self, rows: Sequence[int] | torch.Tensor) -> "State":
        """Zero the state of the given batch rows (a document boundary), keep the others.

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
        keep = ~mask
        return self.map(lambda t: t * keep.view(B, *[1] * (t.dim() - 1)).to(t.dtype))

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the state as safetensors, atomically (temporary file, fsync, rename), and only
        ever to a regular file (see :func:`plasticlm.files.atomic_write`)."""
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "n_layers": str(len(self.layers)), "extra": ",".join(sorted(self.extra)),
                "embed": ",".join(sorted(self.embed))}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        tensors = {n: t.detach().contiguous().cpu() for n, t in zip(self.names(), self.tensors())}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @staticmethod
    def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple["State", dict[str, str]]:
        """Read a state written by :meth:`save`; returns (state, metadata). Nothing is unpickled.

        The file must be a regular file (a FIFO or device is refused unopened); its layer count is
        bounded by the tensors it holds before anything is built from it, and every tensor must be
        a finite floating-point one. DataError names the file and the fault.
        """
        from safetensors import SafetensorError, safe_open

        regular_file(path)
        try:
            with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise DataError(f"{path}: not a plasticlm state file (format {meta.get('format')!r}, "
                                    f"expected {FORMAT!r})")
                keys = set(f.keys())
                n = meta.get("n_layers", "")
                if not (n.isdigit() and 1 <= int(n) <= len(keys)):
                    raise DataError(f"{path}: metadata field 'n_layers' must be a count from 1 to the {len(keys)} "
                                    f"tensors the file holds, got {n!r}: the file is corrupt")
                n = int(n)
                kinds = [k for k in meta.get("extra", "").split(",") if k]
                bad = sorted(set(kinds) - set(EXTRA_KINDS))
                if bad:
                    raise DataError(f"{path}: unknown state kinds {bad}; known: {EXTRA_KINDS}")
                parts = [k for k in meta.get("embed", "").split(",") if k]
                bad = sorted(set(parts) - set(EMBED_KINDS))
                if bad:
                    raise DataError(f"{path}: unknown embedding state parts {bad}; known: {EMBED_KINDS}")
                skeleton = State([torch.empty(0)] * n, {k: [torch.empty(0)] * n for k in kinds},
                                 {k: torch.empty(0) for k in parts})
                want = set(skeleton.names())
                if keys != want:
                    raise DataError(f"{path}: expected tensors {sorted(want)}, found {sorted(keys)}")
                tensors = [f.get_tensor(name) for name in skeleton.names()]
        except (SafetensorError, json.JSONDecodeError, OSError) as e:
            raise DataError(f"{path}: cannot read state file (truncated or corrupt?): {e}") from None
        for name, t in zip(skeleton.names(), tensors):
            if not t.is_floating_point():
                raise DataError(f"{path}: state tensor {name} has dtype {t.dtype}, not a floating-point one")
            if not bool(torch.isfinite(t).all()):
                raise DataError(f"{path}: state tensor {name} holds non-finite values (NaN or inf): refused")
        return skeleton.with_tensors(tensors), meta
