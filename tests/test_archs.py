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
