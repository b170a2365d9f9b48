"""The memory's options (short convolution, L2-normalised q/k, bias correction, low-rank gate), and every memory
(gated average, decay, linear), keep every equality of the foundation: pieces == one call, step ==
forward, the reversible stack's custom autograd == the same coupling under plain autograd,
segment_backward == full autograd (initial state included), and the state's file round trip.
float64 throughout."""
import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, State, segment_backward
from plasticlm.trainer.segment import segment_loss

BARE = dict(short_conv=0, bias_correction=False)  # each option alone, the others off
OPTIONS = {
    "conv": {**BARE, "short_conv": 4},
    "qk_norm": {**BARE, "qk_norm": True},
    "bias": {**BARE, "bias_correction": True},
    "all": dict(short_conv=3, qk_norm=True, bias_correction=True),
    "decay-conv": dict(memory="decay", short_conv=4),
    "linear": dict(memory="linear"),
    "mutable": dict(embeddings="mutable", mutable_slots=11),  # fewer slots than ids: collisions too
    "low-rank-gate": dict(gate_rank=3),
    "defaults": {},
}


def model_with(name, reversible=True, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, reversible=reversible, chunk_size=8,
                      **OPTIONS[name])
    return PlasticLM(cfg).double()


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def random_state(model, B):
    """A nonzero start state (prod a < 1, i.e. log_gate_prod < 0, as after reading)."""
    S = model.init_state(B)
    return S.with_tensors([-torch.rand_like(s) if "log_gate_prod" in n else torch.randn_like(s)
                           for n, s in zip(S.names(), S.tensors())])


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("reversible", [True, False], ids=["rev", "plain"])
def test_pieces_and_steps_equal_one_call(name, reversible):
    model = model_with(name, reversible)
    tokens = torch.randint(0, 37, (2, 29))
    start = random_state(model, 2)
    full, S_full = model(tokens, start)
    state, parts = start, []
    for a, b in [(0, 1), (1, 3), (3, 17), (17, 29)]:  # pieces shorter than the convolution too
        logits, state = model(tokens[:, a:b], state)
        parts.append(logits)
    assert rel(torch.cat(parts, 1), full) < 1e-12
    assert all(rel(a, b) < 1e-12 for a, b in zip(state.tensors(), S_full.tensors()))
    state = start
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        assert rel(logits, full[:, t]) < 1e-12, t
    assert all(rel(a, b) < 1e-12 for a, b in zip(state.tensors(), S_full.tensors()))


@pytest.mark.parametrize("name", OPTIONS)
def test_reversible_gradients_equal_plain_autograd(name):
    model = model_with(name)
    tokens, targets = torch.randint(0, 37, (2, 21)), torch.randint(0, 37, (2, 21))
    S0 = random_state(model, 2).map(lambda s: s.requires_grad_())

    def grads(reconstruct):
        model.reconstruct = reconstruct
        model.zero_grad()
        for s in S0.tensors():
            s.grad = None
        logits, S = model(tokens, S0)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss = loss + sum((s ** 2).mean() for s in S.tensors())
        loss.backward()
        return [p.grad.clone() for p in model.parameters()] + [s.grad.clone() for s in S0.tensors()]

    plain, rev = grads(False), grads(True)
    assert len(plain) == len(rev)
    for i, (a, b) in enumerate(zip(rev, plain)):
        assert rel(a, b) < 1e-10, (i, rel(a, b))


@pytest.mark.parametrize("name", OPTIONS)
@pytest.mark.parametrize("reversible", [True, False], ids=["rev", "plain"])
def test_segment_backward_equals_full_autograd_with_initial_state(name, reversible):
    model = model_with(name, reversible)
    B, T = 3, 45
    tokens, targets = torch.randint(0, 37, (B, T)), torch.randint(0, 37, (B, T))
    weights = torch.ones(B, T, dtype=torch.float64)
    weights[1, 30:] = 0
    state = random_state(model, B).map(lambda s: s.requires_grad_())
    logits, _ = model(tokens, state)
    ref = segment_loss(logits, targets, weights, weights.sum())
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    ref_state = [s.grad.clone() for s in state.tensors()]
    model.zero_grad()
    for s in state.tensors():
        s.grad = None
    loss = segment_backward(model, tokens, targets, 7, weights, state)
    assert abs(loss - ref).item() / ref.item() < 1e-10
    for (n, p), g in zip(model.named_parameters(), ref_grads):
        assert rel(p.grad, g) < 1e-9, (n, rel(p.grad, g))
    for name_, s, g in zip(state.names(), state.tensors(), ref_state):
        assert rel(s.grad, g) < 1e-9, name_


@pytest.mark.parametrize("name", ["conv", "bias", "all", "mutable"])
def test_state_with_extra_parts_saves_loads_resets_and_is_checked(tmp_path, name):
    model = model_with(name)
    _, state = model(torch.randint(0, 37, (3, 10)))
    assert state.extra or state.embed
    state.save(tmp_path / "s.state")
    loaded, meta = State.load(tmp_path / "s.state")
    assert loaded.names() == state.names()
    assert all(torch.equal(a, b) for a, b in zip(loaded.tensors(), state.tensors()))
    nxt = torch.randint(0, 37, (3, 6))
    logits, _ = model(nxt, state.reset([1]))
    fresh, _ = model(nxt[1:2])
    assert rel(logits[1:2], fresh) < 1e-12  # a reset row reads as a new sequence, every part included
    with pytest.raises(ValueError, match=r"state carries memories only, this model's layers carry \["):
        model(nxt, State(state.layers))
    other = model_with("qk_norm")
    with pytest.raises(ValueError, match=r"this model's layers carry memories only"):
        other(nxt, state)


def test_bias_correction_makes_every_channel_an_average():
    """With the correction, a channel whose gate is ~1 reads the running mean of k v^T: on a sequence
    repeating one (k, v), its output is the same at every position, however slow the channel."""
    from plasticlm.ops import gated_average

    T, K = 50, 4
    log_a = torch.full((1, T, 1, K), -1e-5, dtype=torch.float64)  # half-life ~7e4 tokens
    k, v = torch.ones(1, T, 1, K, dtype=torch.float64), torch.ones(1, T, 1, 1, dtype=torch.float64)
    q = torch.ones(1, T, 1, K, dtype=torch.float64) / (-torch.expm1(log_a.cumsum(1)))
    o, _ = gated_average(q, k, v, log_a, mode="naive")
    assert torch.allclose(o, torch.full_like(o, K), rtol=1e-9)


def test_option_errors_name_the_field():
    with pytest.raises(ValueError, match=r"ModelConfig.short_conv must be 0 \(none\) or a width >= 2, got 1"):
        ModelConfig(short_conv=1)
    with pytest.raises(ValueError, match=r"ModelConfig.bias_correction must be false unless memory='gated_average'"):
        ModelConfig(memory="decay", bias_correction=True)
    with pytest.raises(ValueError, match="time reversal cannot recover the short convolution"):
        model = model_with("conv")
        model.rewind(torch.zeros(1, 4, dtype=torch.long), model.init_state(1))


@pytest.mark.parametrize("name", OPTIONS)
def test_a_state_holds_its_own_size_and_no_more(name):
    """Every tensor of a state owns its storage: a view into a layer's activations would keep them
    alive with the state (the segment trainer keeps a state per boundary: memory would grow with T)."""
    model = model_with(name)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            _, state = model(torch.randint(0, 37, (2, 50)))
        for n, s in zip(state.names(), state.tensors()):
            assert s.untyped_storage().nbytes() == s.numel() * s.element_size(), (n, grad)


def test_baseline_states_hold_their_own_size_and_no_more():
    from plasticlm import archs

    base = ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=2)
    for name, extra in (("gla", {"short_conv": 4}), ("mamba2", {"state_size": 8, "mamba_head_dim": 16})):
        model = archs.build(name, archs.sized_like(name, base, backend="torch", **extra))
        _, state = model(torch.randint(0, 37, (2, 50)))
        for s in [*state.layers, *(c for c in state.conv if c is not None)]:
            assert s.untyped_storage().nbytes() == s.numel() * s.element_size(), name


def test_low_rank_gate_factors_and_initial_half_lives():
    """gate_rank r: the gate is two factors through r channels, with the full-rank gate's bias (the
    same spread of initial half-lives); a bad rank is named."""
    full = PlasticLM(ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2))
    low = PlasticLM(ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, gate_rank=3))
    gate = low.blocks[0].memory.gate
    assert [tuple(m.weight.shape) for m in gate] == [(3, 16), (16, 3)] and gate[0].bias is None
    assert torch.equal(gate[-1].bias, full.blocks[0].memory.gate.bias)
    assert full.num_params() - low.num_params() == 16 * 16 - (16 * 3 + 3 * 16)
    with pytest.raises(ValueError, match=r"ModelConfig.gate_rank must be a non-negative integer"):
        ModelConfig(gate_rank=-1)
    with pytest.raises(ValueError, match=r"ModelConfig.gate_rank must be 0 with memory='linear'"):
        ModelConfig(memory="linear", gate_rank=4)
