"""What the trainer takes from any pretraining stream: batches, and a resumable cursor."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class Batch:
    """One optimizer step's worth of rows.

    A row may be a whole sequence or one window of a longer one; ``reset`` marks rows whose
    window starts a new sequence, so the trainer zeroes that row's carried recurrent state
    (``State.reset``) before reading it. Everything else carries on from the previous batch.
    """

    tokens: torch.Tensor  # (B, T) long
    targets: torch.Tensor  # (B, T) long: the next token of each position
    weights: torch.Tensor  # (B, T) float: loss weight per position (0 on padding, the shuffled task's ramp)
    reset: torch.Tensor  # (B,) bool: the row starts a new sequence

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) for t in (self.tokens, self.targets, self.weights, self.reset)))


@runtime_checkable
class Stream(Protocol):
    """A deterministic, resumable source of batches (DESIGN 4).

    ``state_dict()`` captures the cursor (position, RNG, epoch) so that a new stream given
    ``load_state_dict(sd)`` yields exactly the batches the old one would have yielded next.
    """

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
