"""Loss ramp, gradient-length proxy, and the 'full' backprop mode against exact segment BPTT."""
from __future__ import annotations

import math

import pytest
import torch

from plasticlm import ModelConfig, PlasticLM
from plasticlm.trainer.losses import (
    band_edges,
    proxy_penalty,
    ramp_weights,
    read_weight,
    retention_mass,
)
from plasticlm.trainer.segment import segment_backward, segment_loss

from .conftest import tiny_config


def small_model(**kw):
    torch.manual_seed(0)
    return PlasticLM(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, chunk_size=16, **kw))


def test_ramp_rises_from_zero_to_one_over_the_sequence_start():
    w = ramp_weights(torch.tensor([0, 6]), T=4, ramp_tokens=8)
    assert torch.allclose(w, torch.tensor([[1, 2, 3, 4], [7, 8, 8, 8]]) / 8)
    c = ramp_weights(torch.tensor([0]), T=10, ramp_tokens=8, shape="cosine")
    assert c[0, 3] == pytest.approx(0.5) and c[0, -1] == 1


def test_retention_mass_equals_the_brute_force_sum_over_lags():
    torch.manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3 + 4)
    edges = band_edges(1000, [0.01, 0.1, 1.0])
    assert edges == [(1, 11), (11, 101), (101, 1001)]
    la = log_a.mean(dim=(0, 1)).reshape(-1)
    k = torch.arange(1, 1001, dtype=torch.float64)
    for weighted in (True, False):
        w = (1 - la.exp()) if weighted else torch.ones_like(la)
        r = w[:, None] * torch.exp(la[:, None] * k)  # (channels, lags)
        want = torch.stack([r[:, k0 - 1:k1 - 1].sum() for k0, k1 in edges])
        want = want / want.sum()
        got = retention_mass(log_a, edges, weighted)
        assert torch.allclose(got.double(), want, rtol=1e-4)
        assert got.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_read_weighted_retention_mass_counts_each_channel_by_its_weight():
    """channel_weight multiplies each channel's (1 - a) a^k: the brute-force sum with the weight
    agrees, and a channel weighted 0 leaves the bands (here the slowest: the long band empties)."""
    torch.manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3 + 4)
    edges = band_edges(1000, [0.01, 0.1, 1.0])
    la = log_a.mean(dim=(0, 1)).reshape(-1)
    c = torch.rand(3, 4, dtype=torch.float64)
    k = torch.arange(1, 1001, dtype=torch.float64)
    r = ((1 - la.exp()) * c.reshape(-1))[:, None] * torch.exp(la[:, None] * k)
    want = torch.stack([r[:, k0 - 1:k1 - 1].sum() for k0, k1 in edges])
    assert torch.allclose(retention_mass(log_a, edges, True, c).double(), want / want.sum(), rtol=1e-4)
    only_fast = (la < torch.log(torch.tensor(0.5, dtype=torch.float64))).reshape(3, 4).double()  # half-life < 1
    assert retention_mass(log_a, edges, True, only_fast)[-1] < 1e-6 < retention_mass(log_a, edges)[-1]


def test_read_weight_is_mean_abs_q_at_the_last_positions_times_mean_abs_k_and_detached():
    q = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]], requires_grad=True)  # (B=1, T=2, H=1, K=2)
    k = torch.tensor([[[[-1.0, 1.0]], [[1.0, 3.0]]]], requires_grad=True)
    assert torch.equal(read_weight(q, k), torch.tensor([[2.0 * 1.0, 1.0 * 2.0]]))
    assert torch.equal(read_weight(q, k, last=1), torch.tensor([[3.0 * 1.0, 0.0 * 2.0]]))
    assert not read_weight(q, k).requires_grad


def test_read_weight_moves_the_bias_correction_to_the_horizon():
    """With constant gates a from an empty state, q at position t carries 1 / (1 - a^t); rebias
    gives every position the horizon's 1 / (1 - a^H) instead, also after a carried prefix."""
    a = torch.tensor([0.5, 0.999]).view(1, 1, 1, 2)
    T, H = 8, 1000
    log_a = a.log().expand(1, T, 1, 2)
    t = torch.arange(1, T + 1, dtype=torch.float32).view(1, T, 1, 1)
    q_raw, k = torch.full((1, T, 1, 2), 2.0), torch.ones(1, T, 1, 2)
    want = 2.0 / (1 - a.view(1, 2) ** H)
    got = read_weight(q_raw / (1 - a ** t), k, rebias=(log_a, torch.zeros(1, 1, 2), H))
    assert torch.allclose(got, want, rtol=1e-4)
    prefix = 5 * a.log().view(1, 1, 2)  # five tokens read before the probe
    got = read_weight(q_raw / (1 - a ** (t + 5)), k, rebias=(log_a, prefix, H))
    assert torch.allclose(got, want, rtol=1e-4)


def inputs_of_the_forward_pass(m, tokens, monkeypatch) -> list[list[torch.Tensor]]:
    """What each layer's Memory.inputs returned (q, k, v, log a, output gate) in a plain forward."""
    from plasticlm import model as model_mod

    seen = []
    inputs = model_mod.Memory.inputs

    def spy(self, x, S):
        out = inputs(self, x, S)
        seen.append([t.detach().clone() for t in out[:5]])
        return out

    monkeypatch.setattr(model_mod.Memory, "inputs", spy)
    with torch.no_grad():
        m(tokens)
    monkeypatch.undo()
    return seen


def test_memory_inputs_are_the_ones_the_forward_pass_uses(monkeypatch):
    m = small_model(short_conv=4, bias_correction=True)
    tokens = torch.randint(0, 64, (2, 20))
    seen = inputs_of_the_forward_pass(m, tokens, monkeypatch)
    got = m.memory_inputs(tokens)
    assert len(got) == len(seen) == 2
    for g, s in zip(got, seen):
        for a, b in zip(g[:5], s):
            assert torch.allclose(a, b, atol=1e-6)


def test_gates_are_the_ones_the_forward_pass_uses(monkeypatch):
    m = small_model()
    tokens = torch.randint(0, 64, (2, 20))
    seen = [s[3] for s in inputs_of_the_forward_pass(m, tokens, monkeypatch)]
    gates = m.gates(tokens)
    assert len(gates) == len(seen) == 2
    for g, s in zip(gates, seen):
        assert torch.allclose(g, s, atol=1e-6)


def test_proxy_penalty_sends_gradient_to_every_layers_gates():
    m = small_model()
    masses = [retention_mass(g, band_edges(256, [0.01, 0.1, 1.0])) for g in m.gates(torch.randint(0, 64, (2, 16)))]
    penalty = proxy_penalty(masses, [0.4, 0.3, 0.3])
    assert penalty.item() > 0
    penalty.backward()
    for block in m.blocks:
        assert block.memory.gate.bias.grad.abs().sum() > 0
    # and it is zero where the retention already has the target spread
    assert proxy_penalty([torch.tensor([0.4, 0.3, 0.3])], [0.4, 0.3, 0.3]).item() == pytest.approx(0, abs=1e-7)


def test_full_backprop_equals_segment_backprop():
    m = small_model()
    tokens, targets = torch.randint(0, 64, (3, 40)), torch.randint(0, 64, (3, 40))
    weights = torch.rand(3, 40)
    state = m.init_state(3)
    state = state.map(lambda s: s - 0.1 * torch.rand_like(s))  # after some reading: log prod a < 0
    seg = segment_backward(m, tokens, targets, 16, weights, state)
    g_seg = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    logits, _ = m(tokens, state)
    full = segment_loss(logits, targets, weights, weights.sum())
    full.backward()
    assert full.item() == pytest.approx(seg.item(), rel=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, g_seg[n], rtol=1e-4, atol=1e-6, msg=n)


def test_full_mode_trains(tmp_path):
    from plasticlm.trainer.loop import train

    from .conftest import tiny_config

    s = train(tiny_config(tmp_path, "steps=6", "backprop=full", "optim.lr=1e-2"), progress=False)
    assert s["last_loss"] < s["first_loss"] and math.isfinite(s["valid_loss"])


def test_reconstruct_is_chosen_by_the_memory_one_segment_needs(tmp_path, monkeypatch):
    """'auto' stores a segment's activations when they take at most a quarter of the free memory,
    and rebuilds them when they would not; 'rebuild' and 'store' are obeyed; the measured
    activation memory grows with the segment length."""
    import os

    from plasticlm.trainer.loop import Trainer
    from plasticlm.trainer.segment import segment_activation_bytes

    assert not Trainer(tiny_config(tmp_path / "a"), progress=False).model.reconstruct
    assert Trainer(tiny_config(tmp_path / "b", "reconstruct=rebuild"), progress=False).model.reconstruct
    model = Trainer(tiny_config(tmp_path / "c", "reconstruct=store"), progress=False).model
    assert not model.reconstruct
    one, two = segment_activation_bytes(model, 4, 256), segment_activation_bytes(model, 4, 512)
    assert 0 < one and 1.5 < two / one < 2.1  # linear in L, plus what does not grow with it
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    assert Trainer(tiny_config(tmp_path / "d"), progress=False).model.reconstruct


def test_the_read_weighted_proxy_trains_differently_and_a_bad_weighting_is_named(tmp_path):
    from plasticlm.trainer.loop import train
    from plasticlm.trainer.metrics import read_metrics

    logged = {}
    for how in ("gates", "read"):
        run = tmp_path / how
        train(tiny_config(run, "steps=2", "loss.proxy_weight=0.1", f"loss.proxy_weighting={how}"), progress=False)
        logged[how] = [r for r in read_metrics(run) if "proxy" in r]
    assert [r["step"] for r in logged["read"]] == [1, 2]
    assert logged["read"][0]["proxy"] != logged["gates"][0]["proxy"]  # same model, same probe: only the weights differ
    with pytest.raises(ValueError, match="loss.proxy_weighting"):
        tiny_config(tmp_path / "bad", "loss.proxy_weighting=queries")
