"""Run logging: a live progress bar, JSON-lines metrics, TensorBoard event files.

``out_dir/metrics.jsonl`` gets one JSON object per logged step (and per evaluation, with
``"valid_loss"``); a resumed run appends, dropping lines past the step it resumed from, so the
file always reads as one uninterrupted run. ``plasticlm plot`` draws it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

METRICS = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (or of a run directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS
    if not p.is_file():
        raise FileNotFoundError(f"no metrics at {p}")
    lines, out = p.read_text().splitlines(), []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines):  # only a last line cut by a crash is forgiven
                    raise ValueError(f"{p}:{i}: not a JSON object: {line[:80]!r}") from None
    return out


class RunLogger:
    """Writes metrics on the main rank only; other ranks get a logger that does nothing."""

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: str, total_steps: int, start_step: int,
                 progress: bool):
        self.enabled = enabled
        self.file = self.tb = self.bar = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / METRICS
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= start_step] if path.exists() and start_step else []
        self.file = path.open("w")
        for r in kept:
            self.file.write(json.dumps(r) + "\n")
        self.file.flush()
        self.tb = self._tensorboard(out_dir / "tb", tensorboard, start_step)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not progress,
                        dynamic_ncols=True, file=sys.stderr)

    @staticmethod
    def _tensorboard(path: Path, mode: str, start_step: int):
        if mode == "disabled":
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode == "required":
                raise ValueError("log.tensorboard=required needs the tensorboard package: pip install 'plasticlm[train]'") from None
            return None
        return SummaryWriter(str(path), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])

    def progress(self, n: int, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def write(self, message: str) -> None:
        """A line that does not break the bar."""
        if self.enabled:
            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        for x in (self.bar, self.file, self.tb):
            if x is not None:
                x.close()
        self.file = self.tb = self.bar = None
