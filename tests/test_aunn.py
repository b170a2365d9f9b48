"""AUNN: index code, architecture, offline training (memorisation, resume), checkpoints, CLI."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plasticlm.aunn import (
    AUNN,
    AUNNConfig,
    OfflineConfig,
    OfflineTrainer,
    decode_index,
    encode_index,
    load_aunn,
    save_aunn,
)
from plasticlm.tokenizer import ByteTokenizer

TINY = AUNNConfig(vocab_size=32, index_bits=16, width=64, depth=2)


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 62), data=st.data())
def test_index_code_round_trips(bits, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=20))
    index = torch.tensor(values + [0, (1 << bits) - 1], dtype=torch.long)
    code = encode_index(index, bits)
    assert code.shape == (len(index), bits)
    assert set(code.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(decode_index(code), index)


def test_index_code_is_binary_lsb_first_and_checks_range():
    assert encode_index(torch.tensor([6]), 4).tolist() == [[-1.0, 1.0, 1.0, -1.0]]
    with pytest.raises(ValueError, match="out of range"):
        encode_index(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="out of range"):
        encode_index(torch.tensor([-1]), 4)
    with pytest.raises(TypeError, match="int64"):
        encode_index(torch.tensor([1.0]), 4)


@pytest.mark.parametrize("field,value", [("width", 0), ("depth", -1), ("index_bits", 63), ("hidden", -2),
                                         ("vocab_size", 1.5), ("norm_eps", 0.0)])
def test_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=f"AUNNConfig.{field} must be"):
        AUNNConfig(**{field: value})
    with pytest.raises(ValueError, match="has no field 'widht'"):
        AUNNConfig.from_dict({"widht": 3})


def test_per_row_weights_match_shared_weights():
    torch.manual_seed(0)
    model = AUNN(TINY)
    index = torch.tensor([[0, 5, 9, 1000], [7, 7, 65535, 3]])  # (B, N)
    params = {k: p.detach().unsqueeze(0).expand(2, *p.shape).clone() for k, p in model.named_parameters()}
    torch.testing.assert_close(model(index, params), model(index), rtol=1e-5, atol=1e-5)
    params["head.bias"][1] += 1.0  # row 1's own weights change row 1 only
    out = model(index, params)
    torch.testing.assert_close(out[0], model(index[0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], model(index[1]) + 1.0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"need index of shape \(2, N\)"):
        model(index[0], params)


def _train(model, stream, steps, **kw):
    cfg = OfflineConfig(batch_size=128, steps=steps, lr=3e-3, warmup_steps=10, **kw)
    trainer = OfflineTrainer(model, stream, cfg)
    losses = [trainer.step()["loss"] for _ in range(steps)]
    return trainer, losses


def test_memorises_a_short_stream_to_near_zero_loss():
    torch.manual_seed(0)
    stream = torch.randint(0, 32, (128,), generator=torch.Generator().manual_seed(1))
    model = AUNN(TINY)
    trainer, losses = _train(model, stream, 200)
    assert losses[0] > 3.0  # ln 32 = 3.47: nothing known at the start
    assert trainer.evaluate() < 0.01  # nats per token over all 128 positions
    assert int(model.next_index) == 128  # reading starts right after the stream
    assert torch.equal(model(torch.arange(128)).argmax(-1), stream)


def test_offline_resume_is_exact(tmp_path):
    stream = torch.randint(0, 32, (500,), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    straight = AUNN(TINY)
    _, want = _train(straight, stream, 12)

    torch.manual_seed(0)
    first = AUNN(TINY)
    trainer, got = _train(first, stream, 6)
    trainer.save(tmp_path / "trainer.pt")
    second = AUNN(TINY)  # different initial weights: everything must come from the file
    resumed = OfflineTrainer(second, stream, OfflineConfig(batch_size=128, steps=12, lr=3e-3, warmup_steps=10))
    resumed.load(tmp_path / "trainer.pt")
    got += [resumed.step()["loss"] for _ in range(6)]
    assert got == want
    for (name, a), b in zip(straight.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_memmap_shard_gives_the_same_batches_as_a_tensor(tmp_path):
    ids = np.random.default_rng(0).integers(0, 32, 1000).astype(np.uint16)
    ids.tofile(tmp_path / "shard.bin")
    shard = np.memmap(tmp_path / "shard.bin", dtype=np.uint16, mode="r")
    cfg = OfflineConfig(batch_size=64, seed=3)
    a = OfflineTrainer(AUNN(TINY), shard, cfg, offset=10)
    b = OfflineTrainer(AUNN(TINY), torch.from_numpy(ids.astype(np.int64)), cfg, offset=10)
    for _ in range(3):
        (ia, ta), (ib, tb) = a.sample(), b.sample()
        assert torch.equal(ia, ib) and torch.equal(ta, tb)
        assert torch.equal(ta, torch.from_numpy(ids.astype(np.int64))[ia - 10])
    assert int(a.model.next_index) == 1010


def test_offline_rejects_bad_streams():
    with pytest.raises(ValueError, match="1-D integer"):
        OfflineTrainer(AUNN(TINY), torch.zeros(3, 4, dtype=torch.long), OfflineConfig())
    with pytest.raises(TypeError, match="numpy array"):
        OfflineTrainer(AUNN(TINY), [1, 2, 3], OfflineConfig())
    with pytest.raises(ValueError, match="does not fit"):
        OfflineTrainer(AUNN(TINY), torch.zeros(10, dtype=torch.long), OfflineConfig(), offset=(1 << 16) - 5)
    trainer = OfflineTrainer(AUNN(TINY), torch.full((10,), 40), OfflineConfig(batch_size=4))
    with pytest.raises(ValueError, match=r"token id 40 at stream position \d+ is outside \[0, 32\)"):
        trainer.step()


def test_checkpoint_round_trip(tmp_path):
    cfg = AUNNConfig(vocab_size=272, index_bits=20, width=32, depth=1)
    model = AUNN(cfg)
    model.next_index.fill_(12345)
    mid = save_aunn(tmp_path, model, ByteTokenizer())
    loaded, tok, meta = load_aunn(tmp_path)
    assert meta["model_id"] == mid and meta["next_index"] == "12345" and tok.vocab_size == 272
    assert loaded.config == cfg and int(loaded.next_index) == 12345
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "aunn.safetensors").write_bytes(b"garbage")  # checked against the manifest before it is read
    with pytest.raises(ValueError, match=r"aunn\.safetensors: truncated or altered"):
        load_aunn(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_aunn(tmp_path / "nowhere")


def test_cli_train_resume_generate(tmp_path, capsys):
    from plasticlm.cli import main

    text = tmp_path / "t.txt"
    text.write_text("abcabcabd " * 40)
    out = tmp_path / "run"
    common = [f"source={text}", "model.width=32", "model.depth=1", "model.index_bits=16", "train.batch_size=64",
              f"out_dir={out}", "save_every=5"]
    assert main(["aunn", "train", *common, "train.steps=10", "--no-progress"]) == 0
    assert main(["aunn", "train", f"out_dir={out}", "train.steps=15", "--resume", "--no-progress"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 16))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 15 and summary["next_index"] == len(text.read_bytes()) - int(400 * 0.02)
    capsys.readouterr()
    argv = ["aunn", "generate", str(out), "--prompt", "abc", "--max-new-tokens", "5", "--temperature", "1",
            "--seed", "4", "--online", "steps=2", "lr=3e-3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("abc")
    assert main(["aunn", "train", "model.widht=3"]) == 2
    assert "unknown config key 'model.widht'" in capsys.readouterr().err
    assert main(["aunn", "train", f"out_dir={tmp_path / 'none'}", "--resume"]) == 2
