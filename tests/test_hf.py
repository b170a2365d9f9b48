"""plasticlm.hf: the transformers model around the same PlasticLM, export-hf, and the folder read back.

A tiny model with a wide initialisation (init_std 0.3), so its greedy continuations vary from
token to token instead of repeating one, and argmax margins are far above rounding.
"""
import json
import shutil
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import plasticlm.hf as phf  # noqa: E402  (registers plasticlm with the Auto classes)
from plasticlm import ModelConfig, PlasticLM  # noqa: E402
from plasticlm.checkpoint import load_lm, load_model, save_model  # noqa: E402
from plasticlm.cli import main  # noqa: E402
from plasticlm.files import DataError  # noqa: E402
from plasticlm.tokenizer import BPETokenizer, ByteTokenizer  # noqa: E402

AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
PROMPTS = ["The module", "Hi", "A longer prompt, of several words"]


def tiny(vocab_size=272, **kw):
    torch.manual_seed(0)
    return PlasticLM(ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=2, chunk_size=8,
                                 init_std=0.3, **kw)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, its checkpoint, the export-hf folder, the model_id save_model returned)."""
    d = tmp_path_factory.mktemp("hf")
    model = tiny()
    mid = save_model(d / "ckpt", model, ByteTokenizer())
    assert main(["export-hf", str(d / "ckpt"), str(d / "hf")]) == 0
    return model, d / "ckpt", d / "hf", mid


@pytest.fixture(scope="module")
def hf(exported):
    return AutoModelForCausalLM.from_pretrained(exported[2]).eval(), AutoTokenizer.from_pretrained(exported[2])


def ids_of(text):
    return torch.tensor([ByteTokenizer().encode(text)])


def test_the_folder_holds_what_transformers_and_plasticlm_need(exported):
    files = sorted(p.name for p in exported[2].iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "modeling_plasticlm.py",
                     "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((exported[2] / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["d_model"]) == ("plasticlm", ["PlasticLMForCausalLM"], 32)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (257, 258, 256)


def test_forward_logits_equal_plasticlm(exported, hf):
    model, (hf_model, _) = exported[0], hf
    assert isinstance(hf_model, phf.PlasticLMForCausalLM) and isinstance(hf_model.model, PlasticLM)
    x = ids_of("The module returns the value")
    out = hf_model(x)
    assert torch.equal(out.logits, model(x)[0])
    assert isinstance(out.past_key_values, phf.PlasticLMCache) and out.past_key_values.seen == x.shape[1]
    loss = hf_model(x, labels=x).loss
    assert torch.equal(loss, torch.nn.functional.cross_entropy(out.logits[0, :-1], x[0, 1:]))
    # The cache carries the State: the next piece after it equals the model carried by hand.
    y = ids_of(" and more")
    _, s = model(x)
    assert torch.equal(hf_model(y, past_key_values=out.past_key_values).logits, model(y, s)[0])


def test_save_load_round_trip_is_bit_identical(exported, hf, tmp_path):
    model, ckpt, folder, mid = exported
    hf[0].save_pretrained(tmp_path / "again")  # what a transformers user writes, e.g. after fine-tuning
    hf[1].save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    want = model.state_dict()
    for got in (hf[0].model.state_dict(), again.model.state_dict(), load_model(folder)[0].state_dict(),
                load_model(tmp_path / "again")[0].state_dict()):
        assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    # plasticlm reads the folder as the checkpoint it came from: same model_id, so its states fit.
    lm, tok, meta = load_lm(folder)
    assert (meta["model_id"], meta["arch"], type(tok)) == (mid, "plasticlm", ByteTokenizer)


def test_byte_tokenizer_ids_equal(hf):
    tok, ours = hf[1], ByteTokenizer()
    for text in ["plain ascii", "ünïcödé 日本語\n\ttabs", "  spaces  ", ""]:
        assert tok(text)["input_ids"] == ours.encode(text)
        assert tok.decode(ours.encode(text)) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (257, 258, 256)
    # Special-token names become the tokens, as in `plasticlm generate`'s prompts.
    assert tok("a[SEP]b")["input_ids"] == [97, ours.token_id("[SEP]"), 98]


def test_bpe_tokenizer_exports_and_loads_back(tmp_path):
    bpe = BPETokenizer.train(["the cat sat on the mat, the cat ate the rat"] * 20, vocab_size=300, min_frequency=1)
    model = tiny(vocab_size=bpe.vocab_size)
    save_model(tmp_path / "ckpt", model, bpe)
    phf.export_hf(tmp_path / "ckpt", tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    back = load_model(tmp_path / "hf")[1]
    assert isinstance(back, BPETokenizer)
    for text in ["the cat sat", "a rat that was not seen before, ünï"]:
        assert tok(text)["input_ids"] == bpe.encode(text) == back.encode(text)
        assert tok.decode(bpe.encode(text)) == text
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 1, 2)


def new_tokens(out, prompt_len, eos=258, pad=256):
    return [t for t in out[prompt_len:].tolist() if t not in (eos, pad)]


@pytest.mark.parametrize("source", ["ckpt", "hf"])
def test_greedy_generate_equals_plasticlm_generate(exported, hf, capsys, source):
    """`plasticlm generate --temperature 0` on the checkpoint, and on the exported folder itself."""
    hf_model, tok = hf
    enc = tok(PROMPTS[0], return_tensors="pt")
    out = hf_model.generate(**enc, max_new_tokens=24, do_sample=False)
    want = ByteTokenizer().decode(new_tokens(out[0], enc["input_ids"].shape[1]))
    capsys.readouterr()
    path = exported[1] if source == "ckpt" else exported[2]
    assert main(["generate", str(path), "--prompt", PROMPTS[0], "--temperature", "0", "--max-new-tokens", "24"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert len(set(out[0, enc["input_ids"].shape[1]:].tolist())) > 8  # a varied continuation, not one token repeated


def test_batch_of_prompts_of_different_lengths_left_padded(hf):
    hf_model, tok = hf
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert tok.padding_side == "left" and not bool(enc["attention_mask"].all())
    batch = hf_model.generate(**enc, max_new_tokens=12, do_sample=False)
    T = enc["input_ids"].shape[1]
    for r, p in enumerate(PROMPTS):
        alone = hf_model.generate(**tok(p, return_tensors="pt"), max_new_tokens=12, do_sample=False)
        assert batch[r, T:].tolist() == alone[0, -12:].tolist()
    # The padded forward's logits at real positions are each prompt's own, bit for bit; 0 at pads.
    logits = hf_model(**enc).logits
    for r, p in enumerate(PROMPTS):
        n = len(tok(p)["input_ids"])
        assert torch.equal(logits[r, T - n:], hf_model(ids_of(p)).logits[0])
        assert not bool(logits[r, :T - n].any())


def test_right_padding_is_refused(hf):
    hf_model, tok = hf
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="right")
    with pytest.raises(ValueError, match=r"attention_mask row 1 has a zero after its first real token: only left"):
        hf_model(**enc)


@pytest.mark.parametrize("padded", [False, True])
def test_generation_with_the_cache_equals_recomputing_the_prefix(hf, padded):
    hf_model, tok = hf
    enc = tok(PROMPTS if padded else PROMPTS[:1], return_tensors="pt", padding=True)
    cached = hf_model.generate(**enc, max_new_tokens=16, do_sample=False)
    again = hf_model.generate(**enc, max_new_tokens=16, do_sample=False, use_cache=False)
    assert cached.tolist() == again.tolist()


def test_beam_search_and_continuing_from_a_returned_cache(hf):
    hf_model, tok = hf
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    beams = [hf_model.generate(**enc, max_new_tokens=6, num_beams=3, do_sample=False, use_cache=c) for c in (True, False)]
    assert beams[0].tolist() == beams[1].tolist()
    first = hf_model.generate(**enc, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert isinstance(first.past_key_values, phf.PlasticLMCache) and first.past_key_values.seen == first.sequences.shape[1] - 1
    mask = torch.cat([enc["attention_mask"], torch.ones(2, 3, dtype=torch.long)], 1)
    more = hf_model.generate(first.sequences, attention_mask=mask, past_key_values=first.past_key_values,
                             max_new_tokens=3, do_sample=False)
    assert more.tolist() == hf_model.generate(**enc, max_new_tokens=6, do_sample=False).tolist()


def test_sampling_is_seeded_and_top_k_1_is_greedy(hf):
    hf_model, tok = hf
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(hf_model.generate(**enc, max_new_tokens=10, do_sample=True, temperature=1.5))
    assert runs[0].tolist() == runs[1].tolist() and runs[0].shape == (2, enc["input_ids"].shape[1] + 10)
    greedy = hf_model.generate(**enc, max_new_tokens=10, do_sample=False)
    assert runs[0].tolist() != greedy.tolist()
    top1 = hf_model.generate(**enc, max_new_tokens=10, do_sample=True, top_k=1)
    assert top1.tolist() == greedy.tolist()


def test_eos_token_id_ends_each_row_and_max_new_tokens_bounds_it(hf):
    hf_model, tok = hf
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    T = enc["input_ids"].shape[1]
    free = hf_model.generate(**enc, max_new_tokens=12, do_sample=False)
    eos = int(free[0, T + 4])  # row 0 emits it at step 5 (or earlier, where it occurs first)
    cut = hf_model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    for r in range(2):
        row = free[r, T:].tolist()
        end = row.index(eos) + 1 if eos in row else len(row)
        got = cut[r, T:].tolist()
        assert got[:end] == row[:end] and all(t == 256 for t in got[end:])  # pad after the row's end
    # Alone, the row ends at its eos: the output is the prompt and the tokens up to it, no more.
    alone = hf_model.generate(**tok(PROMPTS[0], return_tensors="pt"), max_new_tokens=12, do_sample=False,
                              eos_token_id=eos)
    n = len(tok(PROMPTS[0])["input_ids"])
    assert alone[0, n:].tolist() == free[0, T:T + free[0, T:].tolist().index(eos) + 1].tolist()


def test_a_fresh_process_loads_the_folder_with_trust_remote_code(exported):
    """What the lm_eval command line does: nothing of plasticlm imported beforehand."""
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], "
            "trust_remote_code=True); print(type(m).__module__, type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(exported[2])], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["plasticlm.hf.modeling", "PlasticLMForCausalLM"]


# -- bad input ------------------------------------------------------------------------------------

def copy_folder(exported, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(exported[2], d)
    return d


def edit_config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def test_export_refuses_another_arch(tmp_path, capsys):
    from plasticlm import archs

    config = archs.sized_like("transformer", ModelConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2))
    save_model(tmp_path / "ckpt", archs.build("transformer", config), ByteTokenizer())
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 1
    assert "arch 'transformer' has no Hugging Face model here" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_a_folder_of_another_architecture_is_refused(exported, tmp_path):
    d = copy_folder(exported, tmp_path)
    edit_config(d, model_type="gpt2")
    with pytest.raises(DataError, match=rf"{d / 'config.json'}: field 'model_type' is 'gpt2', not 'plasticlm'"):
        load_lm(d)


def test_a_missing_tokenizer_is_refused(exported, tmp_path, capsys):
    d = copy_folder(exported, tmp_path)
    (d / "tokenizer.json").unlink()
    with pytest.raises(DataError, match=rf"{d / 'tokenizer.json'}: missing"):
        load_lm(d)
    assert main(["generate", str(d), "--prompt", "x"]) == 1
    assert f"{d / 'tokenizer.json'}: missing" in capsys.readouterr().err


def test_a_config_with_an_unknown_field_is_refused(exported, tmp_path, capsys):
    d = copy_folder(exported, tmp_path)
    edit_config(d, n_layer=3)
    with pytest.raises(DataError, match=rf"{d / 'config.json'}: unknown field 'n_layer'"):
        load_lm(d)
    assert main(["eval", str(d), "--suite", "perplexity", "--preset", "smoke"]) == 1
    assert "unknown field 'n_layer'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"config.json: unknown field 'n_layer' for a plasticlm model"):
        AutoModelForCausalLM.from_pretrained(d)


def test_a_config_with_a_bad_value_is_refused(exported, tmp_path):
    d = copy_folder(exported, tmp_path)
    edit_config(d, chunk_size=3)
    with pytest.raises(DataError, match=r"config.json: .*chunk_size must be a power of two, got 3"):
        load_lm(d)


def test_tensors_that_do_not_fit_are_refused(exported, tmp_path):
    d = copy_folder(exported, tmp_path)
    edit_config(d, d_model=64)
    with pytest.raises(DataError, match=r"model.safetensors: tensor \S+ has shape"):
        load_lm(d)


def test_missing_transformers_gives_a_clear_error(monkeypatch):
    import builtins
    import importlib

    real = builtins.__import__

    def no_transformers(name, *a, **k):
        if name.split(".")[0] == "transformers":
            raise ImportError(name)
        return real(name, *a, **k)

    for name in [m for m in sys.modules if m == "plasticlm.hf" or m.startswith("plasticlm.hf.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match=r"pip install 'plasticlm\[hf\]'"):
        importlib.import_module("plasticlm.hf")


def test_plasticlm_eval_reads_the_folder_as_the_checkpoint(exported, tmp_path):
    results = {}
    for name, path in (("ckpt", exported[1]), ("hf", exported[2])):
        args = ["eval", str(path), "--suite", "perplexity", "--preset", "smoke", "--out", str(tmp_path / name),
                "--no-progress", "--no-controls", "perplexity.max_docs=3"]
        assert main(args) == 0
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    a, b = (results[n]["suites"]["perplexity"]["results"] for n in ("ckpt", "hf"))
    assert a == b and a["n_tokens"] > 0
    assert results["ckpt"]["checkpoint"]["model_id"] == results["hf"]["checkpoint"]["model_id"] == exported[3]


def test_the_hf_config_has_every_model_config_field_and_carries_the_mutable_table(tmp_path):
    """A field added to ModelConfig must reach config.json, or an exported model would not load."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields <= set(vars(phf.PlasticLMConfig)), sorted(fields - set(vars(phf.PlasticLMConfig)))
    model = tiny(embeddings="mutable", mutable_slots=64)
    save_model(tmp_path / "ckpt", model, ByteTokenizer())
    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = ids_of("The module returns the value")
    assert torch.equal(hf_model(x).logits, model(x)[0])
    state = hf_model(x).past_key_values.state
    assert sorted(state.embed) == ["context", "log_gate_prod", "table"]
