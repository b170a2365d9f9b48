"""PlasticLM: state carrying, step decoding, reversible gradients, state I/O and input checks."""
import math

import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, State
from plasticlm.model import gate_bias
from .test_model_options import random_state


def tiny(memory="gated_average", reversible=True, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=37, d_model=16, n_layers=3, n_heads=2, memory=memory, reversible=reversible,
                      chunk_size=8, **kw)
    return PlasticLM(cfg).to(dtype)


VARIANTS = [(m, r) for m in ("gated_average", "decay", "linear") for r in (True, False)]
IDS = [f"{m}-{'rev' if r else 'plain'}" for m, r in VARIANTS]


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("memory,reversible", VARIANTS, ids=IDS)
def test_pieces_equal_one_call(memory, reversible):
    model = tiny(memory, reversible)
    tokens = torch.randint(0, 37, (2, 45))
    full, S_full = model(tokens)
    state, parts = None, []
    for a, b in [(0, 7), (7, 8), (8, 30), (30, 45)]:
        logits, state = model(tokens[:, a:b], state)
        parts.append(logits)
    assert rel(torch.cat(parts, 1), full) < 1e-12
    for s1, s2 in zip(state.layers, S_full.layers):
        assert rel(s1, s2) < 1e-12


@pytest.mark.parametrize("memory,reversible", VARIANTS, ids=IDS)
def test_step_equals_one_call(memory, reversible):
    model = tiny(memory, reversible)
    tokens = torch.randint(0, 37, (3, 21))
    full, _ = model(tokens)
    state = model.init_state(3)
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        assert rel(logits, full[:, t]) < 1e-12, t


def test_reversible_inverse_rebuilds_inputs():
    model = tiny()
    block = model.blocks[0]
    x1, x2 = torch.randn(2, 2, 13, 16, dtype=torch.float64)
    S = random_state(model, 2).layer(0)
    y1, y2, _ = block.forward_rev(x1, x2, S)
    r1, r2 = block.inverse(y1, y2, S)
    assert rel(r1, x1) < 1e-12 and rel(r2, x2) < 1e-12


def test_gate_bias_spreads_half_lives():
    b = gate_bias(64, 2.0, 1e5).double()
    a = torch.sigmoid(b)
    half_life = math.log(0.5) / torch.log(a)
    assert half_life.min().item() == pytest.approx(2.0, rel=1e-4)
    assert half_life.max().item() == pytest.approx(1e5, rel=1e-3)
    # log-uniform: equal ratios between neighbours
    ratios = half_life[1:] / half_life[:-1]
    assert torch.allclose(ratios, ratios.mean().expand_as(ratios), rtol=1e-3)
    # every head of a layer gets short and long memories
    model = PlasticLM(ModelConfig(vocab_size=10, d_model=32, n_layers=1, n_heads=4))
    hl = (math.log(0.5) / torch.nn.functional.logsigmoid(model.blocks[0].memory.gate.bias.double())).view(4, 8)
    assert (hl.min(1).values < 10).all() and (hl.max(1).values > 1e4).all()


def test_rewind_inverts_forward():
    # gentle gates: inversion amplifies rounding by prod(1/a); no convolution (its past inputs are gone)
    model = tiny(min_half_life=50.0, short_conv=0)
    tokens = torch.randint(0, 37, (2, 12))
    start = random_state(model, 2)
    with torch.no_grad():
        _, end = model(tokens, start)
    back = model.rewind(tokens, end)
    for a, b in zip(back.tensors(), start.tensors()):
        assert rel(a, b) < 1e-8


def test_state_save_load_and_reset(tmp_path):
    model = tiny()
    _, state = model(torch.randint(0, 37, (3, 10)))
    path = tmp_path / "s.state"
    state.save(path, {"note": "x"})
    loaded, meta = State.load(path)
    assert meta["note"] == "x" and meta["n_layers"] == "3"
    assert all(torch.equal(a, b) for a, b in zip(loaded.layers, state.layers))
    r = state.reset([1])
    assert all(torch.equal(s[1], torch.zeros_like(s[1])) and torch.equal(s[0], t[0]) and torch.equal(s[2], t[2])
               for s, t in zip(r.layers, state.layers))
    # a reset row behaves like a fresh sequence
    nxt = torch.randint(0, 37, (3, 5))
    logits, _ = model(nxt, r)
    fresh, _ = model(nxt[1:2])
    assert rel(logits[1:2], fresh) < 1e-12
    assert torch.equal(state.reset(torch.tensor([False, True, False])).layers[0], r.layers[0])
    with pytest.raises(ValueError, match=r"reset rows must lie in \[0, 3\)"):
        state.reset([3])


def test_state_file_corrupt_or_truncated_is_refused(tmp_path):
    model = tiny()
    path = tmp_path / "s.state"
    model.init_state(2).save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.state").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.state"):
        State.load(tmp_path / "trunc.state")
    (tmp_path / "junk.state").write_bytes(b"\x80\x04junk" * 10)
    with pytest.raises(ValueError, match="junk.state"):
        State.load(tmp_path / "junk.state")


def test_config_errors_name_field_and_rule():
    with pytest.raises(ValueError, match=r"ModelConfig.d_model must be a positive integer, got -3"):
        ModelConfig(d_model=-3)
    with pytest.raises(ValueError, match=r"ModelConfig.memory must be one of .*got 'lstm'"):
        ModelConfig(memory="lstm")
    with pytest.raises(ValueError, match=r"ModelConfig.d_model must be divisible by n_heads=3"):
        ModelConfig(d_model=128, n_heads=3)
    with pytest.raises(ValueError, match=r"ModelConfig.max_half_life must be >= min_half_life=10.0"):
        ModelConfig(min_half_life=10.0, max_half_life=5.0)
    with pytest.raises(ValueError, match=r"ModelConfig has no field 'depth'"):
        ModelConfig.from_dict({"depth": 3})
    with pytest.raises(ValueError, match=r"ModelConfig.chunk_size must be a power of two, got 48"):
        ModelConfig(chunk_size=48)


def test_bad_tokens_and_state_are_named():
    model = tiny()
    with pytest.raises(ValueError, match=r"token id 37 at position \(1, 2\) is out of range \[0, 37\)"):
        t = torch.zeros(2, 4, dtype=torch.long)
        t[1, 2] = 37
        model(t)
    with pytest.raises(ValueError, match=r"token id -1"):
        model(torch.full((1, 3), -1))
    with pytest.raises(TypeError, match=r"integer tensor .* got dtype torch.float32"):
        model(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got shape \(4,\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"state layer 0 has shape \(3, 2, 8, 8\), expected \(B, H, K, V\) = \(2, 2, 8, 8\)"):
        model(torch.zeros(2, 4, dtype=torch.long), model.init_state(3))
    with pytest.raises(ValueError, match=r"state has 2 layers, the model has n_layers=3"):
        model(torch.zeros(1, 4, dtype=torch.long), State(model.init_state(1).layers[:2]))
    with pytest.raises(ValueError, match=r"step expects token of shape \(B,\)"):
        model.step(torch.zeros(2, 1, dtype=torch.long), model.init_state(2))
