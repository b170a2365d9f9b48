"""Where the trainer's batches come from: stream kinds by name, and the built-in byte stream.

The trainer reads data only through the :class:`plasticlm.data.batch.Stream` protocol. A kind
is registered with :func:`register_stream` as ``build(data: DataConfig, *, split, rank,
world_size, seed) -> Stream`` and ``tokenizer(data) -> Tokenizer``; the pretraining tasks
('traditional', 'linked', 'shuffled') plug in the same way.

:class:`ByteStream` ('bytes') reads UTF-8 bytes of a text: a batch holds ``batch_size`` whole
sequences, random spans of the text, all of one length drawn uniformly in [``min_len``,
``seq_len``] for that batch (so there is no padding). Its ``data.options`` are
:class:`RepeatConfig` fields: a share of training rows can carry a random string written twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data.batch import Batch, Stream
from ..tokenizer import ByteTokenizer
from .config import DataConfig


@dataclass
class StreamKind:
    build: Callable[..., Stream]
    tokenizer: Callable[[DataConfig], Any]


STREAMS: dict[str, StreamKind] = {}


def register_stream(kind: str, build: Callable[..., Stream], tokenizer: Callable[[DataConfig], Any]) -> None:
    STREAMS[kind] = StreamKind(build, tokenizer)


def is_registered(kind: str) -> bool:
    return kind in STREAMS


def _kind(data: DataConfig) -> StreamKind:
    if data.kind not in STREAMS:
        raise ValueError(f"data.kind {data.kind!r} is not a registered stream kind; registered: {sorted(STREAMS)}")
    return STREAMS[data.kind]


def build_stream(data: DataConfig, *, split: str = "train", rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> Stream:
    """The stream of ``data.kind`` for one rank; each rank reads batch_size / world_size rows."""
    if data.batch_size % world_size:
        raise ValueError(f"data.batch_size={data.batch_size} must be divisible by the {world_size} ranks")
    stream = _kind(data).build(data, split=split, rank=rank, world_size=world_size, seed=seed)
    if not isinstance(stream, Stream):
        raise TypeError(f"stream kind {data.kind!r} built a {type(stream).__name__}, which lacks the Stream "
                        "methods next_batch/state_dict/load_state_dict")
    return stream


def stream_tokenizer(data: DataConfig):
    return _kind(data).tokenizer(data)


def load_text(source: str) -> str:
    if source == "builtin":
        from ..data.builtin import builtin_corpus

        return builtin_corpus()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source: {source!r} is neither 'builtin' nor an existing text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.source {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ValueError(f"data.source {path}: the file is empty")
    return text


_TEXT_CACHE: dict[str, torch.Tensor] = {}


def byte_ids(source: str) -> torch.Tensor:
    if source not in _TEXT_CACHE:
        _TEXT_CACHE[source] = torch.frombuffer(bytearray(load_text(source).encode("utf-8")), dtype=torch.uint8).long()
    return _TEXT_CACHE[source]


@dataclass
class RepeatConfig:
    """The 'bytes' stream's options (``data.options``): random strings read twice, in text."""

    fraction: float = 0.0
    """Share of training rows that carry a random printable string (bytes 32-126) written twice
    in a row at a random place. The second copy is predictable only from the first, so a model
    trained on such rows is rewarded for copying what it read: E3's induction positive control.
    0 leaves the stream as it was, draw for draw."""
    min_len: int = 16
    max_len: int = 512
    """The string's length, drawn log-uniformly in [min_len, max_len] and cut to half the row."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"data.options.fraction must lie in [0, 1], got {self.fraction}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"data.options: need 1 <= min_len <= max_len, got {self.min_len} and {self.max_len}")


class ByteStream:
    """Batches of whole byte sequences (see the module docstring)."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, min_len: int, seed: int, rank: int = 0,
                 repeat: RepeatConfig | None = None):
        self.ids, self.B, self.T, self.min_len = ids, batch_size, seq_len, min_len or seq_len
        self.repeat = repeat or RepeatConfig()
        if len(ids) < self.T + 1:
            raise ValueError(f"the text holds {len(ids)} tokens, fewer than one sequence of seq_len + 1 = {self.T + 1}")
        self.rng = np.random.default_rng([seed, rank])  # ranks draw disjoint random streams

    def next_batch(self) -> Batch:
        L = int(self.rng.integers(self.min_len, self.T + 1))
        starts = torch.from_numpy(self.rng.integers(0, len(self.ids) - L, self.B))
        seq = self.ids[starts[:, None] + torch.arange(L + 1)]  # (B, L + 1), a copy: the text is never written
        if self.repeat.fraction > 0:  # no draws otherwise: a plain stream stays as it always was
            self._write_repeats(seq)
        return Batch(seq[:, :-1], seq[:, 1:], torch.ones(self.B, L), torch.ones(self.B, dtype=torch.bool),
                     torch.full((self.B,), L))

    def _write_repeats(self, seq: torch.Tensor) -> None:
        """Write each chosen row's string twice into ``seq`` (B, L + 1), in place."""
        r = self.repeat
        n = seq.shape[1]  # L + 1 tokens: inputs and targets share the copies
        lo, hi = min(r.min_len, n // 2), min(r.max_len, n // 2)  # both >= 1: n >= 2, min_len >= 1
        for b in np.flatnonzero(self.rng.random(self.B) < r.fraction):
            m = int(round(math.exp(self.rng.uniform(math.log(lo), math.log(hi)))))
            at = int(self.rng.integers(0, n - 2 * m + 1))
            s = torch.from_numpy(self.rng.integers(32, 127, m))
            seq[b, at:at + m] = s
            seq[b, at + m:at + 2 * m] = s

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "bytes", "rng": self.rng.bit_generator.state, "rows": self.B}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "bytes" or state.get("rows") != self.B:
            raise ValueError(f"stream state is for kind {state.get('kind')!r} with {state.get('rows')} rows, "
                             f"this is a bytes stream with {self.B} rows")
        self.rng.bit_generator.state = state["rng"]


def _byte_stream(data: DataConfig, *, split: str, rank: int, world_size: int, seed: int) -> ByteStream:
    ids = byte_ids(data.source)
    n_valid = max(data.seq_len + 1, int(len(ids) * data.valid_fraction))
    if len(ids) < 2 * n_valid:
        raise ValueError(f"data.source holds {len(ids)} tokens: too few for sequences of {data.seq_len} tokens "
                         "plus a validation split")
    if split not in ("train", "valid"):
        raise ValueError(f"bytes stream: split must be 'train' or 'valid', got {split!r}")
    from ..settings import from_dict

    repeat = from_dict(RepeatConfig, data.options, "data.options")
    part = ids[:-n_valid] if split == "train" else ids[-n_valid:]
    # Validation always reads plain sequences of seq_len, so its loss is comparable from run to run.
    if split == "valid":
        return ByteStream(part, data.batch_size // world_size, data.seq_len, 0, seed=12345, rank=rank)
    return ByteStream(part, data.batch_size // world_size, data.seq_len, data.min_len, seed=seed, rank=rank,
                      repeat=repeat)


register_stream("bytes", _byte_stream, lambda data: ByteTokenizer())


# ---- the pretraining tasks of DESIGN 4 (plasticlm.data.pretraining) -------------------------------
# data.source is a directory written by `plasticlm prepare`; data.options holds the kind's own
# config fields (e.g. min_tokens, rosetta, ramp_tokens). The shuffled task trains on the
# holdout split and validates on a shuffled valid split; the others use train and valid.
TASK_SPLITS = {"traditional": ("train", "valid"), "linked": ("train", "valid"), "shuffled": ("holdout", "valid")}


def _task_stream(kind: str):
    def build(data: DataConfig, *, split: str, rank: int, world_size: int, seed: int) -> Stream:
        from ..data.pretraining import pretraining_stream

        if split not in ("train", "valid"):
            raise ValueError(f"{kind} stream: split must be 'train' or 'valid', got {split!r}")
        opts = {"seq_len": data.seq_len, "batch_size": data.batch_size // world_size,
                "seed": seed if split == "train" else seed + 1, **data.options}
        return pretraining_stream(kind, data=_prepared_source(data), split=TASK_SPLITS[kind][split == "valid"], rank=rank,
                          world_size=world_size, **opts)

    return build


OFFLINE_HINT = ("build the offline corpus with `plasticlm build-corpus data/offline --install` and "
                "`plasticlm prepare data/offline/graph.jsonl data/graph --vocab-size 32768`, or set data.source to a "
                "directory written by `plasticlm prepare`")


def _prepared_source(data: DataConfig) -> Path:
    path = Path(data.source)
    if not path.is_dir():
        raise FileNotFoundError(f"data.source {data.source!r} (data.kind={data.kind!r}) is not a prepared corpus "
                                f"directory: {OFFLINE_HINT}")
    return path


def _task_tokenizer(data: DataConfig):
    from ..data.shards import load_prepared

    return load_prepared(_prepared_source(data))[1]


for _kind_name in TASK_SPLITS:
    register_stream(_kind_name, _task_stream(_kind_name), _task_tokenizer)


# ---- synthetic recall tasks (plasticlm.data.recall): data.options holds RecallConfig fields -----
def _recall_stream(task: str):
    def build(data: DataConfig, *, split: str, rank: int, world_size: int, seed: int) -> Stream:
        from ..data.recall import RecallConfig, RecallStream
        from ..settings import from_dict

        cfg = from_dict(RecallConfig, {"task": task, **data.options}, "data.options")
        if cfg.length(data.seq_len) > data.seq_len:
            raise ValueError(f"data.seq_len={data.seq_len} is shorter than a {task} sequence "
                             f"({cfg.length(data.seq_len)} tokens)")
        if split not in ("train", "valid"):
            raise ValueError(f"{task} stream: split must be 'train' or 'valid', got {split!r}")
        # The valid split draws from its own seeds: no training sequence is ever scored.
        return RecallStream(cfg, data.batch_size // world_size, cfg.length(data.seq_len),
                            seed=seed if split == "train" else 1_000_003 + seed, rank=rank)

    return build


for _task in ("mqar", "gap_recall"):
    register_stream(_task, _recall_stream(_task), lambda data: ByteTokenizer())
