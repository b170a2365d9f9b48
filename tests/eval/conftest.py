"""Test LMs for the evaluation suites, besides plasticlm itself.

``BigramCacheLM`` is a second, unrelated implementation of the LM interface (a smoothed bigram
mixed with a unigram cache of what it has read, so reading changes its predictions); its
weights are an ``nn.Module`` so dynamic evaluation and fine-tuning apply to it too.
``UnigramLM`` has a fixed, known next-token distribution for hand-computed metric values.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plasticlm import ModelConfig, PlasticLM
from plasticlm.lm import LM, PlasticLMAsLM
from plasticlm.tokenizer import ByteTokenizer

V = ByteTokenizer().vocab_size


class BigramTable(nn.Module):
    def __init__(self, counts: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(torch.log(counts / counts.sum(-1, keepdim=True)))


class BigramCacheLM(LM):
    """p(next | current, read so far) = (1 - lam) * bigram(next | current) + lam * cache(next)."""

    name = "bigram-cache"

    def __init__(self, text: str = "", lam: float = 0.3, alpha: float = 0.1):
        ids = torch.tensor(list(text.encode()), dtype=torch.long)
        counts = torch.full((V, V), alpha)
        if len(ids) > 1:
            counts.index_put_((ids[:-1], ids[1:]), torch.ones(len(ids) - 1), accumulate=True)
        self.model = BigramTable(counts)
        self.vocab_size, self.device, self.lam, self.alpha = V, torch.device("cpu"), lam, alpha

    def init_state(self, batch_size):
        return torch.zeros(batch_size, V)

    @torch.no_grad()
    def score(self, tokens, state):
        cache = state.unsqueeze(1) + F.one_hot(tokens, V).float().cumsum(1)  # (B, T, V) counts incl. current
        cache_p = (cache + self.alpha) / (cache + self.alpha).sum(-1, keepdim=True)
        big_p = F.softmax(self.model.logits, -1)[tokens]  # (B, T, V)
        return torch.log((1 - self.lam) * big_p + self.lam * cache_p), cache[:, -1]


class UnigramLM(LM):
    """The same known distribution at every position, whatever was read."""

    name = "unigram"

    def __init__(self, probs: dict[int, float]):
        p = torch.full((V,), 0.0)
        for i, q in probs.items():
            p[i] = q
        rest = 1 - sum(probs.values())
        others = (p == 0).sum()
        p[p == 0] = rest / others
        self.logp = p.log()
        self.vocab_size, self.device = V, torch.device("cpu")

    def init_state(self, batch_size):
        return torch.zeros(batch_size)

    def score(self, tokens, state):
        return self.logp.expand(*tokens.shape, V).clone(), state + tokens.shape[1]


@pytest.fixture(scope="session")
def tok():
    return ByteTokenizer()


@pytest.fixture(scope="session")
def bigram():
    from plasticlm.eval.text import builtin_held_out

    return BigramCacheLM(builtin_held_out())


def tiny_config():
    return ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, chunk_size=16)


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny plasticlm, untrained (seeded): the suites' plumbing, not the model's skill, is under test."""
    torch.manual_seed(0)
    return PlasticLM(tiny_config()).eval()


@pytest.fixture(scope="session")
def plastic(tiny_model):
    return PlasticLMAsLM(tiny_model)


@pytest.fixture(scope="session")
def checkpoint(tiny_model, tmp_path_factory, tok):
    from plasticlm.checkpoint import save_model

    d = tmp_path_factory.mktemp("ckpt")
    save_model(d, tiny_model, tok)
    return d


def untrained_plastic():
    torch.manual_seed(1)
    return PlasticLMAsLM(PlasticLM(tiny_config()).eval())


def lms(bigram, plastic):
    return {"bigram": bigram, "plasticlm": plastic}


def approx(a, b, rel=1e-9):
    return math.isclose(a, b, rel_tol=rel)

