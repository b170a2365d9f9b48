"""The architecture registry: each name builds, sizes, adapts and round-trips through one loader."""
import pytest
import torch

from plasticlm import ModelConfig, archs
from plasticlm.checkpoint import load_lm, save_model
from plasticlm.tokenizer import ByteTokenizer

PLASTIC = ModelConfig(vocab_size=272, d_model=32, n_layers=2, n_heads=2)
SMALL = {"mamba2": dict(state_size=8, mamba_head_dim=16)}


@pytest.mark.parametrize("name", ["plasticlm", "transformer", "gla", "mamba2"])
def test_every_arch_builds_sized_and_loads_back_through_one_loader(tmp_path, name):
    torch.manual_seed(0)
    model = archs.build(name, archs.sized_like(name, PLASTIC, **SMALL.get(name, {}))).eval()
    assert archs.arch_of(model) == name
    save_model(tmp_path, model, ByteTokenizer())
    lm, tok, meta = load_lm(tmp_path)
    assert meta["arch"] == name and archs.arch_of(lm.model) == name
    x = torch.tensor([tok.encode("one loader for every architecture")])
    with torch.no_grad():
        want = torch.log_softmax(model(x)[0].float(), -1)
    got, _ = lm.score(x, lm.init_state(1))
    torch.testing.assert_close(got, want)


def test_make_config_checks_types_names_keys_and_the_fields_a_name_implies():
    assert archs.make_config("gla", {"d_model": 64}).mixer == "gla"
    assert archs.make_config("mamba2", {}).mixer == "mamba2"
    with pytest.raises(ValueError, match="model.mixer='mamba2' contradicts arch 'gla'"):
        archs.make_config("gla", {"mixer": "mamba2"})
    with pytest.raises(ValueError, match="unknown config key 'model.width'"):
        archs.make_config("plasticlm", {"width": 3})
    with pytest.raises(ValueError, match="model.d_model must be of type int"):
        archs.make_config("transformer", {"d_model": "wide"})
    with pytest.raises(ValueError, match="unknown arch 'rwkv'; known: aunn, gla, mamba2, plasticlm"):
        archs.get("rwkv")


def test_only_registered_models_have_a_name():
    with pytest.raises(ValueError, match="Linear is not a registered architecture"):
        archs.arch_of(torch.nn.Linear(2, 2))


def test_bf16_sharded_export_loads_back_through_the_one_loader(tmp_path):
    """A checkpoint meant to travel in small files (weights in bf16, shards of at most a bound) loads
    like any other, its model_id computed from what was stored, its shards refused if altered."""
    from plasticlm.checkpoint import read_checkpoint, save_weights

    torch.manual_seed(0)
    model = archs.build("plasticlm", PLASTIC)
    mid = save_weights(tmp_path, PLASTIC, model.state_dict(), ByteTokenizer(), {"arch": "plasticlm"},
                       dtype="bfloat16", shard_mib=0.05)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and all(p.stat().st_size <= 0.05 * 2 ** 20 + 4096 for p in shards)
    ck = read_checkpoint(tmp_path)
    assert ck.model_id == mid and all(t.dtype == torch.bfloat16 for t in ck.tensors.values() if t.is_floating_point())
    lm, _, meta = load_lm(tmp_path)
    for k, v in lm.model.state_dict().items():  # float32 again, equal to the model's weights rounded to bf16
        assert v.dtype == torch.float32 and torch.equal(v, model.state_dict()[k].bfloat16().float()), k
    data = bytearray(shards[-1].read_bytes())
    data[-1] ^= 1
    shards[-1].write_bytes(bytes(data))
    with pytest.raises(ValueError, match=shards[-1].name):
        read_checkpoint(tmp_path)


def test_training_exports_its_final_weights_as_asked(tmp_path):
    from plasticlm.cli import main

    assert main(["train", "tiny", f"out_dir={tmp_path}", "steps=2", "model.d_model=32", "model.n_layers=1",
                 "model.n_heads=2", "data.seq_len=32", "data.min_len=0", "data.batch_size=2", "segment_len=16",
                 "eval_tokens=64", "log.tensorboard=disabled", "checkpoint.export_dtype=bfloat16",
                 "checkpoint.export_shard_mib=0.02", "--no-progress"]) == 0
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    lm, _, meta = load_lm(tmp_path)
    assert meta["dtype"] == "bfloat16" and lm.model.embed.weight.dtype == torch.float32
