"""``plasticlm export-hf CHECKPOINT OUT``: a plasticlm checkpoint as a ``save_pretrained`` folder."""
from __future__ import annotations

import os
from pathlib import Path

from ..files import DataError, atomic_write
from ..hf_folder import MODEL_TYPE

SHIM = "modeling_plasticlm.py"
SHIM_TEXT = '''"""Written by `plasticlm export-hf`. transformers imports this file when the folder is loaded with
trust_remote_code=True in a process that has not imported plasticlm.hf (e.g. the lm_eval command
line). It runs nothing of its own: the model is the installed plasticlm package's."""
from plasticlm.hf import PlasticLMConfig, PlasticLMForCausalLM  # noqa: F401
'''
AUTO_MAP = {"AutoConfig": "modeling_plasticlm.PlasticLMConfig",
            "AutoModelForCausalLM": "modeling_plasticlm.PlasticLMForCausalLM"}


def export_hf(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the checkpoint's model, tokenizer and generation defaults to ``out``; returns ``out``.

    Only the ``plasticlm`` architecture has a transformers model here; another arch is refused,
    naming it. The weights are the checkpoint's, bit for bit, in float32 safetensors.
    """
    from ..checkpoint import load_model
    from .modeling import hf_tokenizer, to_hf

    model, tokenizer, meta = load_model(checkpoint)
    arch = meta.get("arch", MODEL_TYPE)
    if arch != MODEL_TYPE:
        raise DataError(f"{checkpoint}: arch {arch!r} has no Hugging Face model here; export-hf exports "
                        f"{MODEL_TYPE!r} checkpoints only")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; export-hf writes a new folder")
    hf = to_hf(model, tokenizer)
    hf.config.auto_map = AUTO_MAP
    hf.save_pretrained(out)  # safetensors, config.json, generation_config.json
    hf_tokenizer(tokenizer).save_pretrained(out)
    atomic_write(out / SHIM, lambda p: Path(p).write_text(SHIM_TEXT))
    return out
