"""The mutable embedding table (DESIGN 1.4, RQ6): its chunked path against the token-by-token
reference (reads, final table and every gradient, the initial table's included), what a slot holds,
and the model with it (naive == chunk; the other equalities run in test_model_options.py)."""
import pytest
import torch

from plasticlm import ModelConfig, PlasticLM
from plasticlm.embedding import slots_of, table_chunk, table_naive


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def inputs(B=2, T=45, m=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    slots = torch.randint(0, m, (B, T), generator=g)
    w = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    log_a = torch.nn.functional.logsigmoid(torch.randn(B, T, generator=g, dtype=torch.float64) * 3)
    table = torch.randn(B, m, d, generator=g, dtype=torch.float64)
    log_p = -torch.rand(B, m, generator=g, dtype=torch.float64)
    log_p[:, 0] = 0  # a slot never written: prod a = 1
    table[:, 0] = 0
    return [t.requires_grad_(t.is_floating_point()) for t in (slots, w, log_a, table, log_p)]


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
def test_chunk_equals_naive_with_every_gradient(chunk_size):
    args = inputs()
    ref = table_naive(*args)
    out = table_chunk(*args, chunk_size=chunk_size)
    for a, b in zip(out, ref):
        assert rel(a, b) < 1e-12
    probes = [torch.randn_like(t) for t in ref]

    def grads(outs):
        loss = sum((o * p).sum() for o, p in zip(outs, probes))
        return torch.autograd.grad(loss, args[1:])

    for name, a, b in zip(["w", "log_a", "table", "log_p"], grads(out), grads(ref)):
        assert rel(a, b) < 1e-10, name


def test_a_slot_reads_the_bias_corrected_average_of_its_writes():
    """From an empty table: the first read after one write is that write in full; reads of other
    slots are untouched; a slot written twice with gate a reads a w1 + (1 - a) w2, normalised."""
    B, T, m, d = 1, 4, 3, 2
    slots = torch.tensor([[1, 2, 1, 1]])
    w = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [3.0, 0.0], [9.0, 9.0]]], dtype=torch.float64)
    a = torch.tensor([[0.9, 0.5, 0.6, 0.7]], dtype=torch.float64)
    reads, table, log_p = table_chunk(slots, w, a.log(), torch.zeros(B, m, d, dtype=torch.float64),
                                      torch.zeros(B, m, dtype=torch.float64))
    assert torch.equal(reads[0, 0], torch.zeros(2)) and torch.equal(reads[0, 1], torch.zeros(2))
    assert torch.allclose(reads[0, 2], w[0, 0])  # one write: read in full, whatever its gate
    both = (0.6 * 0.1 * w[0, 0] + 0.4 * w[0, 2]) / (1 - 0.9 * 0.6)
    assert torch.allclose(reads[0, 3], both)
    assert torch.allclose(log_p[0], torch.tensor([1.0, 0.9 * 0.6 * 0.7, 0.5], dtype=torch.float64).log())
    assert torch.equal(table[0, 0], torch.zeros(2))


def test_slots_are_one_per_id_when_there_are_enough():
    ids = torch.arange(300)
    assert len(set(slots_of(ids, 300).tolist())) == 300
    assert slots_of(ids, 7).max() < 7


def test_model_with_mutable_embeddings_naive_equals_chunk():
    torch.manual_seed(0)
    cfg = dict(vocab_size=37, d_model=16, n_layers=2, n_heads=2, chunk_size=8, embeddings="mutable", mutable_slots=13)
    chunk = PlasticLM(ModelConfig(**cfg)).double()
    naive = PlasticLM(ModelConfig(**cfg, mode="naive")).double()
    naive.load_state_dict(chunk.state_dict())
    tokens = torch.randint(0, 37, (2, 30))
    (a, Sa), (b, Sb) = chunk(tokens), naive(tokens)
    assert rel(a, b) < 1e-12
    assert all(rel(x, y) < 1e-12 for x, y in zip(Sa.tensors(), Sb.tensors()))
    assert sorted(Sa.embed) == ["context", "log_gate_prod", "table"]


def test_reading_writes_the_table_and_changes_what_a_token_means():
    """The same token after different contexts gets a different embedding, and only through the
    table: a model with 'parameter' embeddings and the same weights is unaffected."""
    torch.manual_seed(0)
    model = PlasticLM(ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, embeddings="mutable")).double()
    x = torch.tensor([[5, 6, 7, 9]])
    _, S1 = model(torch.tensor([[1, 2, 3, 9]]))
    _, S2 = model(torch.tensor([[4, 4, 8, 9]]))
    h1, _ = model.hidden(x[:, -1:], S1)
    h2, _ = model.hidden(x[:, -1:], S2.with_tensors([*S1.tensors()[:-3], *S2.tensors()[-3:]]))
    assert rel(h1, h2) > 1e-3  # only the table (and its context) differs between the two states


def test_mutable_errors_name_the_field():
    with pytest.raises(ValueError, match=r"ModelConfig.embeddings must be one of \('parameter', 'mutable'\)"):
        ModelConfig(embeddings="hashed")
    with pytest.raises(ValueError, match=r"ModelConfig.mutable_context must be a positive integer, got 0"):
        ModelConfig(mutable_context=0)
    model = PlasticLM(ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, embeddings="mutable"))
    plain = PlasticLM(ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2))
    x = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"state carries no embedding table, this model \(embeddings='mutable'\)"):
        model(x, plain.init_state(1))
    with pytest.raises(ValueError, match=r"state carries a mutable embedding table, this model .* has none"):
        plain(x, model.init_state(1))
    bad = model.init_state(1)
    bad.embed["table"] = torch.zeros(1, 5, 16)
    with pytest.raises(ValueError, match=r"state embed.table has shape \(1, 5, 16\), expected \(1, 37, 16\)"):
        model(x, bad)
    with pytest.raises(ValueError, match="time reversal cannot recover the mutable embedding table"):
        model.rewind(x, model.init_state(1))
