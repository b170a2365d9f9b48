"""Where the trainer's batches come from: stream kinds by name, and the built-in byte stream.

The trainer reads data only through the :class:`plasticlm.data.stream.Stream` protocol. A kind
is registered with :func:`register_stream` as ``build(data: DataConfig, *, split, rank,
world_size, seed) -> Stream`` and ``tokenizer(data) -> Tokenizer``; the pretraining tasks
('traditional', 'linked', 'shuffled') plug in the same way.

:class:`ByteStream` ('bytes') reads UTF-8 bytes of a text: each row follows one long sequence
of ``doc_len`` tokens (a random span of the text), one window of ``seq_len`` tokens per batch,
so the recurrent state is carried across steps and reset only where a new sequence starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..data.stream import Batch, Stream
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


class ByteStream:
    """Rows that each read one long sequence window by window; see the module docstring."""

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, doc_len: int, seed: int,
                 rank: int = 0, pad: int = 256):
        self.ids, self.B, self.T, self.D, self.pad = ids, batch_size, seq_len, doc_len or seq_len, pad
        if len(ids) < self.D + 1:
            raise ValueError(f"the text holds {len(ids)} tokens, fewer than one sequence of doc_len + 1 = {self.D + 1}")
        self.rng = np.random.default_rng([seed, rank])  # ranks draw disjoint random streams
        self.start = [0] * self.B
        self.pos = [self.D] * self.B  # every row starts by drawing a sequence

    def next_batch(self) -> Batch:
        B, T = self.B, self.T
        tokens = torch.full((B, T), self.pad, dtype=torch.long)
        targets = torch.full((B, T), self.pad, dtype=torch.long)
        weights = torch.zeros(B, T)
        reset = torch.zeros(B, dtype=torch.bool)
        for r in range(B):
            if self.pos[r] >= self.D:
                self.start[r] = int(self.rng.integers(0, len(self.ids) - self.D))
                self.pos[r] = 0
                reset[r] = True
            a = self.start[r] + self.pos[r]
            n = min(T, self.D - self.pos[r])  # the last window of a sequence may be short
            tokens[r, :n] = self.ids[a:a + n]
            targets[r, :n] = self.ids[a + 1:a + n + 1]
            weights[r, :n] = 1.0
            self.pos[r] += n
        return Batch(tokens, targets, weights, reset)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "bytes", "rng": self.rng.bit_generator.state, "start": list(self.start), "pos": list(self.pos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "bytes" or len(state["start"]) != self.B:
            raise ValueError(f"stream state is for kind {state.get('kind')!r} with {len(state.get('start', []))} rows, "
                             f"this is a bytes stream with {self.B} rows")
        self.rng.bit_generator.state = state["rng"]
        self.start, self.pos = list(state["start"]), list(state["pos"])


def _byte_stream(data: DataConfig, *, split: str, rank: int, world_size: int, seed: int) -> ByteStream:
    ids = byte_ids(data.source)
    n_valid = max((data.doc_len or data.seq_len) + 1, int(len(ids) * data.valid_fraction))
    if len(ids) < 2 * n_valid:
        raise ValueError(f"data.source holds {len(ids)} tokens: too few for sequences of {n_valid} tokens "
                         "plus a validation split")
    if split not in ("train", "valid"):
        raise ValueError(f"bytes stream: split must be 'train' or 'valid', got {split!r}")
    part = ids[:-n_valid] if split == "train" else ids[-n_valid:]
    doc_len = data.doc_len if split == "train" else min(data.doc_len or data.seq_len, n_valid - 1)
    return ByteStream(part, data.batch_size // world_size, data.seq_len, doc_len,
                      seed=seed if split == "train" else 12345, rank=rank)


register_stream("bytes", _byte_stream, lambda data: ByteTokenizer())


# ---- the pretraining tasks of DESIGN 4 (plasticlm.data.streams) -------------------------------
# data.source is a directory written by `plasticlm prepare`; data.options holds the kind's own
# config fields (e.g. min_tokens, rosetta, ramp_tokens). The shuffled task trains on the
# holdout split and validates on a shuffled valid split; the others use train and valid.
TASK_SPLITS = {"traditional": ("train", "valid"), "linked": ("train", "valid"), "shuffled": ("holdout", "valid")}


def _task_stream(kind: str):
    def build(data: DataConfig, *, split: str, rank: int, world_size: int, seed: int) -> Stream:
        from ..data.streams import build_stream as build_task

        if split not in ("train", "valid"):
            raise ValueError(f"{kind} stream: split must be 'train' or 'valid', got {split!r}")
        opts = {"seq_len": data.seq_len, "batch_size": data.batch_size // world_size,
                "seed": seed if split == "train" else seed + 1, **data.options}
        return build_task(kind, data=data.source, split=TASK_SPLITS[kind][split == "valid"], rank=rank,
                          world_size=world_size, **opts)

    return build


def _task_tokenizer(data: DataConfig):
    from ..data.shards import load_prepared

    return load_prepared(Path(data.source))[1]


for _kind_name in TASK_SPLITS:
    register_stream(_kind_name, _task_stream(_kind_name), _task_tokenizer)
