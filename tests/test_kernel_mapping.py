"""The kernel path's argument mapping onto fla's chunk_gla, checked on CPU.

chunk_gla itself needs CUDA, so it is stood in for by its documented contract, written here as fla's
own pure-PyTorch reference ``fla.ops.gla.naive.naive_recurrent_gla`` is (with ``scale`` as an
argument): h_t = h_{t-1} * exp(g_t) + k_t v_t^T, o_t = (scale q_t) h_t, layouts (B, T, H, K), a float32
initial state. Where fla imports on this machine, the stand-in is checked against fla's reference
itself. Then plasticlm's ``mode="kernel"`` (with the gated average's k' = (1 - a) k and g = log a)
must equal its own naive path on the output, the final state and every gradient.
"""
import pytest
import torch
import torch.nn.functional as F

from plasticlm import gated_average, gated_decay
from plasticlm.ops import kernel


def contract_chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    assert q.shape == k.shape == g.shape and v.shape[:3] == q.shape[:3], "q, k, g (B, T, H, K); v (B, T, H, V)"
    assert q.dtype == k.dtype == v.dtype, "one dtype for q, k and v"
    assert initial_state is None or initial_state.dtype == torch.float32, "initial_state must be in float32"
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    h = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state
    h = h.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    outs = []
    for t in range(T):
        h = h * g[:, t].exp().unsqueeze(-1).to(h.dtype) + k[:, t].unsqueeze(-1).to(h.dtype) * v[:, t].unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t].to(h.dtype) * scale, h))
    return torch.stack(outs, 1).to(v.dtype), (h if output_final_state else None)


def inputs(T=37, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    B, H, K, V = 2, 3, 8, 5
    q, k = torch.randn(B, T, H, K, generator=g, dtype=dtype), torch.randn(B, T, H, K, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    log_a = F.logsigmoid(torch.randn(B, T, H, K, generator=g, dtype=dtype) * 2 + 2)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, log_a, h0


def test_the_stand_in_is_fla_s_reference_where_fla_imports():
    naive = pytest.importorskip("fla.ops.gla.naive", reason="fla (and triton) not installed here").naive_recurrent_gla
    q, k, v, g, h0 = (x.float() for x in inputs())
    o, h = naive(q, k, v, g, initial_state=h0, output_final_state=True)
    o2, h2 = contract_chunk_gla(q, k, v, g, scale=q.shape[-1] ** -0.5, initial_state=h0, output_final_state=True)
    torch.testing.assert_close(o, o2)
    torch.testing.assert_close(h, h2)


@pytest.mark.parametrize("fn", [gated_average, gated_decay], ids=["average", "decay"])
@pytest.mark.parametrize("with_state", [True, False], ids=["h0", "no-h0"])
def test_kernel_path_maps_its_arguments_onto_chunk_gla(monkeypatch, fn, with_state):
    monkeypatch.setattr(kernel, "_chunk_gla", lambda: contract_chunk_gla)
    monkeypatch.setattr(kernel, "_on_cuda", lambda t: True)
    q, k, v, log_a, h0 = inputs()
    h0 = h0 if with_state else None
    leaves = [x.clone().requires_grad_() for x in (q, k, v, log_a)] + ([h0.clone().float().requires_grad_()]
                                                                      if with_state else [])
    results = {}
    for mode in ("kernel", "naive"):
        xs = [x.detach().clone().requires_grad_() for x in leaves]
        o, S = fn(*xs[:4], xs[4] if with_state else None, mode=mode)
        loss = (o.double() ** 2).sum() + (S.double() * torch.linspace(-1, 1, S.numel(), dtype=torch.float64)
                                          .view_as(S)).sum()
        grads = torch.autograd.grad(loss, xs)
        results[mode] = (o, S, *grads)
    names = ["o", "final_state", "dq", "dk", "dv", "dlog_a"] + (["dinitial_state"] if with_state else [])
    for name, a, b in zip(names, results["kernel"], results["naive"]):
        # The kernel takes its gates and state in float32: relative errors of float32 rounding, ~3e-8.
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err < 1e-6, (name, err)


def test_kernel_path_gives_chunk_gla_one_dtype_and_a_float32_state(monkeypatch):
    seen = {}

    def spy(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
        seen.update(dtypes={q.dtype, k.dtype, v.dtype}, state=initial_state.dtype, g=g.dtype, scale=scale,
                    final=output_final_state)
        return contract_chunk_gla(q, k, v, g, scale, initial_state, output_final_state)

    monkeypatch.setattr(kernel, "_chunk_gla", lambda: spy)
    monkeypatch.setattr(kernel, "_on_cuda", lambda t: True)
    q, k, v, log_a, h0 = inputs(dtype=torch.float32)
    gated_average(q.float(), k.bfloat16(), v.bfloat16(), log_a, h0, mode="kernel")  # as under bf16 autocast
    assert seen == {"dtypes": {torch.bfloat16}, "state": torch.float32, "g": torch.float32, "scale": 1.0,
                    "final": True}


def test_kernel_mode_on_cpu_says_what_to_do():
    q, k, v, log_a, h0 = inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="mode='kernel'"):
        gated_average(q, k, v, log_a, h0, mode="kernel")
