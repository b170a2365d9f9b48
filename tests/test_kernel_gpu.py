"""fla's chunk_gla kernel against the chunk path, on CUDA (skipped elsewhere).

Reference: the chunk path in float64 on the same (upcast) inputs. Tolerances follow the
device notes: float32 through the matrix units' tf32 mode lands near 3e-4, bf16 operands
between 1e-3 and 1e-2. Run on the GPU with `python -m pytest -m gpu -v tests/test_kernel_gpu.py`;
record the printed figures under benchmarks/.
"""
import pytest
import torch
import torch.nn.functional as F

from plasticlm import gated_average, gated_decay
from plasticlm.ops import kernel_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TOL = {torch.float32: 2e-3, torch.bfloat16: 2e-2}
NAMES = ["o", "final_state", "dq", "dk", "dv", "dlog_a", "dinitial_state"]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run(fn, inputs, mode, do, dS):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    o, S = fn(*leaves, mode=mode)
    grads = torch.autograd.grad((o.double() * do).sum() + (S.double() * dS).sum(), leaves)
    return (o, S, *grads)


@pytest.mark.parametrize("fn", [gated_average, gated_decay], ids=["average", "decay"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T", [63, 200, 1000])
def test_kernel_matches_chunk(fn, dtype, T):
    if not kernel_available():
        pytest.skip("fla is not installed: pip install 'plasticlm[kernels]'")
    torch.manual_seed(T)
    B, H, K, V = 2, 4, 64, 64
    dev = "cuda"
    q = torch.randn(B, T, H, K, device=dev) * K ** -0.5
    k, v = torch.randn(B, T, H, K, device=dev), torch.randn(B, T, H, V, device=dev)
    log_a = F.logsigmoid(torch.randn(B, T, H, K, device=dev) * 2 + 3)
    h0 = torch.randn(B, H, K, V, device=dev)
    low = [q.to(dtype), k.to(dtype), v.to(dtype), log_a, h0]  # gates and state stay float32, as in the model
    do = torch.randn(B, T, H, V, device=dev, dtype=torch.float64)
    dS = torch.randn(B, H, K, V, device=dev, dtype=torch.float64)
    ref = run(fn, [x.double() for x in low], "chunk", do, dS)
    out = run(fn, low, "kernel", do, dS)
    errors = {name: rel(a, b) for name, a, b in zip(NAMES, out, ref)}
    print(f"\n{fn.__name__} {dtype} T={T}: " + " ".join(f"{n}={e:.2e}" for n, e in errors.items()))
    for name, a in zip(NAMES, out):
        assert torch.isfinite(a).all(), name
    for name, e in errors.items():
        assert e < TOL[dtype], (name, e)
