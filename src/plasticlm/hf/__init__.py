"""plasticlm as a Hugging Face transformers model (``pip install 'plasticlm[hf]'``).

Importing this module registers ``plasticlm`` with ``AutoConfig`` and ``AutoModelForCausalLM``,
so in the same process ``AutoModelForCausalLM.from_pretrained(DIR)`` loads a folder written by
``plasticlm export-hf`` (a fresh process that never imports it, e.g. the ``lm_eval`` command line,
passes ``trust_remote_code=True``: the folder's ``modeling_plasticlm.py`` only imports this module)::

    import plasticlm.hf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(DIR), AutoTokenizer.from_pretrained(DIR)
    out = model.generate(**tok(["The module"], return_tensors="pt"), max_new_tokens=20, do_sample=False)

The model is the same :class:`~plasticlm.model.PlasticLM` (as ``.model``); its recurrent
:class:`~plasticlm.state.State` is the generation cache (``past_key_values``, a
:class:`PlasticLMCache`). The folder also loads back into plasticlm without transformers
(:mod:`plasticlm.hf_folder`).
"""
try:
    import transformers  # noqa: F401
except ImportError:
    raise ImportError("plasticlm.hf needs Hugging Face transformers: pip install 'plasticlm[hf]'") from None

from .modeling import PlasticLMCache, PlasticLMConfig, PlasticLMForCausalLM, hf_tokenizer, to_hf  # noqa: E402
from .export import export_hf  # noqa: E402

transformers.AutoConfig.register("plasticlm", PlasticLMConfig, exist_ok=True)
transformers.AutoModelForCausalLM.register(PlasticLMConfig, PlasticLMForCausalLM, exist_ok=True)

__all__ = ["PlasticLMCache", "PlasticLMConfig", "PlasticLMForCausalLM", "export_hf", "hf_tokenizer", "to_hf"]
