"""A Hugging Face ``save_pretrained`` folder of a plasticlm model, read without transformers.

``plasticlm export-hf`` (:mod:`plasticlm.hf`) writes such a folder::

    config.json         model_type "plasticlm", every ModelConfig field at top level, transformers' own keys
    model.safetensors   the PlasticLM's tensors, each name prefixed "model."
    tokenizer.json      a `tokenizers` file (PreTrainedTokenizerFast): the BPE as trained, or the byte
                        tokenizer as a BPE without merges whose ids are the bytes, then the specials
    tokenizer_config.json, generation_config.json, modeling_plasticlm.py (for trust_remote_code)

and :func:`plasticlm.checkpoint.read_checkpoint` reads it back with the helpers here, so
``load_lm``, ``plasticlm generate`` and ``plasticlm eval`` take it like any checkpoint. It has
no manifest (transformers writes none), so what the manifest guarantees elsewhere is checked
here from the files themselves: config.json must describe a plasticlm (another model_type, an
unknown field or a bad value is refused naming the file and the field), every tensor's name,
shape and dtype must be the model's and its values finite, and the tokenizer must be there and
fit the vocabulary. The model_id is computed from the config and tensors, so it equals the
checkpoint's that was exported, and a state that checkpoint read loads with the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import archs
from .files import MANIFEST, DataError, read_json
from .tokenizer import SPECIAL_TOKENS, BPETokenizer, ByteTokenizer, Tokenizer, _byte_decoder, _require_tokenizers

MODEL_TYPE = "plasticlm"
CONFIG, WEIGHTS, INDEX, TOKENIZER = "config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json"
PREFIX = "model."
"""PlasticLMForCausalLM holds the PlasticLM as ``.model``."""
TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")
HF_KEYS = {"model_type", "architectures", "auto_map", "transformers_version", "dtype", "torch_dtype", "use_cache",
           "return_dict", "output_hidden_states", "output_attentions", "chunk_size_feed_forward", "is_encoder_decoder",
           "id2label", "label2id", "problem_type", "tie_word_embeddings", *TOKEN_FIELDS}
"""Keys transformers itself writes into a config.json, beside the model's own fields."""


def model_fields() -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(archs.config_class(MODEL_TYPE))]


def is_hf_folder(directory: str | os.PathLike) -> bool:
    """A folder transformers wrote: a config.json and no plasticlm manifest."""
    d = Path(directory)
    return os.path.lexists(d / CONFIG) and not os.path.lexists(d / MANIFEST)


def split_config(data, where: str):
    """(ModelConfig, transformers' keys) of a parsed config.json; DataError naming ``where`` and the field."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: not a JSON object")
    if data.get("model_type") != MODEL_TYPE:
        raise DataError(f"{where}: field 'model_type' is {data.get('model_type')!r}, not {MODEL_TYPE!r}: a folder "
                        "of another architecture (only plasticlm models load here)")
    fields = model_fields()
    unknown = sorted(set(data) - set(fields) - HF_KEYS)
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r} (a plasticlm config.json holds the ModelConfig "
                        f"fields {fields} and transformers' own keys)")
    try:
        config = archs.make_config(MODEL_TYPE, {k: data[k] for k in fields if k in data}, where=where)
    except ValueError as e:
        raise DataError(f"{where}: {e}" if where not in str(e) else str(e)) from None
    return config, {k: data[k] for k in data if k in HF_KEYS}


def weight_files(d: Path) -> list[str]:
    """The folder's safetensors files (one, or those its index names)."""
    if os.path.lexists(d / INDEX):  # a sharded save: the index maps every tensor to its file
        index = read_json(d / INDEX, within=d)
        files = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(files, dict) or not all(isinstance(f, str) and "/" not in f for f in files.values()):
            raise DataError(f"{d / INDEX}: field 'weight_map' must map tensor names to files of this folder")
        return sorted(set(files.values()))
    if not os.path.lexists(d / WEIGHTS):
        raise DataError(f"{d / WEIGHTS}: missing (the folder's {CONFIG} names a plasticlm, but it holds no weights)")
    return [WEIGHTS]


# -- the tokenizer as a `tokenizers` file --------------------------------------------------------

def tokenizer_json(tokenizer: Tokenizer) -> str:
    """``tokenizer`` as a `tokenizers` JSON (what PreTrainedTokenizerFast loads); same ids for every text.

    The byte tokenizer becomes a BPE without merges over the 256 byte symbols, with id = byte,
    then the specials from 256: byte-level pre-tokenization turns any text into those symbols,
    so it encodes exactly as ByteTokenizer does.
    """
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer._tok.to_str()
    if not isinstance(tokenizer, ByteTokenizer):
        raise ValueError(f"cannot export a {type(tokenizer).__name__} as a Hugging Face tokenizer")
    tk = _require_tokenizers()
    vocab = {c: b for c, b in _byte_decoder().items()}
    hf = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = tk.decoders.ByteLevel()
    hf.add_special_tokens(list(SPECIAL_TOKENS))
    return hf.to_str()


def _is_byte_tokenizer(spec) -> bool:
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("merges"):
        return False
    added = [(t.get("id"), t.get("content")) for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    return (model.get("vocab") == _byte_decoder() and added == [(256 + i, t) for i, t in enumerate(SPECIAL_TOKENS)]
            and spec.get("normalizer") is None and (spec.get("pre_tokenizer") or {}).get("type") == "ByteLevel")


def load_hf_tokenizer(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Tokenizer:
    """The plasticlm tokenizer of a folder's tokenizer.json: ByteTokenizer for the byte layout
    :func:`tokenizer_json` writes, else the BPE it holds (which must carry plasticlm's specials)."""
    if not os.path.lexists(path):
        raise DataError(f"{path}: missing: a plasticlm folder must hold its tokenizer (save it with "
                        "tokenizer.save_pretrained, or export with `plasticlm export-hf`)")
    spec = read_json(path, within=within)
    if _is_byte_tokenizer(spec):
        return ByteTokenizer()
    try:
        return BPETokenizer.from_spec({"type": "bpe", "tokenizer": spec}, path)
    except ValueError as e:
        raise DataError(f"{path}: {e}" if str(path) not in str(e) else str(e)) from None
