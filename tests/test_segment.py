"""segment_backward equals full-sequence autograd of the same loss, in float64."""
import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, segment_backward
from plasticlm.trainer.segment import segment_loss
from .test_model_options import random_state


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def setup(reversible, memory="gated_average", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=41, d_model=16, n_layers=2, n_heads=2, reversible=reversible, memory=memory,
                      chunk_size=8, **kw)
    model = PlasticLM(cfg).double()
    B, T = 3, 53  # T is not a multiple of the segment length
    tokens = torch.randint(0, 41, (B, T))
    targets = torch.randint(0, 41, (B, T))
    weights = torch.ones(B, T, dtype=torch.float64)
    weights[1, 40:] = 0  # padding at the end of row 1
    weights[2, :5] = 0.25  # a ramp-like partial weight
    targets[1, 40:] = -100  # padding targets may be anything when their weight is 0
    return model, tokens, targets, weights


def reference(model, tokens, targets, weights, state):
    model.zero_grad()
    logits, _ = model(tokens, state)
    loss = segment_loss(logits, targets, weights, weights.sum())
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("reversible", [True, False], ids=["rev", "plain"])
@pytest.mark.parametrize("with_state", [False, True], ids=["no-state", "state"])
@pytest.mark.parametrize("segment_len", [10, 16])
def test_segment_backward_equals_full_autograd(reversible, with_state, segment_len):
    model, tokens, targets, weights = setup(reversible)
    state = None
    if with_state:
        state = random_state(model, 3).map(lambda s: s.requires_grad_())
    ref_loss, ref_grads = reference(model, tokens, targets, weights, state)
    ref_state_grads = [s.grad.clone() for s in state.tensors()] if with_state else []
    if with_state:
        for s in state.tensors():
            s.grad = None
    model.zero_grad()
    loss = segment_backward(model, tokens, targets, segment_len, weights, state)
    assert abs(loss - ref_loss).item() / ref_loss.item() < 1e-8
    for (name, p), g in zip(model.named_parameters(), ref_grads):
        assert rel(p.grad, g) < 1e-8, (name, rel(p.grad, g))
    for s, g in zip(state.tensors() if with_state else [], ref_state_grads):
        assert rel(s.grad, g) < 1e-8


@pytest.mark.parametrize("memory", ["decay", "linear"])
def test_segment_backward_other_memories(memory):
    model, tokens, targets, weights = setup(True, memory=memory)
    ref_loss, ref_grads = reference(model, tokens, targets, weights, None)
    model.zero_grad()
    loss = segment_backward(model, tokens, targets, 12, weights)
    assert abs(loss - ref_loss).item() / ref_loss.item() < 1e-8
    for p, g in zip(model.parameters(), ref_grads):
        assert rel(p.grad, g) < 1e-8


def test_host_storage_and_final_state():
    model, tokens, targets, weights = setup(True)
    segment_backward(model, tokens, targets, 10, weights)
    dev = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, final = segment_backward(model, tokens, targets, 10, weights, storage="host", return_state=True)
    for p, g in zip(model.parameters(), dev):
        assert torch.equal(p.grad, g)
    with torch.no_grad():
        _, S = model(tokens)
    assert all(rel(a, b) < 1e-12 for a, b in zip(final.layers, S.layers))


def test_time_reversal_k1_is_exact_and_k4_drifts_little_with_gentle_gates():
    model, tokens, targets, weights = setup(True, min_half_life=200.0, short_conv=0)
    segment_backward(model, tokens, targets, 6, weights)
    exact = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    segment_backward(model, tokens, targets, 6, weights, reverse_every=1)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), exact))
    model.zero_grad()
    segment_backward(model, tokens, targets, 6, weights, reverse_every=4)
    err = max(rel(p.grad, g) for p, g in zip(model.parameters(), exact))
    assert 0 < err < 1e-6  # reconstructed, not stored: rounding enters, but stays small for slow gates


def test_bad_arguments_are_named():
    model, tokens, targets, weights = setup(True)
    with pytest.raises(ValueError, match="segment_len must be a positive integer, got 0"):
        segment_backward(model, tokens, targets, 0)
    with pytest.raises(ValueError, match=r"weights must be a tensor of the tokens' shape \(3, 53\)"):
        segment_backward(model, tokens, targets, 8, weights[:, :10])
    with pytest.raises(ValueError, match="weights must sum to a positive number"):
        segment_backward(model, tokens, targets, 8, torch.zeros_like(weights))
    with pytest.raises(ValueError, match=r"target id -100 at position \(1, 40\) is out of range"):
        segment_backward(model, tokens, targets, 8)  # padding targets need weight 0
    with pytest.raises(ValueError, match="storage must be 'device' or 'host'"):
        segment_backward(model, tokens, targets, 8, weights, storage="disk")
