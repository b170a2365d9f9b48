"""Reading by gradient steps: the AUNN's state and its LM interface.

An AUNN has no hidden state; what it has read lives in its weights. Its state is therefore
(per row of a batch) the adapted weights, the next free index, the online optimizer's
moments, and the last few tokens read (for rehearsal). To read tokens x_n, x_{n+1}, ... the
model appends them at indices n, n+1, ... and takes k gradient steps on those pairs; to
predict what follows, it evaluates the first unseen index.

Scoring is dynamic evaluation (Krause et al., 2018), predict-then-train, chunk by chunk.
With ``chunk_len`` C, the positions of a ``score`` call are cut into chunks [a, a + C); the
prediction at position t (of the token at index n + t + 1) uses the weights after training
on every token at positions <= a, the first position of t's chunk. So with C = 1 each
prediction is conditioned on every token up to and including t, exactly as a recurrent model's;
with C > 1 the later positions of a chunk do not see the earlier ones. No prediction ever
sees its own target. Training groups are therefore [0, 1), [1, C + 1), [C + 1, 2C + 1), ...
and the rest after the last prediction; ``read`` uses the same groups, so ``read`` and
``score`` leave identical states.

Cost: every group takes k forward/backward passes over at most max(window, C) pairs per row,
so reading T tokens costs about k * T / C such passes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..lm import LM, sample_next
from .config import OnlineConfig
from .model import AUNN


@dataclass
class AUNNState:
    """What an AUNN has read, per row. Methods return new states; none works in place, so one
    state can be branched into several evaluations (``clone`` is only needed to change device
    or to break sharing deliberately)."""

    params: dict[str, torch.Tensor]
    """The adapted weights: every parameter name of the model -> (B, *shape)."""
    next_index: torch.Tensor
    """(B,) int64: the index the next token read will take."""
    recent: torch.Tensor
    """(B, R) int64: the last R <= window tokens read, at indices next_index - R ... next_index - 1."""
    moments: dict[str, torch.Tensor] = field(default_factory=dict)
    """Adam's moments per parameter name, 'm.<name>' and 'v.<name>' (B, *shape); empty for sgd."""
    updates: int = 0
    """Online optimizer steps taken (Adam's bias correction); every row takes every step."""

    @property
    def batch_size(self) -> int:
        return self.next_index.shape[0]

    def _map(self, fn) -> "AUNNState":
        return AUNNState(params={k: fn(v) for k, v in self.params.items()}, next_index=fn(self.next_index),
                         recent=fn(self.recent), moments={k: fn(v) for k, v in self.moments.items()},
                         updates=self.updates)

    def clone(self) -> "AUNNState":
        return self._map(torch.clone)

    def detach(self) -> "AUNNState":
        return self._map(torch.Tensor.detach)

    def to(self, *args, **kwargs) -> "AUNNState":
        return self._map(lambda t: t.to(*args, **kwargs))


class AUNNAsLM(LM):
    """An AUNN behind the LM interface: read = k gradient steps on the new (index, token) pairs."""

    name = "aunn"

    def __init__(self, model: AUNN, online: OnlineConfig | None = None):
        self.model = model
        self.online = online or OnlineConfig()
        self.vocab_size = model.config.vocab_size
        self.device = model.head.weight.device

    def init_state(self, batch_size: int) -> AUNNState:
        """Every row starts from the model's weights, reading at ``model.next_index``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        B = batch_size
        params = {k: p.detach().unsqueeze(0).expand(B, *p.shape).clone() for k, p in self.model.named_parameters()}
        moments = {}
        if self.online.optimizer == "adam":
            moments = {f"{m}.{k}": torch.zeros_like(v) for m in "mv" for k, v in params.items()}
        return AUNNState(params=params, next_index=self.model.next_index.detach().expand(B).clone(),
                         recent=torch.zeros(B, 0, dtype=torch.long, device=self.device), moments=moments)

    @torch.no_grad()
    def log_probs_at(self, index: torch.Tensor, state: AUNNState) -> torch.Tensor:
        """index (B, N) int64 -> log-probs (B, N, V) of the token at each index under the state's weights."""
        return F.log_softmax(self.model(index.to(self.device), state.params).float(), -1)

    def _next_log_probs(self, state: AUNNState, n: int) -> torch.Tensor:
        """Log-probs (B, n, V) of the n indices after the last one read."""
        idx = state.next_index[:, None] + torch.arange(n, device=self.device)  # (B, n)
        return self.log_probs_at(idx, state)

    def _groups(self, T: int):
        """Yield (a, b, lo, hi): train on positions [lo, hi), then predict positions [a, b) (module doc)."""
        C, done = self.online.chunk_len, 0
        for a in range(0, T, C):
            yield a, min(a + C, T), done, a + 1
            done = a + 1
        if done < T:
            yield T, T, done, T

    def score(self, tokens: torch.Tensor, state: AUNNState):
        """tokens (B, T) -> (log-probs (B, T, V), state after reading them); see the module doc for
        which tokens each prediction is conditioned on."""
        tokens = self._check(tokens, state)
        out = []
        with _reading():
            work = self._own(state)
            for a, b, lo, hi in self._groups(tokens.shape[1]):
                self._read_in_place(tokens[:, lo:hi], work)
                if b > a:
                    out.append(self._next_log_probs(work, b - a))
        return torch.cat(out, 1), work

    def read(self, tokens: torch.Tensor, state: AUNNState) -> AUNNState:
        """The state ``score`` would return, without the predictions."""
        tokens = self._check(tokens, state)
        with _reading():
            work = self._own(state)
            for _, _, lo, hi in self._groups(tokens.shape[1]):
                self._read_in_place(tokens[:, lo:hi], work)
        return work

    def fit(self, tokens: torch.Tensor, state: AUNNState) -> AUNNState:
        """Append tokens (B, n) at the next indices and take k steps on the last max(window, n) tokens
        read, all in one group (``read`` cuts its input into the groups ``score`` uses)."""
        tokens = self._check(tokens, state)
        with _reading():
            work = self._own(state)
            self._read_in_place(tokens, work)
        return work

    def generate(self, prompt, state, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, generator=None):
        """Read the prompt; then predict the first unseen index, sample, train on the sampled pair, repeat.

        Returns (new tokens (B, max_new_tokens), state after reading them). The same generator
        seed gives the same tokens (the steps themselves draw no random numbers).
        """
        work = self.read(prompt, state)  # a fresh state: this call's own
        out = []
        for _ in range(max_new_tokens):
            tok = sample_next(self._next_log_probs(work, 1)[:, 0], temperature, top_k, top_p, generator)  # (B,)
            out.append(tok)
            with _reading():
                self._read_in_place(tok[:, None], work)
        return (torch.stack(out, 1) if out else prompt.new_zeros(prompt.shape[0], 0)), work

    def _own(self, state: AUNNState) -> AUNNState:
        """A copy this call may update in place; the caller's state is never touched, so states branch.
        Copies made here are also ordinary tensors when ``state`` was made under inference_mode."""
        return state.clone()

    def _read_in_place(self, tokens: torch.Tensor, work: AUNNState) -> None:
        """Append tokens (B, n) at work's next indices; k steps on its last max(window, n) tokens."""
        cfg = self.online
        B, n = tokens.shape
        if n == 0:
            return
        recent = torch.cat([work.recent, tokens.clone()], 1)  # (B, R + n)
        targets = recent[:, -max(cfg.window, n):]  # (B, m)
        work.next_index = work.next_index + n  # (B,)
        index = work.next_index[:, None] - targets.shape[1] + torch.arange(targets.shape[1], device=self.device)
        names = list(work.params)
        params = [work.params[k] for k in names]
        for _ in range(cfg.steps):
            leaves = [p.detach().requires_grad_() for p in params]
            logits = self.model(index, dict(zip(names, leaves)))  # (B, m, V)
            # Sum over rows of each row's mean loss: row b's gradient is its own, so rows stay independent.
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
            grads = list(torch.autograd.grad(loss.view(B, -1).mean(1).sum(), leaves))
            work.updates += 1
            self._update(names, params, grads, work.moments, work.updates)
        work.recent = recent[:, -cfg.window:] if cfg.window else recent[:, :0]

    @torch.no_grad()
    def _update(self, names, params, grads, moments, t: int) -> None:
        """One step on every row, in place on ``params`` and ``moments`` (this call's own copies)."""
        cfg = self.online
        B = params[0].shape[0]
        if cfg.grad_clip > 0:  # per row, so rows stay independent
            norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))  # (B,)
            scale = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale.view(B, *[1] * (g.dim() - 1)) for g in grads]
        if cfg.decay > 0:  # Krause et al.: theta - lr * step + lambda * (theta_0 - theta), theta before the step
            base = dict(self.model.named_parameters())
            torch._foreach_lerp_(params, [base[k].detach().expand_as(p) for k, p in zip(names, params)], cfg.decay)
        if cfg.optimizer == "sgd":
            torch._foreach_add_(params, grads, alpha=-cfg.lr)
            return
        m = [moments[f"m.{k}"] for k in names]
        v = [moments[f"v.{k}"] for k in names]
        torch._foreach_lerp_(m, grads, 1 - cfg.beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(v, cfg.beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - cfg.beta2)
        # torch.optim.Adam's update: p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(1 - cfg.beta2 ** t))
        torch._foreach_add_(denom, cfg.eps)
        torch._foreach_addcdiv_(params, m, denom, value=-cfg.lr / (1 - cfg.beta1 ** t))

    def _check(self, tokens: torch.Tensor, state: AUNNState) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have shape (B, T >= 1), got {tuple(tokens.shape)}")
        if tokens.shape[0] != state.batch_size:
            raise ValueError(f"tokens have {tokens.shape[0]} rows, the state {state.batch_size}")
        if (self.online.optimizer == "adam") != bool(state.moments):
            raise ValueError(f"the state was made for another online optimizer than {self.online.optimizer!r} "
                             "(Adam's moments are " + ("missing)" if not state.moments else "present)"))
        if tokens.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
        tokens = tokens.to(self.device, torch.long)
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
        end = int(state.next_index.max()) + tokens.shape[1]
        if end > self.model.config.max_index:
            raise ValueError(f"reading {tokens.shape[1]} tokens would pass index {end - 1}, beyond the "
                             f"{self.model.config.index_bits}-bit code's {self.model.config.max_index - 1}")
        return tokens



@contextlib.contextmanager
def _reading():
    """Gradients on, even when the caller scores under no_grad or inference_mode: reading is training."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
