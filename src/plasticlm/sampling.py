"""Choosing the next token, and turning generated tokens into text as they come.

:class:`Sampling` holds every decoding knob; :func:`next_token` applies the repetition penalty
and hands temperature, top-k and top-p to :func:`plasticlm.lm.sample_next`; :class:`TextStream`
decodes incrementally, through the ``Tokenizer`` protocol only, so a character split over
several byte tokens (or a BPE merge that needs its neighbour) is shown once it is whole, and
text that may be the start of a stop string is held back until it is known not to be one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .lm import sample_next
from .tokenizer import Tokenizer


@dataclass
class Sampling:
    """How :meth:`plasticlm.reading.Reader.generate` picks tokens and when it stops."""

    max_new_tokens: int = 200
    """Most tokens generated per prompt."""
    temperature: float = 0.8
    """Softmax temperature; 0 is greedy decoding (argmax, no randomness)."""
    top_k: int = 0
    """Sample only among the k most likely tokens; 0 keeps all."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1 keeps all."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty (Keskar et al. 2019) on tokens already in the prompt or the output:
    a positive logit is divided by it, a negative one multiplied; 1 disables. The text read
    into the state is not counted, only the prompt and what was generated."""
    stop: tuple[str, ...] = ()
    """Generation ends when one of these strings appears in the output; the string is cut off."""
    stop_at_eos: bool = True
    """End when the model emits the document separator token ([EOS])."""
    seed: int | None = 0
    """Seed of the sampling generator (None: fresh randomness); the same seed, prompts and
    batch size give the same output."""

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", _finite(self.temperature) and self.temperature >= 0, "a number >= 0 (0 is greedy)"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0 (0 keeps all tokens)"),
            ("top_p", _finite(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("repetition_penalty", _finite(self.repetition_penalty) and self.repetition_penalty > 0,
             "a number > 0 (1 disables it)"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings"),
            ("seed", self.seed is None or isinstance(self.seed, int), "an integer or None"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"Sampling.{name} must be {rule}, got {getattr(self, name)!r}")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V), seen (B, V) bool -> logits with seen tokens made less likely."""
    if penalty == 1.0:
        return logits
    logits = logits.float()
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def next_token(logits: torch.Tensor, seen: torch.Tensor, cfg: Sampling,
               generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) of the next position -> token ids (B,)."""
    logits = penalize(logits, seen, cfg.repetition_penalty)
    return sample_next(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)


@dataclass
class TextStream:
    """Tokens in, text out, as soon as it is safe to show.

    Decoding follows the prefix/read-offset scheme of text-generation-inference: the new
    text is ``decode(ids[prefix:]) - decode(ids[prefix:read])``, so tokenizers whose pieces
    decode differently in context work too, and each step decodes a few tokens, not all of
    them. Text ending in U+FFFD (an unfinished UTF-8 character) waits for the next token, at
    most ``hold_tokens`` tokens, after which it is shown as it is (the model wrote invalid UTF-8).
    """

    tokenizer: Tokenizer
    stop: tuple[str, ...] = ()
    hold_tokens: int = 8
    text: str = ""
    """Everything decoded so far, cut before the stop string once one is found."""
    stopped: bool = False
    ids: list[int] = field(default_factory=list)
    _prefix: int = 0
    _read: int = 0
    _shown: int = 0

    def push(self, token: int) -> str:
        """Add one generated token; returns the text that can now be shown (often '')."""
        if self.stopped:
            raise RuntimeError("TextStream.push after a stop string was found")
        self.ids.append(int(token))
        before = self.tokenizer.decode(self.ids[self._prefix:self._read])
        after = self.tokenizer.decode(self.ids[self._prefix:])
        waiting = after.endswith("\ufffd") and len(self.ids) - self._read < self.hold_tokens
        if len(after) > len(before) and not waiting:
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: decode what is left and release everything held back."""
        if not self.stopped and self._read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self._prefix:self._read])
            self.text += self.tokenizer.decode(self.ids[self._prefix:])[len(before):]
            self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        longest = max((len(s) for s in self.stop), default=0)
        # Text already shown holds no whole stop string, so a match must end in the new part.
        start = max(0, self._shown - longest + 1)
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True
            end = len(self.text)
        elif final:
            end = len(self.text)
        else:
            end = len(self.text) - _held_back(self.text, self.stop)
        out, self._shown = self.text[self._shown:end], max(self._shown, end)
        return out


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of a stop string."""
    for n in range(min(len(text), max((len(s) - 1 for s in stop), default=0)), 0, -1):
        if any(s.startswith(text[-n:]) for s in stop):
            return n
    return 0
