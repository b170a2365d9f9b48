"""The LM interface every evaluation runs on: score tokens with a carried state, and generate.

plasticlm, the baselines and the AUNN each implement it, so one suite measures them all the
same way. What "state" is belongs to the model: plasticlm's recurrent memories, a
Transformer's context, an AUNN's adapted weights.
"""
from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F

from .files import DataError


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy (argmax).

    Non-finite logits are refused: the argmax of NaNs is an arbitrary token and sampling from
    them fails, and either way the model or the state it read is broken.
    """
    if not bool(torch.isfinite(logits).all()):
        raise DataError("the model's next-token logits are not finite (NaN or inf): its weights, or the state "
                        "it read, are broken")
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -float("inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class LM(abc.ABC):
    """A language model as the evaluations see it."""

    vocab_size: int
    device: torch.device
    name: str = "lm"

    @abc.abstractmethod
    def init_state(self, batch_size: int) -> Any:
        """The state before any text is read."""

    @abc.abstractmethod
    def score(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """tokens (B, T) -> (log-probs (B, T, V) of the token after each position, state after reading)."""

    def read(self, tokens: torch.Tensor, state: Any) -> Any:
        """Consume tokens (B, T) without needing their scores."""
        return self.score(tokens, state)[1]

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, state: Any, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None):
        """prompt (B, P >= 1) read after ``state`` -> (new tokens (B, max_new_tokens), state after them)."""
        logp, state = self.score(prompt, state)
        out = []
        for _ in range(max_new_tokens):
            tok = sample_next(logp[:, -1], temperature, top_k, top_p, generator)
            out.append(tok)
            logp, state = self.score(tok.unsqueeze(1), state)
        return torch.stack(out, 1) if out else prompt.new_zeros(prompt.shape[0], 0), state


class PiecewiseLM(LM):
    """An LM over a model with ``forward``/``hidden(tokens, state) -> (out, state)``: long inputs
    are processed in pieces of ``piece`` tokens with the state carried (``_carry`` may bound it)."""

    def __init__(self, model, piece: int = 4096):
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.device = model.embed.weight.device
        self.piece = piece

    def init_state(self, batch_size: int):
        return self.model.init_state(batch_size)

    def _carry(self, state):
        """The state handed to the next piece."""
        return state

    @torch.no_grad()
    def score(self, tokens, state):
        tokens = tokens.to(self.device)
        out = []
        for a in range(0, tokens.shape[1], self.piece):
            logits, state = self.model(tokens[:, a:a + self.piece], state)
            state = self._carry(state)
            out.append(F.log_softmax(logits.float(), -1))
        return torch.cat(out, 1), state

    @torch.no_grad()
    def read(self, tokens, state):
        tokens = tokens.to(self.device)
        for a in range(0, tokens.shape[1], self.piece):
            _, state = self.model.hidden(tokens[:, a:a + self.piece], state)
            state = self._carry(state)
        return state


class PlasticLMAsLM(PiecewiseLM):
    """plasticlm behind the LM interface; long inputs are processed in pieces of ``piece`` tokens."""

    name = "plasticlm"
