"""chunked_cross_entropy equals the plain loss and its gradients; segment_backward's opt-in uses it."""
import pytest
import torch
import torch.nn.functional as F

from plasticlm import ModelConfig, PlasticLM, segment_backward
from plasticlm.trainer.chunked_ce import chunked_cross_entropy
from plasticlm.trainer.segment import segment_loss


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, None], ids=lambda c: f"rows{c}")
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_equals_plain_loss_and_gradients(chunk_rows, weighted):
    torch.manual_seed(0)
    B, T, d, V = 3, 21, 16, 50
    h = torch.randn(B, T, d, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T))
    w = torch.rand(B, T, dtype=torch.float64) if weighted else None
    if weighted:
        w[0, :5] = 0
        y[0, :5] = -100  # padding ids carry weight 0 and may lie outside the vocabulary
    total = w.sum() if weighted else torch.tensor(float(B * T), dtype=torch.float64)

    ref = segment_loss(F.linear(h, W), y, torch.ones(B, T, dtype=torch.float64) if w is None else w, total)
    gh, gW = torch.autograd.grad(ref, (h, W))
    loss = chunked_cross_entropy(h, W, y, w, chunk_rows=chunk_rows)
    torch.testing.assert_close(loss, ref)
    gh2, gW2 = torch.autograd.grad(loss * 3, (h, W))  # an upstream gradient that is not 1
    torch.testing.assert_close(gh2, 3 * gh)
    torch.testing.assert_close(gW2, 3 * gW)


def test_matches_torch_cross_entropy_mean_and_runs_without_grad():
    torch.manual_seed(1)
    h, W, y = torch.randn(40, 8), torch.randn(30, 8), torch.randint(0, 30, (40,))
    ref = F.cross_entropy(h @ W.t(), y)
    torch.testing.assert_close(chunked_cross_entropy(h, W, y, chunk_rows=9), ref)
    with torch.no_grad():
        torch.testing.assert_close(chunked_cross_entropy(h, W, y, chunk_rows=9), ref)


def test_only_the_needed_gradient_is_formed():
    h = torch.randn(10, 4, requires_grad=True)
    W = torch.randn(6, 4)
    chunked_cross_entropy(h, W, torch.randint(0, 6, (10,))).backward()
    assert h.grad is not None and W.grad is None


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="weight must be"):
        chunked_cross_entropy(torch.randn(4, 8), torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must"):
        chunked_cross_entropy(torch.randn(4, 8), torch.randn(5, 8), torch.zeros(3, dtype=torch.long))


def test_segment_backward_fused_loss_equals_plain():
    torch.manual_seed(2)
    model = PlasticLM(ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2)).double()
    x, y = torch.randint(0, 40, (2, 50)), torch.randint(0, 40, (2, 50))
    w = torch.rand(2, 50, dtype=torch.float64)
    loss = segment_backward(model, x, y, 16, w)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused = segment_backward(model, x, y, 16, w, fused_loss=True)
    torch.testing.assert_close(fused, loss)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)
