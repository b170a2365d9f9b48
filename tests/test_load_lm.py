"""Every kind of checkpoint reaches the evaluations through one loader, and `plasticlm eval` runs on it."""
import json

import pytest
import torch

from plasticlm.aunn.online import AUNNAsLM
from plasticlm.baselines import RecurrentAsLM, TransformerAsLM
from plasticlm.cli import main
from plasticlm.checkpoint import load_lm
from plasticlm.lm import PlasticLMAsLM

SMALL = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "data.seq_len=32", "data.min_len=0", "data.batch_size=2",
         "segment_len=16", "steps=2", "eval_tokens=64", "log.tensorboard=disabled"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    assert main(["train", "tiny", f"out_dir={root / 'plasticlm'}", *SMALL, "--no-progress"]) == 0
    for arch in ("transformer", "gla", "mamba2"):  # every registered architecture trains with `plasticlm train`
        assert main(["train", f"tiny_{arch}", f"out_dir={root / arch}", *SMALL, "model.ffn_hidden=64",
                     "--no-progress"]) == 0
    assert main(["aunn", "train", "model.width=32", "model.depth=1", "train.steps=2", "train.batch_size=64",
                 f"out_dir={root / 'aunn'}", "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("kind,cls", [("plasticlm", PlasticLMAsLM), ("transformer", TransformerAsLM),
                                      ("gla", RecurrentAsLM), ("mamba2", RecurrentAsLM), ("aunn", AUNNAsLM)])
def test_load_lm_picks_the_adapter(checkpoints, kind, cls):
    lm, tok, meta = load_lm(checkpoints / kind)
    assert isinstance(lm, cls) and meta.get("arch", "plasticlm") == kind
    x = torch.tensor([tok.encode("Reading changes the state.")])
    lp, state = lm.score(x, lm.init_state(1))
    assert lp.shape == (1, x.shape[1], tok.vocab_size)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(1, x.shape[1]), atol=1e-4)


@pytest.mark.parametrize("kind", ["transformer", "gla", "aunn"])
def test_eval_cli_runs_on_baselines(checkpoints, tmp_path, kind):
    extra = ["--online", "steps=1", "chunk_len=16"] if kind == "aunn" else []
    out = tmp_path / "eval"
    code = main(["eval", str(checkpoints / kind), "--suite", "perplexity", "--preset", "smoke", "--out", str(out),
                 "--device", "cpu", "--no-progress", *extra])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["checkpoint"]["arch"] == kind
    assert res["suites"]["perplexity"]["results"]["bits_per_byte"] > 0


def test_a_checkpoint_written_before_a_later_field_keeps_its_identity():
    """ModelConfig.ADDED_LATER fields at their defaults are not hashed: the id is the one a
    checkpoint written before they existed carries (its config had no such keys)."""
    import hashlib
    import json

    from plasticlm import ModelConfig, PlasticLM
    from plasticlm.checkpoint import model_id

    cfg = ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2)
    tensors = PlasticLM(cfg).state_dict()
    before = {k: v for k, v in cfg.to_dict().items() if k not in ModelConfig.ADDED_LATER}
    h = hashlib.sha256(json.dumps(before, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    assert model_id(cfg, tensors) == h.hexdigest()[:16]
    mutable = ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, embeddings="mutable")
    assert model_id(mutable, PlasticLM(mutable).state_dict()) != model_id(cfg, tensors)
