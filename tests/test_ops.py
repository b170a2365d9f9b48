"""The memory recurrence: chunk vs the naive token loop, in float64, on every output and gradient."""
import math

import pytest
import torch
import torch.nn.functional as F

from plasticlm import gated_average, gated_decay
from plasticlm.ops import chunk_recurrence
from plasticlm.ops.correction import corrected_query, corrected_query_reference
from plasticlm.ops.naive import naive_recurrence


def naive_gla(q, k, v, log_a, h0):
    return naive_recurrence(q, k, v, log_a, h0, average=False)


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make_inputs(B, T, H, K, V, dtype=torch.float64, seed=0, gate_scale=3.0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    # Gates from strong decay to almost 1, so both the short and the long memories are exercised.
    log_a = F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=dtype) * gate_scale + 1)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v, log_a, h0)]


def outputs_and_grads(fn, inputs, mode, chunk_size, seed=1):
    o, S = fn(*inputs, mode=mode, chunk_size=chunk_size)
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=o.dtype)
    dS = torch.randn(S.shape, generator=g, dtype=S.dtype)
    grads = torch.autograd.grad((o * do).sum() + (S * dS).sum(), inputs)
    return (o, S, *grads)


NAMES = ["o", "final_state", "dq", "dk", "dv", "dlog_a", "dinitial_state"]


@pytest.mark.parametrize("fn", [gated_average, gated_decay], ids=["average", "decay"])
@pytest.mark.parametrize("T,chunk", [(1, 16), (63, 16), (63, 64), (200, 32), (200, 64), (200, 128), (63, 1)],
                         ids=lambda x: str(x))
def test_chunk_matches_naive_float64(fn, T, chunk):
    inputs = make_inputs(2, T, 3, 5, 4)
    ref = outputs_and_grads(fn, inputs, "naive", chunk)
    out = outputs_and_grads(fn, inputs, "chunk", chunk)
    for name, a, b in zip(NAMES, out, ref):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < 1e-10, (name, rel(a, b))


def test_without_initial_state_equals_zero_state():
    q, k, v, log_a, h0 = make_inputs(1, 37, 2, 4, 3)
    for mode in ("naive", "chunk"):
        o1, S1 = gated_average(q, k, v, log_a, None, mode=mode, chunk_size=16)
        o2, S2 = gated_average(q, k, v, log_a, torch.zeros_like(h0), mode=mode, chunk_size=16)
        assert torch.equal(o1, o2) and torch.equal(S1, S2)


def test_definition_by_hand():
    """One head, one channel: the gated average is an exponential moving average of k v."""
    a = torch.tensor([0.5, 0.25, 0.9], dtype=torch.float64)
    k = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    v = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    S, expect = 0.0, []
    for t in range(3):
        S = a[t] * S + (1 - a[t]) * k[t] * v[t]
        expect.append(2.0 * S)  # q = 2
    view = lambda x: x.view(1, 3, 1, 1)
    for mode in ("naive", "chunk"):
        o, Sf = gated_average(view(torch.full((3,), 2.0, dtype=torch.float64)), view(k), view(v), view(a.log()),
                              mode=mode, chunk_size=2)
        assert torch.allclose(o.flatten(), torch.tensor(expect, dtype=torch.float64), rtol=1e-14)
        assert math.isclose(Sf.item(), S, rel_tol=1e-14)


def test_chunk_strong_decay_stays_finite_float32():
    """Gates near 0 would overflow exp(-cumsum) in a naive factorisation; the chunk path must not."""
    q, k, v, _, h0 = make_inputs(1, 300, 2, 8, 8, dtype=torch.float32)
    log_a = torch.full_like(q, -40.0)
    o_ref, S_ref = gated_average(q, k, v, log_a, h0, mode="naive")
    o, S = gated_average(q, k, v, log_a, h0, mode="chunk", chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5


def test_chunk_rejects_non_power_of_two():
    q, k, v, log_a, _ = make_inputs(1, 10, 1, 2, 2)
    with pytest.raises(ValueError, match="power of two, got 24"):
        chunk_recurrence(q, k, v, log_a, chunk_size=24)


@pytest.mark.parametrize("bad,match", [
    (dict(q=torch.randn(2, 5, 3)), "q must have rank 4"),
    (dict(k=torch.randn(2, 5, 3, 6)), "q, k and log_a must share shape"),
    (dict(v=torch.randn(2, 4, 3, 4)), "v must have shape"),
    (dict(initial_state=torch.randn(2, 3, 4, 5)), r"initial_state must have shape \(B, H, K, V\) = \(2, 3, 4, 4\)"),
    (dict(mode="fast"), "mode must be one of"),
    (dict(q=torch.ones(2, 5, 3, 4, dtype=torch.long)), "q must be a floating-point tensor"),
])
def test_bad_input(bad, match):
    args = dict(q=torch.randn(2, 5, 3, 4), k=torch.randn(2, 5, 3, 4), v=torch.randn(2, 5, 3, 4),
                log_a=-torch.rand(2, 5, 3, 4), initial_state=None, mode="chunk")
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        gated_average(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_kernel_mode_without_cuda_says_how():
    q, k, v, log_a, _ = make_inputs(1, 8, 1, 4, 4, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="flash-linear-attention|CUDA"):
        gated_average(q, k, v, log_a, mode="kernel")


@pytest.mark.parametrize("form", ["masked", "halving"])
@pytest.mark.parametrize("T,chunk", [(63, 16), (200, 64)], ids=lambda x: str(x))
def test_both_intra_chunk_forms_match_naive_float64(form, T, chunk):
    """Each form alone, every output and gradient: 'auto' picks between two exact forms."""
    q, k, v, log_a, h0 = make_inputs(2, T, 3, 5, 4)
    ref = outputs_and_grads(lambda *x, mode, chunk_size: naive_gla(*x), (q, k, v, log_a, h0), "naive", chunk)
    out = outputs_and_grads(lambda *x, mode, chunk_size: chunk_recurrence(*x, chunk_size=chunk_size, form=form),
                            (q, k, v, log_a, h0), "chunk", chunk)
    for name, a, b in zip(NAMES, out, ref):
        assert rel(a, b) < 1e-10, (name, rel(a, b))


def test_auto_form_falls_back_to_halving_past_the_masked_limit():
    """A chunk decaying past e^-40 (float32) would overflow the masked form's e^-b: 'auto' must
    not take it, and the masked form shows why it must not."""
    from plasticlm.ops.chunk import masked_limit

    assert 39 < masked_limit(torch.float32) < 41
    q, k, v, _, h0 = make_inputs(1, 128, 2, 8, 8, dtype=torch.float32)
    log_a = torch.full_like(q, -2.0)  # a chunk of 64 decays by e^-128
    o_ref, _ = naive_gla(q, k, v, log_a, h0)
    o_auto, _ = chunk_recurrence(q, k, v, log_a, h0, chunk_size=64)
    assert rel(o_auto, o_ref) < 1e-5
    o_masked, _ = chunk_recurrence(q, k, v, log_a, h0, chunk_size=64, form="masked")
    assert not torch.isfinite(o_masked).all()


@pytest.mark.parametrize("T", [1, 2, 3, 50])
def test_causal_conv_equals_conv1d_with_every_gradient(T):
    """The fast op against F.conv1d over cat(prev, x): output, the carried tail, and the gradients
    of prev, x and the weight (T below, at and above the w - 1 carried steps)."""
    from plasticlm.ops.conv import causal_conv, conv_tail

    g = torch.Generator().manual_seed(0)
    prev = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, T, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    full = torch.cat((prev, x), dim=1)
    ref = F.conv1d(full.transpose(1, 2), weight, groups=6).transpose(1, 2)
    out = causal_conv(prev, x, weight)
    assert rel(out, ref) < 1e-14
    assert torch.equal(conv_tail(prev, x), full[:, -3:])
    probe = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((out * probe).sum(), (prev, x, weight)),
                    torch.autograd.grad((ref * probe).sum(), (prev, x, weight))):
        assert rel(a, b) < 1e-13
    assert torch.autograd.gradcheck(causal_conv, (prev, x, weight))
    with pytest.raises(ValueError, match="prev holds 2 steps, a width-4 convolution needs 3"):
        causal_conv(prev[:, 1:], x, weight)


@pytest.mark.parametrize("saturated", [False, True])
def test_corrected_query_equals_plain_autograd_float64(saturated):
    """The bias correction's own backward against autograd over the same expression: the corrected
    query, the carried log product and the gradients into q, the gates and the initial product;
    `saturated` puts gates of exactly 1 at the start, where the divisor's floor acts."""
    g = torch.Generator().manual_seed(3)
    B, T, H, K = 2, 29, 3, 4
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    log_a = F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=torch.float64) * 3 + 1)
    log_prod0 = -torch.rand(B, H, K, generator=g, dtype=torch.float64)
    if saturated:
        log_a[:, :3, 0] = 0.0
        log_prod0[:, 0] = 0.0
    w, w_last = torch.randn(B, T, H, K, generator=g, dtype=torch.float64), torch.randn(B, H, K, generator=g, dtype=torch.float64)
    results = []
    for fn in (corrected_query, corrected_query_reference):
        xs = [x.clone().requires_grad_() for x in (q, log_a, log_prod0)]
        out, last = fn(*xs)
        grads = torch.autograd.grad((out * w).sum() + (last * w_last).sum(), xs)
        results.append((out, last, *grads))
    for name, a, b in zip(("query", "log product", "d q", "d log_a", "d log_prod0"), *results):
        assert torch.isfinite(a).all(), name
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), f"{name}: max diff {(a - b).abs().max().item():.3g}"
    if not saturated:
        xs = [x.clone().requires_grad_() for x in (q, log_a, log_prod0)]
        assert torch.autograd.gradcheck(corrected_query, xs)
