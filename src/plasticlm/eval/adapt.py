"""Changing an LM's weights during evaluation: dynamic evaluation and task fine-tuning.

Dynamic evaluation (Krause et al., 2018) reads text in segments; each segment is scored with
the current weights, then one SGD step is taken on its loss and the weights decay toward the
originals:

    theta <- theta - lr * grad L(segment) + decay * (theta_0 - theta)

The recurrent state carries across segments (detached), so gradient reaches one segment back
at most. This is the bar that adaptation by state alone is measured against.

Any LM backed by a torch module works: one that defines ``score_with_grad(tokens, state)``;
plasticlm (``PlasticLMAsLM``); or one whose ``score`` is a ``torch.no_grad``-decorated forward of
an ``nn.Module`` attribute (``model`` or ``module``), which is then called undecorated. Weights
are always restored on leaving :func:`restored`, so later suites see the checkpoint's weights.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lm import LM, PlasticLMAsLM


@dataclass
class Trainable:
    module: nn.Module
    forward: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]  # (B, T) -> (log-probs (B, T, V), state), with grad


def trainable(lm: LM) -> Trainable:
    """The module and a differentiable ``score`` of an LM; a clear TypeError when there is none."""
    if hasattr(lm, "score_with_grad"):
        module = getattr(lm, "module", None) or getattr(lm, "model", None)
        if isinstance(module, nn.Module):
            return Trainable(module, lm.score_with_grad)
    if isinstance(lm, PlasticLMAsLM):
        def fwd(tokens, state):
            logits, state = lm.model(tokens.to(lm.device), state)
            return F.log_softmax(logits.float(), -1), state
        return Trainable(lm.model, fwd)
    module = next((getattr(lm, a) for a in ("model", "module") if isinstance(getattr(lm, a, None), nn.Module)), None)
    if module is not None:
        score = type(lm).score
        raw = getattr(score, "__wrapped__", score)  # undo @torch.no_grad()
        return Trainable(module, lambda tokens, state: raw(lm, tokens, state))
    raise TypeError(f"LM {lm.name!r} ({type(lm).__name__}) has no torch module to adapt: dynamic evaluation and "
                    "fine-tuning need an LM with score_with_grad(tokens, state) and a .model/.module nn.Module")


@contextlib.contextmanager
def restored(module: nn.Module) -> Iterator[nn.Module]:
    """Everything done to the weights inside the block is undone on leaving it."""
    saved = {k: v.detach().clone() for k, v in module.state_dict().items()}
    was_training = module.training
    try:
        yield module
    finally:
        module.load_state_dict(saved)
        module.train(was_training)
        module.zero_grad(set_to_none=True)


def detach_state(state: Any) -> Any:
    if hasattr(state, "detach"):
        return state.detach()
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(s) for s in state)
    return state


class DynamicEval:
    """Reads token sequences with a gradient step per segment (use inside :func:`restored`)."""

    def __init__(self, lm: LM, lr: float, decay: float, segment: int):
        if lr < 0 or not 0 <= decay <= 1 or segment < 1:
            raise ValueError(f"dynamic evaluation needs lr >= 0, 0 <= decay <= 1, segment >= 1; "
                             f"got lr={lr}, decay={decay}, segment={segment}")
        self.lm, self.t = lm, trainable(lm)
        self.lr, self.decay, self.segment = lr, decay, segment
        self.params = [p for p in self.t.module.parameters() if p.requires_grad]
        self.theta0 = [p.detach().clone() for p in self.params]

    def read(self, inputs: torch.Tensor, targets: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """inputs, targets (B, T) -> (per-token NLL (B, T) scored before each update, state)."""
        nlls = []
        for a in range(0, inputs.shape[1], self.segment):
            x, y = inputs[:, a:a + self.segment], targets[:, a:a + self.segment].to(self.lm.device)
            with torch.enable_grad():
                logp, state = self.t.forward(x, detach_state(state))
                nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # (B, t)
                grads = torch.autograd.grad(nll.mean(), self.params, allow_unused=True)
            with torch.no_grad():
                for p, g, p0 in zip(self.params, grads, self.theta0):
                    if g is not None:
                        p.sub_(self.lr * g)
                    p.add_(self.decay * (p0 - p))
            nlls.append(nll.detach().double().cpu())
            state = detach_state(state)
        return torch.cat(nlls, 1), state


def finetune(lm: LM, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int, lr: float,
             progress: Callable[[int, float], None] | None = None, micro_batch: int = 0) -> list[float]:
    """AdamW on next-token cross-entropy; ``batches(step)`` gives (inputs, targets) with -100 where
    nothing is scored. Rows go through in micro-batches of ``micro_batch`` (0: all at once) with
    gradients accumulated, so long rows fit in memory (full log-probs are B x T x V floats).
    Weights change in place: call inside :func:`restored`. Returns the losses."""
    t = trainable(lm)
    params = [p for p in t.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    t.module.train()
    losses = []
    for step in range(steps):
        x, y = batches(step)
        n = (y != -100).sum().clamp(min=1)
        mb = micro_batch or x.shape[0]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for a in range(0, x.shape[0], mb):
            xb, yb = x[a:a + mb].to(lm.device), y[a:a + mb]
            with torch.enable_grad():
                logp, _ = t.forward(xb, lm.init_state(xb.shape[0]))
                loss = F.nll_loss(logp.flatten(0, 1), yb.to(logp.device).flatten(), ignore_index=-100,
                                  reduction="sum") / n
                loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(total)
        if progress:
            progress(step, total)
    t.module.eval()
    return losses
