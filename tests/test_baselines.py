"""Baselines: equal parameter count, causality, cached decoding equals a full forward, gradients."""
import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, archs
from plasticlm.baselines import (
    KVCache,
    MixerState,
    RecurrentAsLM,
    RecurrentConfig,
    RecurrentLM,
    Transformer,
    TransformerAsLM,
    TransformerConfig,
)
from plasticlm.baselines.fla_models import FLA_HINT, _fla_ops, fla_available
from plasticlm.baselines.transformer import count_params

V = 61
PLASTIC = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4)
SMALL_MAMBA = dict(state_size=8, mamba_head_dim=16)
KINDS = ["transformer", "gla", "mamba2"]
VARIANTS = KINDS + ["gla-conv"]  # gla-conv: GLA after a short convolution (fla's use_short_conv, as in Zoology)


def build(kind, seed=0, **kw):
    torch.manual_seed(seed)
    extra = dict(SMALL_MAMBA, backend="torch") if kind == "mamba2" else {"backend": "torch"} if "gla" in kind else {}
    if kind == "gla-conv":
        kind, extra["short_conv"] = "gla", 4
    extra.update(kw)
    return archs.build(kind, archs.sized_like(kind, PLASTIC, **extra)).double()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("plastic", [PLASTIC, ModelConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12,
                                                          ffn_hidden=2048)], ids=["tiny", "110M"])
def test_equal_parameter_count(kind, plastic):
    target = count_params(lambda: PlasticLM(plastic))
    with torch.device("meta"):
        extra = SMALL_MAMBA if kind == "mamba2" and plastic.d_model < 100 else {}
        n = archs.build(kind, archs.sized_like(kind, plastic, **extra)).num_params()
    assert abs(n - target) / target < 0.01, (n, target)


def test_count_params_matches_a_real_model():
    assert count_params(lambda: PlasticLM(PLASTIC)) == PlasticLM(PLASTIC).num_params()


@pytest.mark.parametrize("kind", VARIANTS)
def test_causal(kind):
    model = build(kind)
    x = torch.randint(0, V, (2, 37))
    y = x.clone()
    y[:, 20:] = torch.randint(0, V, (2, 17))
    lx, _ = model(x)
    ly, _ = model(y)
    torch.testing.assert_close(lx[:, :20], ly[:, :20])
    assert not torch.allclose(lx[:, 20:], ly[:, 20:])


@pytest.mark.parametrize("kind", VARIANTS)
def test_incremental_decoding_equals_full_forward(kind):
    """A 67-token forward equals: a 30-token prefill, a 21-token piece with the carried state, then 16 steps."""
    model = build(kind)
    x = torch.randint(0, V, (3, 67))
    full, _ = model(x)
    a, s = model(x[:, :30])
    b, s = model(x[:, 30:51], s)
    steps = []
    for t in range(51, 67):
        logits, s = model.step(x[:, t], s)
        steps.append(logits)
    torch.testing.assert_close(torch.cat([a, b, torch.stack(steps, 1)], 1), full)
    if kind == "transformer":
        assert isinstance(s, KVCache) and s.length == 67 and s.position == 67
    else:
        assert isinstance(s, MixerState)


@pytest.mark.parametrize("kind", VARIANTS)
def test_gradients_reach_every_parameter(kind):
    model = build(kind).float()
    x = torch.randint(0, V, (2, 40))
    logits, _ = model(x)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_state_gradient_flows_through_carried_cache():
    model = build("transformer")
    x = torch.randint(0, V, (1, 12))
    _, s = model(x[:, :6])
    s = KVCache([k.detach().requires_grad_() for k in s.keys], [v.detach().requires_grad_() for v in s.values],
                s.position)
    logits, _ = model(x[:, 6:], s)
    logits.sum().backward()
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k in s.keys)


def test_transformer_as_lm_scores_in_pieces_and_generates():
    model = build("transformer")
    lm = TransformerAsLM(model, piece=7)
    x = torch.randint(0, V, (2, 30))
    logp, cache = lm.score(x, lm.init_state(2))
    ref = torch.log_softmax(model(x)[0].float(), -1)
    torch.testing.assert_close(logp, ref)
    assert cache.length == 30
    # greedy generation from the carried cache equals re-running the growing text from scratch
    new, _ = lm.generate(x[:, :10], lm.init_state(2), max_new_tokens=5)
    text = x[:, :10]
    for _ in range(5):
        nxt = model(text)[0][:, -1].argmax(-1)
        text = torch.cat([text, nxt[:, None]], 1)
    assert torch.equal(new, text[:, 10:])


def test_transformer_under_bf16_autocast_keeps_one_dtype_for_attention():
    from plasticlm.baselines.transformer import apply_rope, rope_tables

    cos, sin = rope_tables(torch.arange(5), 8, 10000.0, torch.float32)
    assert apply_rope(torch.randn(1, 2, 5, 8, dtype=torch.bfloat16), cos, sin).dtype == torch.bfloat16
    model = build("transformer").float()
    x = torch.randint(0, V, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cache = model(x)
        step, _ = model.step(x[:, 0], cache)
    assert logits.dtype == torch.bfloat16 and cache.keys[0].dtype == torch.bfloat16 and torch.isfinite(step).all()


def test_sliding_window_scores_equal_a_fresh_read_of_the_last_window_tokens():
    """One layer (deeper ones reach further through the layers below): with window W, the score
    of every position equals that of a fresh forward over just the W tokens ending there (RoPE is
    relative), whatever the piece length, also across pieces and in a first piece longer than W."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2)).double()
    x = torch.randint(0, V, (2, 40))
    W = 8
    want = torch.stack([model(x[:, max(0, p - W + 1):p + 1])[0][:, -1] for p in range(40)], 1).log_softmax(-1)
    for piece in (3, 8, 13, 40):
        lm = TransformerAsLM(model, piece=piece, window=W)
        got, _ = lm.score(x, lm.init_state(2))
        assert torch.allclose(got.double(), want, atol=1e-5), piece
    lm = TransformerAsLM(model, piece=8)
    full, _ = lm.score(x, lm.init_state(2))  # without a window only the first W positions agree
    assert torch.allclose(full[:, :W].double(), want[:, :W], atol=1e-5) and not torch.allclose(full.double(), want, atol=1e-3)


def test_transformer_window_bounds_the_cache():
    model = build("transformer")
    lm = TransformerAsLM(model, piece=8, window=16)
    state = lm.read(torch.randint(0, V, (1, 50)), lm.init_state(1))
    assert state.length == 16 and state.position == 50
    _, state = lm.score(torch.randint(0, V, (1, 3)), state)
    assert state.length == 16 and state.position == 53


@pytest.mark.parametrize("kind", ["gla", "mamba2"])
def test_recurrent_as_lm_state_is_constant_size(kind):
    lm = RecurrentAsLM(build(kind), piece=16)
    s1 = lm.read(torch.randint(0, V, (1, 20)), lm.init_state(1))
    s2 = lm.read(torch.randint(0, V, (1, 200)), lm.init_state(1))
    assert [t.shape for t in s1.layers] == [t.shape for t in s2.layers]
    new, _ = lm.generate(torch.randint(0, V, (1, 4)), s2, 3)
    assert new.shape == (1, 3)


def test_bad_configs_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="n_heads"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="mixer"):
        RecurrentConfig(mixer="lstm")
    with pytest.raises(ValueError, match="unknown arch 'rwkv'"):
        archs.sized_like("rwkv", PLASTIC)
    with pytest.raises(ValueError, match="out of range"):
        Transformer(TransformerConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2))(torch.tensor([[3, 10]]))


@pytest.mark.skipif(fla_available(), reason="fla is installed here")
def test_fla_backend_without_fla_says_how_to_install():
    model = RecurrentLM(RecurrentConfig(mixer="gla", vocab_size=V, d_model=32, n_layers=1, backend="fla"))
    err = RuntimeError if not isinstance(_fla_ops(), Exception) else ImportError
    with pytest.raises(err, match="plasticlm\\[kernels\\]|CUDA"):
        model(torch.randint(0, V, (1, 8)))
    assert "pip install 'plasticlm[kernels]'" in FLA_HINT


@pytest.mark.gpu
@pytest.mark.skipif(not fla_available(), reason="needs CUDA and fla")
@pytest.mark.parametrize("kind", ["gla", "mamba2"])
def test_fla_backend_matches_torch_backend(kind):
    torch.manual_seed(0)
    cfg = RecurrentConfig.sized_like(PLASTIC, kind, backend="torch", **(SMALL_MAMBA if kind == "mamba2" else {}))
    ref = RecurrentLM(cfg).cuda()
    fast = RecurrentLM(RecurrentConfig(**{**cfg.to_dict(), "backend": "fla"})).cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(0, V, (2, 300), device="cuda")
    (la, sa), (lb, sb) = ref(x), fast(x)
    torch.testing.assert_close(lb, la, rtol=2e-3, atol=2e-3)
    for a, b in zip(sa.layers, sb.layers):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-3)
    la.logsumexp(-1).mean().backward()
    lb.logsumexp(-1).mean().backward()
    for (n, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=5e-3, atol=5e-4, msg=n)
