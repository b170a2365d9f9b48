"""What only a GPU can check (skipped elsewhere): segment BPTT under bf16 autocast against an fp32
reference, one training step of every architecture on CUDA, and state files to and from CUDA.
``bash benchmarks/gpu.sh`` runs these first."""
import math

import pytest
import torch

from plasticlm import ModelConfig, PlasticLM, State, archs, segment_backward
from plasticlm.trainer.config import load_config
from plasticlm.trainer.loop import Trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("reversible", [True, False], ids=["rev", "plain"])
def test_segment_backward_under_bf16_autocast_tracks_the_fp32_gradient(reversible):
    torch.manual_seed(0)
    model = PlasticLM(ModelConfig(vocab_size=272, d_model=128, n_layers=2, n_heads=4, reversible=reversible)).cuda()
    x = torch.randint(0, 272, (4, 1000), device="cuda")
    y = torch.randint(0, 272, (4, 1000), device="cuda")
    segment_backward(model, x, y, 128)
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, state = segment_backward(model, x, y, 128, return_state=True)
    assert math.isfinite(float(loss)) and all(s.dtype == torch.float32 for s in state.tensors())  # fp32 states
    errors = {n: rel(p.grad, ref[n]) for n, p in model.named_parameters()}
    print("\nbf16 against fp32 gradient, worst:", max(errors.items(), key=lambda kv: kv[1]))
    assert max(errors.values()) < 5e-2, errors


@pytest.mark.parametrize("recipe", ["tiny", "tiny_transformer", "tiny_gla", "tiny_mamba2"])
def test_one_training_step_of_every_architecture_on_cuda(tmp_path, recipe):
    t = Trainer(load_config(recipe, [f"out_dir={tmp_path}", "steps=1", "log.tensorboard=disabled",
                                     "eval_tokens=2048"]), progress=False)
    assert t.device.type == "cuda" and t.opt.defaults["fused"]
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    rec = t.train_step(t.next_batch())
    assert math.isfinite(rec["loss"]) and not rec["skipped_step"]
    assert any(not torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    assert archs.arch_of(t.model) == t.cfg.arch


def test_state_files_round_trip_to_and_from_cuda(tmp_path):
    model = PlasticLM(ModelConfig(vocab_size=272, d_model=64, n_layers=2, n_heads=2)).cuda()
    _, state = model(torch.randint(0, 272, (1, 300), device="cuda"))
    state.save(tmp_path / "s.state")
    back, _ = State.load(tmp_path / "s.state", device="cuda")
    assert all(b.is_cuda and torch.equal(a, b) for a, b in zip(state.tensors(), back.tensors()))
    nxt = torch.randint(0, 272, (1, 20), device="cuda")
    torch.testing.assert_close(model(nxt, back)[0], model(nxt, state)[0])
