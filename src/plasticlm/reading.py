"""Reading and generation: the recurrent state as a knowledge base that is built, saved and queried.

A :class:`Reader` is a model with its tokenizer and identity. ``reader.read(documents)``
streams text through the model under ``torch.no_grad()`` and returns a :class:`ReadState`:
the memories, the number of tokens and documents read, and the identity of the checkpoint
and tokenizer that wrote them. ``reader.generate(prompt, state)`` answers from it.

Document separation. Each document is read as its tokens followed by one separator token
(``[EOS]`` by default; ``separator=""`` reads documents back to back), so a document reads
the same wherever it falls and a prompt starts, like every document, after a separator.

Why a few tokens wait. The model reads pieces of exactly ``piece`` tokens cut from a buffer of
pending tokens, and at least one token stays pending. The pieces the model sees therefore
depend only on the token stream, never on how reading was split into calls or sessions:
the chunked recurrence sums in another order when a piece is cut elsewhere, so flushing at
each session's end would change the last bits. A saved state carries its pending tokens
(at most ``piece``), generation reads them first, and reading a corpus in several resumed
sessions gives bit-for-bit the state of reading it in one go. Memory stays constant: one
piece of activations, one block of text, never the corpus's tokens.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch

from .checkpoint import load_model, model_id as compute_model_id
from .documents import Documents
from .files import DataError
from .model import PlasticLM
from .sampling import Sampling, TextStream, next_token
from .state import State
from .tokenizer import Tokenizer

__all__ = ["Documents", "Generation", "ReadState", "Reader", "Sampling", "tokenizer_hash"]

FORMAT = "plasticlm.read_state/1"
_SPECIAL = re.compile(r"\[[A-Z][A-Z0-9]*\]")
_FIELDS = ("kind", "model_id", "vocab_size", "tokenizer", "tokens", "documents", "piece", "separator",
           "pending", "checksum", "saved")


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """Hash of the tokenizer's saved file: two tokenizers with equal hashes encode alike."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "tokenizer.json"
        tokenizer.save(path)
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@dataclass
class ReadState:
    """What a model has read: its memories and where they came from. Batch size 1."""

    state: State
    """Memories after ``tokens - len(pending)`` tokens, each layer (1, H, K, V)."""
    pending: list[int]
    """Tokens read but not yet through the model (1 to ``piece`` once anything was read)."""
    tokens: int
    """Tokens read in all, separators and pending tokens included."""
    documents: int
    piece: int
    separator: str
    """Special token after each document ('' for none)."""
    model_id: str
    vocab_size: int
    tokenizer_hash: str

    def copy(self) -> "ReadState":
        # The model never writes into state tensors, so sharing them is safe; the list is not.
        return replace(self, pending=list(self.pending))

    def checksum(self) -> str:
        """sha256 over every tensor byte and every field, so any change to the file is caught."""
        h = hashlib.sha256()
        n = len(self.state.layers)
        for i, (name, s) in enumerate(zip(self.state.names(), self.state.tensors())):
            s = s.detach().cpu().contiguous()
            # Memories hash as they always did (older states without extra kinds still load); the
            # extra kinds, once left out, are hashed with their names.
            h.update(f"{'' if i < n else name}{s.dtype}{tuple(s.shape)}".encode())
            h.update(s.view(torch.uint8).numpy().tobytes())
        fields = [self.pending, self.tokens, self.documents, self.piece, self.separator, self.model_id,
                  self.vocab_size, self.tokenizer_hash]
        h.update(json.dumps(fields).encode())
        return h.hexdigest()

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file (atomically); ``metadata`` adds string fields of your own."""
        clash = set(metadata or {}) & set(_FIELDS)
        if clash:
            raise ValueError(f"metadata keys {sorted(clash)} are reserved for the state's identity")
        meta = {"kind": FORMAT, "model_id": self.model_id, "vocab_size": self.vocab_size,
                "tokenizer": self.tokenizer_hash, "tokens": self.tokens, "documents": self.documents,
                "piece": self.piece, "separator": self.separator, "pending": json.dumps(self.pending),
                "checksum": self.checksum(), "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.state.save(path, {**meta, **(metadata or {})})

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> tuple["ReadState", dict[str, str]]:
        """Read and verify a file written by :meth:`save`; returns (state, metadata).

        Nothing is unpickled (safetensors). A truncated, corrupt or foreign file, or one whose
        fields are out of range (counts below 0, a piece below 1, more pending tokens than a piece
        or than were read), raises :class:`~plasticlm.files.DataError`, even with a checksum
        recomputed to match: the checksum catches accidents, the ranges what a forger could write.
        Whether the state fits a model is :meth:`Reader.check`'s question.
        """
        if not os.path.lexists(path):
            raise FileNotFoundError(f"state file not found: {path}")
        state, meta = State.load(path, device=device)
        if meta.get("kind") != FORMAT:
            raise DataError(f"{path}: a plasticlm state without reading metadata (kind {meta.get('kind')!r}, "
                            f"expected {FORMAT!r}); write reading states with `plasticlm read` or ReadState.save")
        rs = cls(state=state, pending=_field(meta, "pending", path, json.loads), tokens=_field(meta, "tokens", path, int),
                 documents=_field(meta, "documents", path, int), piece=_field(meta, "piece", path, int),
                 separator=meta.get("separator", ""), model_id=meta.get("model_id", ""),
                 vocab_size=_field(meta, "vocab_size", path, int), tokenizer_hash=meta.get("tokenizer", ""))
        if not (isinstance(rs.pending, list) and all(type(t) is int and t >= 0 for t in rs.pending)):
            raise DataError(f"{path}: metadata field 'pending' must be a list of token ids")
        for key, value, low in (("tokens", rs.tokens, 0), ("documents", rs.documents, 0), ("piece", rs.piece, 1),
                                ("vocab_size", rs.vocab_size, 1)):
            if value < low:
                raise DataError(f"{path}: metadata field {key!r} must be >= {low}, got {value}: the file is corrupt")
        if len(rs.pending) > min(rs.piece, rs.tokens) or (rs.tokens > 0 and not rs.pending):
            raise DataError(f"{path}: {len(rs.pending)} pending tokens after {rs.tokens} read in pieces of "
                            f"{rs.piece}: a state keeps 1 to piece tokens pending once anything was read")
        if rs.checksum() != meta.get("checksum"):
            raise DataError(f"{path}: checksum mismatch: the file is corrupt (its tensors or metadata changed "
                            "after it was written)")
        return rs, meta

    def describe(self) -> str:
        return (f"{self.tokens:,} tokens in {self.documents:,} documents, model {self.model_id}, "
                f"tokenizer {self.tokenizer_hash}")


def _field(meta: dict[str, str], key: str, path, parse):
    try:
        return parse(meta[key])
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: metadata field {key!r} is missing or malformed ({meta.get(key)!r}): "
                        f"the file is corrupt") from e


@dataclass
class Generation:
    prompt: str
    text: str
    """The generated text, without the stop string or the separator that ended it."""
    tokens: list[int]
    stop_reason: str
    """'eos' (the separator token), 'stop' (a stop string) or 'length' (max_new_tokens)."""
    state: ReadState
    """The state after the prompt and every generated token: pass it on to continue a conversation."""


class Reader:
    """A model, its tokenizer and its identity; reads text into states and generates from them."""

    def __init__(self, model: PlasticLM, tokenizer: Tokenizer, model_id: str | None = None,
                 piece: int = 4096, separator: str = "[EOS]"):
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model's vocab_size is "
                             f"{model.config.vocab_size}")
        if not isinstance(piece, int) or piece < 1:
            raise ValueError(f"piece must be a positive integer, got {piece!r}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.model_id = model_id or compute_model_id(model.config, model.state_dict())
        self.tokenizer_hash = tokenizer_hash(tokenizer)
        self.piece, self.separator = piece, separator
        self._separator_ids(separator)  # an unknown separator fails here, not mid-corpus
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, checkpoint: str | Path, device: str | torch.device = "cpu", **kwargs) -> "Reader":
        """A Reader for a checkpoint directory written by :func:`plasticlm.checkpoint.save_model`,
        verified as :func:`plasticlm.checkpoint.read_checkpoint` says (model_id computed)."""
        model, tokenizer, meta = load_model(checkpoint, device=device)
        return cls(model, tokenizer, model_id=meta["model_id"], **kwargs)

    # --- states -----------------------------------------------------------------------------
    def new_state(self) -> ReadState:
        return ReadState(self.model.init_state(1), [], 0, 0, self.piece, self.separator, self.model_id,
                         self.tokenizer.vocab_size, self.tokenizer_hash)

    def load_state(self, path: str | Path) -> ReadState:
        """Load a state file and check that this model wrote it."""
        rs, _ = ReadState.load(path, device=self.device)
        self.check(rs, where=str(path))
        return rs

    def check(self, rs: ReadState, where: str = "state") -> None:
        """Refuse a state written by another checkpoint, vocabulary or tokenizer (compared with the
        identity computed from what this Reader loaded), or one whose tensors do not fit the model."""
        if rs.vocab_size != self.tokenizer.vocab_size:
            raise DataError(f"{where}: the state was read with a vocabulary of {rs.vocab_size} tokens, this "
                            f"checkpoint's has {self.tokenizer.vocab_size}: a state only fits the model that read it")
        if rs.tokenizer_hash != self.tokenizer_hash:
            raise DataError(f"{where}: the state was read with another tokenizer ({rs.tokenizer_hash}, this "
                            f"checkpoint's is {self.tokenizer_hash}): a state only fits the model that read it")
        if rs.model_id != self.model_id:
            raise DataError(f"{where}: the state was read by model {rs.model_id}, this checkpoint is "
                            f"{self.model_id}: a state only fits the model that read it")
        want = self.model.init_state(1)
        if rs.state.names() != want.names():
            raise DataError(f"{where}: the state holds tensors {rs.state.names()}, this model's hold {want.names()}")
        for name, t, w in zip(want.names(), rs.state.tensors(), want.tensors()):
            if (tuple(t.shape), t.dtype) != (tuple(w.shape), w.dtype):
                raise DataError(f"{where}: state tensor {name} is {t.dtype} of shape {tuple(t.shape)}, the model "
                                f"expects {w.dtype} of shape {tuple(w.shape)}")
        if any(not 0 <= t < self.tokenizer.vocab_size for t in rs.pending):
            raise DataError(f"{where}: pending token ids out of range [0, {self.tokenizer.vocab_size})")
        if not 1 <= rs.piece or len(rs.pending) > rs.piece:
            raise DataError(f"{where}: {len(rs.pending)} tokens pending for pieces of {rs.piece}")
        self._separator_ids(rs.separator)

    # --- reading ----------------------------------------------------------------------------
    def encode(self, text: str, specials: bool = False) -> list[int]:
        """Token ids of ``text``; with ``specials``, names such as [SEP] become their special tokens."""
        if not specials:
            return self.tokenizer.encode(text)
        ids, at = [], 0
        for m in _SPECIAL.finditer(text):
            try:
                special = self.tokenizer.token_id(m.group())
            except KeyError:
                continue  # not a special token of this tokenizer: plain text
            ids += self.tokenizer.encode(text[at:m.start()]) if m.start() > at else []
            ids.append(special)
            at = m.end()
        return ids + (self.tokenizer.encode(text[at:]) if at < len(text) else [])

    @torch.no_grad()
    def read_tokens(self, ids: Iterable[int], state: ReadState | None = None) -> ReadState:
        """Read raw token ids (no separator added); returns a new state, ``state`` is unchanged."""
        rs = self._start(state)
        self._feed(rs, [int(t) for t in ids])
        return rs

    @torch.no_grad()
    def read(self, documents: str | Iterable[str | Iterable[str]], state: ReadState | None = None, *,
             parse_specials: bool = False, progress: bool = False,
             on_document: Callable[[ReadState], None] | None = None) -> ReadState:
        """Read documents into a copy of ``state`` (a new one if None) and return it.

        ``documents`` is one string, or an iterable of documents, each a string or an iterable
        of text blocks (a :class:`Documents` gives the latter, so a large file is never whole in
        memory). ``on_document`` sees the state after each document (e.g. to save it).
        """
        rs = self._start(state)
        sep = self._separator_ids(rs.separator)
        docs = [documents] if isinstance(documents, str) else documents
        corpus = documents if isinstance(documents, Documents) else None
        from tqdm import tqdm

        bar = tqdm(total=corpus.total_bytes if corpus else None, unit="B" if corpus else "tok", unit_scale=True,
                   desc="read", disable=not progress, dynamic_ncols=True, file=sys.stderr)
        t0, t_post, start_tokens = time.perf_counter(), 0.0, rs.tokens
        for doc in docs:
            for block in [doc] if isinstance(doc, str) else doc:
                ids = self.encode(block, parse_specials)
                self._feed(rs, ids)
                bar.update((corpus.bytes_read - bar.n) if corpus else len(ids))
                if time.perf_counter() - t_post > 0.5:
                    t_post = time.perf_counter()
                    bar.set_postfix_str(f"{(rs.tokens - start_tokens) / (t_post - t0):,.0f} tok/s, "
                                        f"{rs.documents:,} docs", refresh=False)
            self._feed(rs, sep)
            rs.documents += 1
            if on_document is not None:
                on_document(rs.copy())
        bar.close()
        return rs

    def read_files(self, inputs: Iterable[str | Path], state: ReadState | None = None, *, field: str = "text",
                   glob: str = "*", skip_documents: int = 0, **kwargs) -> ReadState:
        """Read files, folders and JSONL files (see :class:`Documents`); keyword arguments go to :meth:`read`."""
        return self.read(Documents(inputs, field=field, glob=glob, skip_documents=skip_documents), state, **kwargs)

    def _start(self, state: ReadState | None) -> ReadState:
        if state is None:
            return self.new_state()
        self.check(state)
        return state.copy()

    def _separator_ids(self, separator: str) -> list[int]:
        if not separator:
            return []
        try:
            return [self.tokenizer.token_id(separator)]
        except KeyError as e:
            raise ValueError(f"separator {separator!r} is not a special token of this tokenizer: {e}") from None

    def _feed(self, rs: ReadState, ids: list[int]) -> None:
        rs.pending += ids
        rs.tokens += len(ids)
        n = (len(rs.pending) - 1) // rs.piece  # whole pieces that can go; one token always stays back
        if n:
            pieces = torch.tensor(rs.pending[:n * rs.piece], device=self.device).view(n, 1, rs.piece)
            for x in pieces:  # (1, piece)
                _, rs.state = self.model.hidden(x, rs.state)
            del rs.pending[:n * rs.piece]

    # --- generation -------------------------------------------------------------------------
    def generate(self, prompt: str, state: ReadState | None = None, sampling: Sampling | None = None,
                 on_text: Callable[[str], None] | None = None) -> Generation:
        """Continue ``prompt`` after what ``state`` has read; ``on_text`` receives text as it is produced.

        Special-token names in the prompt ([SEP], [USER], ...) become their tokens.
        """
        return self.generate_batch([prompt], state, sampling, on_text)[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[str], state: ReadState | None = None, sampling: Sampling | None = None,
                       on_text: Callable[[str], None] | None = None) -> list[Generation]:
        """Generate for several prompts at once, each from the same ``state``, as rows of one batch."""
        if not prompts:
            return []
        if on_text is not None and len(prompts) > 1:
            raise ValueError("on_text streams one generation; pass a single prompt")
        rs, cfg = self._start(state), sampling or Sampling()
        gen = torch.Generator(device=self.device)
        if cfg.seed is None:
            gen.seed()
        else:
            gen.manual_seed(cfg.seed)
        eos = self._separator_ids(rs.separator)[0] if cfg.stop_at_eos and rs.separator else None

        def emit(text: str) -> None:
            if text and on_text is not None:
                on_text(text)

        encoded = [self.encode(p, specials=True) for p in prompts]
        rows = [self._prefill(rs, ids) for ids in encoded]
        logits = torch.cat([r[0] for r in rows])  # (B, V)
        S = State.cat([r[1] for r in rows])  # one row per prompt
        B, V = logits.shape
        seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
        for r, ids in enumerate(encoded):
            seen[r, ids] = True
        streams = [TextStream(self.tokenizer, cfg.stop) for _ in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        done: list[Generation | None] = [None] * B
        for i in range(cfg.max_new_tokens):
            tok = next_token(logits, seen, cfg, gen)  # (B,)
            for r in range(B):
                if done[r] is not None:
                    continue
                t, reason = int(tok[r]), None
                if t == eos:
                    reason = "eos"
                else:
                    out[r].append(t)
                    emit(streams[r].push(t))
                    reason = "stop" if streams[r].stopped else None
                if reason is None and i == cfg.max_new_tokens - 1:
                    reason = "length"
                if reason is not None:
                    emit(streams[r].finish())
                    # The token just sampled stays pending, as after reading (see the module docstring).
                    after = replace(rs, state=S.rows(slice(r, r + 1)).clone(), pending=[t],
                                    tokens=rs.tokens + len(encoded[r]) + i + 1)
                    done[r] = Generation(prompts[r], streams[r].text, out[r], reason, after)
            if all(d is not None for d in done):
                break
            seen[torch.arange(B, device=self.device), tok] = True
            logits, S = self.model.step(tok, S)
        return done  # type: ignore[return-value]

    def _prefill(self, rs: ReadState, ids: list[int]) -> tuple[torch.Tensor, State]:
        """Read the pending tokens and the prompt: (logits (1, V) of the next token, state before it)."""
        ids = rs.pending + ids
        if not ids:
            raise ValueError("nothing to continue from: the prompt is empty and the state has read nothing")
        S = rs.state
        for a in range(0, len(ids) - 1, rs.piece):
            x = torch.tensor(ids[a:min(a + rs.piece, len(ids) - 1)], device=self.device).unsqueeze(0)
            _, S = self.model.hidden(x, S)
        logits, S = self.model(torch.tensor([[ids[-1]]], device=self.device), S)  # (1, 1, V)
        return logits[:, -1], S
