"""What the trainer takes from any pretraining stream: batches, and a resumable cursor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Batch:
    """One optimizer step's worth of rows.

    A stream's rows are whole sequences (``reset`` true, padding at the end). The trainer may cut
    them into windows (``bptt: window``); then ``reset`` marks the rows whose window starts a
    sequence, so that row's carried recurrent state is zeroed (``State.reset``) before reading it.
    """

    tokens: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long: the next token of each position
    weights: torch.Tensor  # (B, T) float: loss weight per position (0 on padding, the shuffled task's ramp)
    reset: torch.Tensor  # (B,) bool: the row starts a new sequence
    lengths: torch.Tensor | None = None  # (B,) long: tokens of each row before its padding (None: no padding)

    def to(self, device) -> "Batch":
        move = [t.to(device, non_blocking=True) for t in (self.tokens, self.targets, self.weights, self.reset)]
        return Batch(*move, None if self.lengths is None else self.lengths.to(device))

    def window(self, a: int, b: int) -> "Batch":
        """Positions [a, b) of every row; only a window starting at 0 starts the rows' sequences."""
        lengths = None if self.lengths is None else (self.lengths - a).clamp(0, b - a)
        return Batch(self.tokens[:, a:b], self.targets[:, a:b], self.weights[:, a:b],
                     self.reset if a == 0 else torch.zeros_like(self.reset), lengths)

    def row_lengths(self) -> torch.Tensor:
        return torch.full_like(self.reset, self.tokens.shape[1], dtype=torch.long) if self.lengths is None \
            else self.lengths


@runtime_checkable
class Stream(Protocol):
    """A deterministic, resumable source of batches (DESIGN 4).

    ``state_dict()`` captures the cursor (position, RNG, epoch) so that a new stream given
    ``load_state_dict(sd)`` yields exactly the batches the old one would have yielded next.
    """

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
