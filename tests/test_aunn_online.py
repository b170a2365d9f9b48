"""AUNN reading by gradient steps: conditioning, the LM contract, the online optimizers, generation."""
import copy

import pytest
import torch
import torch.nn.functional as F

from plasticlm.aunn import (
    AUNN,
    AUNNAsLM,
    AUNNConfig,
    OfflineConfig,
    OfflineTrainer,
    OnlineConfig,
)
from plasticlm.lm import LM

TINY = AUNNConfig(vocab_size=32, index_bits=16, width=64, depth=2)
PATTERN = torch.tensor([[3, 7, 11] * 12])  # (1, 36): a pattern the random training stream never shows


@pytest.fixture(scope="module")
def trained():
    """A tiny AUNN that has memorised 128 random tokens at indices [0, 128)."""
    torch.manual_seed(0)
    model = AUNN(TINY)
    stream = torch.randint(0, 32, (128,), generator=torch.Generator().manual_seed(1))
    trainer = OfflineTrainer(model, stream, OfflineConfig(batch_size=128, steps=150, lr=3e-3, warmup_steps=10))
    for _ in range(150):
        trainer.step()
    model.eval()
    return model


def _nll(lm, index, tokens, state):
    return float(-lm.log_probs_at(index, state).gather(-1, tokens[..., None]).mean())


def test_reading_a_new_pattern_lowers_its_loss(trained):
    """After k online steps, the pattern's loss falls at the indices it was read at (it is
    remembered) and at the indices after them (it is expected to go on)."""
    start = int(trained.next_index)
    read_at = torch.arange(start, start + 36)[None]
    after = torch.arange(start + 36, start + 72)[None]
    # Measured (CPU, torch 2.13): before reading, 6.14 nats at the read indices, 5.19 after them.
    # Rehearsing the whole pattern (window 36), k = 1 / 4 / 8 steps per token: 1.05 / 0.10 / 0.009
    # at the read indices. New tokens only (window 0), k = 4: 1.13 after them, near ln 3 = 1.10,
    # the loss of knowing the pattern's three tokens but not their order.
    got = {}
    for k in (1, 4, 8):
        lm = AUNNAsLM(trained, OnlineConfig(steps=k, lr=1e-3, window=36))
        s0 = lm.init_state(1)
        got[k] = _nll(lm, read_at, PATTERN, lm.read(PATTERN, s0))
    before = _nll(lm, read_at, PATTERN, s0)
    assert before > 5.0
    assert before - got[4] > 5.0
    assert got[8] < got[4] < got[1] - 0.5
    lm = AUNNAsLM(trained, OnlineConfig(steps=4, lr=1e-3))
    s0 = lm.init_state(1)
    s1 = lm.read(PATTERN, s0)
    assert _nll(lm, after, PATTERN, s0) - _nll(lm, after, PATTERN, s1) > 3.5


def test_score_is_predict_then_train_and_never_sees_its_target(trained):
    torch.manual_seed(0)
    x = torch.randint(0, 32, (2, 8))
    for chunk in (1, 3):
        lm = AUNNAsLM(trained, OnlineConfig(steps=2, lr=1e-3, chunk_len=chunk, window=4))
        logp, state = lm.score(x, lm.init_state(2))
        assert logp.shape == (2, 8, 32)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 8), atol=1e-5)
        # read() leaves the very state score() leaves.
        read = lm.read(x, lm.init_state(2))
        for k in state.params:
            assert torch.equal(read.params[k], state.params[k]), k
        assert torch.equal(read.next_index, state.next_index) and torch.equal(read.recent, state.recent)
        assert state.next_index.tolist() == [int(trained.next_index) + 8] * 2
        # The prediction at position t depends on the tokens up to the first position of t's
        # chunk and on nothing after: change every later token, and it stays the same.
        for t in range(8):
            a = t - t % chunk
            y = x.clone()
            y[:, a + 1:] = (y[:, a + 1:] + 1) % 32
            assert torch.equal(lm.score(y, lm.init_state(2))[0][:, t], logp[:, t]), (chunk, t)
            if a > 0:  # and the last token it was conditioned on does matter
                z = x.clone()
                z[:, a] = (z[:, a] + 1) % 32
                assert not torch.equal(lm.score(z, lm.init_state(2))[0][:, t], logp[:, t]), (chunk, t)


def test_chunk_len_one_scores_like_token_by_token(trained):
    lm = AUNNAsLM(trained, OnlineConfig(steps=2, lr=1e-3, window=3))
    x = PATTERN[:, :9]
    logp, state = lm.score(x, lm.init_state(1))
    s = lm.init_state(1)
    for t in range(9):
        step_logp, s = lm.score(x[:, t:t + 1], s)
        torch.testing.assert_close(step_logp[:, 0], logp[:, t], rtol=0, atol=0)


def test_rows_are_independent_and_states_branch(trained):
    lm = AUNNAsLM(trained, OnlineConfig(steps=3, lr=3e-3, window=5, grad_clip=1.0))
    x = torch.randint(0, 32, (3, 8), generator=torch.Generator().manual_seed(5))
    logp, _ = lm.score(x, lm.init_state(3))
    for b in range(3):
        alone, _ = lm.score(x[b:b + 1], lm.init_state(1))
        torch.testing.assert_close(alone[0], logp[b], rtol=1e-4, atol=1e-4)
    # One state, two continuations: reading never changes the state it starts from.
    s = lm.read(x, lm.init_state(3))
    before = copy.deepcopy(s)
    a, _ = lm.score(x[:, :4], s)
    b, _ = lm.score(x[:, 4:], s)
    a2, _ = lm.score(x[:, :4], s)
    assert torch.equal(a, a2)
    for k in s.params:
        assert torch.equal(s.params[k], before.params[k])
    assert isinstance(lm, LM)
    assert torch.equal(s.clone().params["head.bias"], s.params["head.bias"])


def test_generation_is_deterministic_with_a_seed(trained):
    lm = AUNNAsLM(trained, OnlineConfig(steps=2, lr=3e-3))
    prompt = PATTERN[:, :6].repeat(2, 1)
    s = lm.init_state(2)
    runs = [lm.generate(prompt, s, 12, temperature=1.0, generator=torch.Generator().manual_seed(seed))
            for seed in (0, 0, 1)]
    (t0, s0), (t1, s1), (t2, _) = runs
    assert t0.shape == (2, 12) and t0.dtype == torch.long
    assert torch.equal(t0, t1)
    for k in s0.params:
        assert torch.equal(s0.params[k], s1.params[k])
    assert not torch.equal(t0, t2)
    assert s0.next_index.tolist() == [int(trained.next_index) + 18] * 2
    # Greedy generation continues what it read; the generated tokens were read too.
    greedy, sg = lm.generate(PATTERN, lm.init_state(1), 3)
    assert set(greedy[0].tolist()) <= {3, 7, 11}
    empty, _ = lm.generate(prompt, s, 0)
    assert empty.shape == (2, 0)


def test_sgd_step_is_the_gradient_step(trained):
    """One sgd step on one token is theta - lr * grad of its loss, and decay pulls toward theta_0
    exactly as theta - lr * g + lambda * (theta_0 - theta)."""
    lr, lam = 0.05, 0.3
    lm = AUNNAsLM(trained, OnlineConfig(steps=2, optimizer="sgd", lr=lr, decay=lam))
    start = int(trained.next_index)
    state = lm.fit(torch.tensor([[5]]), lm.init_state(1))
    ref = copy.deepcopy(trained)
    theta0 = {k: p.detach().clone() for k, p in trained.named_parameters()}
    for _ in range(2):
        ref.zero_grad()
        F.cross_entropy(ref(torch.tensor([start])), torch.tensor([5])).backward()
        with torch.no_grad():
            for k, p in ref.named_parameters():
                p.copy_(p - lr * p.grad + lam * (theta0[k] - p))
    for k, p in ref.named_parameters():
        torch.testing.assert_close(state.params[k][0], p, rtol=1e-5, atol=1e-6)


def test_adam_steps_match_torch_adam(trained):
    lm = AUNNAsLM(trained, OnlineConfig(steps=3, optimizer="adam", lr=1e-2, beta1=0.8, beta2=0.9, eps=1e-6,
                                        window=4))
    x = torch.tensor([[1, 2, 3, 4]])
    state = lm.fit(x, lm.init_state(1))
    ref = copy.deepcopy(trained)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.8, 0.9), eps=1e-6)
    index = torch.arange(int(trained.next_index), int(trained.next_index) + 4)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ref(index), x[0]).backward()
        opt.step()
    for k, p in ref.named_parameters():
        torch.testing.assert_close(state.params[k][0], p, rtol=1e-4, atol=5e-5)  # lr 1e-2: steps are ~1e-2
    assert state.updates == 3


def test_decay_keeps_what_was_learnt_offline(trained):
    """Without decay, reading the pattern overwrites the memorised stream; decay toward the
    pre-reading weights keeps it, at the price of learning the pattern less.
    Measured (CPU, torch 2.13), adam lr 1e-3, k = 4: decay 0 -> stream 5.49 nats, pattern 1.09;
    decay 0.1 -> stream 0.22, pattern 2.66 (6.14 before reading)."""
    start = int(trained.next_index)
    read_at = torch.arange(start, start + 36)[None]
    stream = trained(torch.arange(128)).argmax(-1)[None]
    got = {}
    for decay in (0.0, 0.1):
        lm = AUNNAsLM(trained, OnlineConfig(steps=4, lr=1e-3, decay=decay))
        s = lm.read(PATTERN, lm.init_state(1))
        got[decay] = (_nll(lm, torch.arange(128)[None], stream, s), _nll(lm, read_at, PATTERN, s))
    assert got[0.0][0] > 3.0 and got[0.1][0] < 0.5
    assert got[0.0][1] < got[0.1][1] < 4.0


def test_scoring_works_under_inference_mode(trained):
    lm = AUNNAsLM(trained, OnlineConfig(steps=2, lr=1e-3))
    want, _ = lm.score(PATTERN[:, :5], lm.init_state(1))
    with torch.inference_mode():
        got, state = lm.score(PATTERN[:, :5], lm.init_state(1))
        more, _ = lm.score(PATTERN[:, 5:8], state)
    assert torch.equal(got, want) and more.shape == (1, 3, 32)


def test_bad_inputs_are_named(trained):
    lm = AUNNAsLM(trained)
    s = lm.init_state(2)
    with pytest.raises(ValueError, match="3 rows, the state 2"):
        lm.score(torch.zeros(3, 4, dtype=torch.long), s)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 32\)"):
        lm.score(torch.full((2, 4), 32), s)
    with pytest.raises(ValueError, match="shape"):
        lm.score(torch.zeros(2, 0, dtype=torch.long), s)
    s.next_index.fill_((1 << 16) - 2)
    with pytest.raises(ValueError, match="beyond the 16-bit code"):
        lm.read(torch.zeros(2, 4, dtype=torch.long), s)
    sgd = AUNNAsLM(trained, OnlineConfig(optimizer="sgd"))
    with pytest.raises(ValueError, match="another online optimizer than 'sgd'"):
        sgd.read(torch.zeros(2, 4, dtype=torch.long), lm.init_state(2))
    with pytest.raises(ValueError, match="OnlineConfig.optimizer must be one of"):
        OnlineConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"OnlineConfig.decay must be in \[0, 1\)"):
        OnlineConfig(decay=1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(trained, tmp_path):
    """Per-row weights, online Adam, resumable offline training and seeded generation on CUDA."""
    cpu = AUNNAsLM(trained, OnlineConfig(steps=2, lr=1e-3, window=4))
    gpu = AUNNAsLM(copy.deepcopy(trained).cuda(), OnlineConfig(steps=2, lr=1e-3, window=4))
    x = torch.randint(0, 32, (3, 10), generator=torch.Generator().manual_seed(0))
    want, _ = cpu.score(x, cpu.init_state(3))
    got, state = gpu.score(x.cuda(), gpu.init_state(3))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)
    gens = [gpu.generate(x.cuda(), state, 8, temperature=1.0, generator=torch.Generator("cuda").manual_seed(1))[0]
            for _ in range(2)]
    assert torch.equal(gens[0], gens[1])
    stream = torch.randint(0, 32, (300,), generator=torch.Generator().manual_seed(2)).cuda()
    cfg = OfflineConfig(batch_size=64, steps=8)
    torch.manual_seed(0)
    a = OfflineTrainer(AUNN(TINY).cuda(), stream, cfg)
    want = [a.step()["loss"] for _ in range(8)]
    torch.manual_seed(0)
    b = OfflineTrainer(AUNN(TINY).cuda(), stream, cfg)
    got = [b.step()["loss"] for _ in range(4)]
    b.save(tmp_path / "t.pt")
    c = OfflineTrainer(AUNN(TINY).cuda(), stream, cfg)
    c.load(tmp_path / "t.pt")
    got += [c.step()["loss"] for _ in range(4)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)
