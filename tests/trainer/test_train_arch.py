"""Another architecture (as the Transformer baseline will) trains with the same trainer, `backprop: full`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from plasticlm.trainer.loop import Trainer, train
from plasticlm import archs

from .conftest import tiny_config


@dataclass
class ToyConfig:
    vocab_size: int = 272
    d_model: int = 32

    def to_dict(self):
        return dataclasses.asdict(self)


class Toy(nn.Module):
    """A causal bigram-plus-previous-token model with no recurrent state."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.mix = nn.Linear(2 * config.d_model, config.d_model)

    def forward(self, tokens, state=None):
        x = self.embed(tokens)  # (B, T, d)
        prev = torch.nn.functional.pad(x, (0, 0, 1, 0))[:, :-1]
        h = torch.tanh(self.mix(torch.cat([x, prev], -1)))
        return h @ self.embed.weight.t(), None


archs.register(archs.Arch("toy", "a test model", f"{__name__}:ToyConfig", f"{__name__}:Toy", "plasticlm.lm:PiecewiseLM"))
TOY = ["arch=toy", "model={vocab_size: 272, d_model: 32}", "backprop=full", "optim.lr=0.01"]


def test_other_arch_trains_and_resumes_with_full_backprop(tmp_path):
    s = train(tiny_config(tmp_path / "a", "steps=6", *TOY), progress=False)
    assert s["last_loss"] < s["first_loss"]
    part = Trainer(tiny_config(tmp_path / "b", "steps=6", *TOY), progress=False)
    for _ in range(3):
        part.train_step(part.stream.next_batch())
    part.save_checkpoint()
    train(tiny_config(tmp_path / "b", "steps=6", *TOY), progress=False)
    from .conftest import assert_same_weights, final_weights

    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))


def test_segment_backprop_needs_plasticlm(tmp_path):
    with pytest.raises(ValueError, match="backprop='segment' needs the plasticlm architecture"):
        tiny_config(tmp_path, *TOY, "backprop=segment")
