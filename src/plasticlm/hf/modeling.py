"""PlasticLMConfig, PlasticLMForCausalLM and the cache that carries the recurrent State through ``generate``.

The HF model is a shell around one :class:`~plasticlm.model.PlasticLM` (``.model``): forward
runs it, nothing is reimplemented. As in transformers' Mamba, the model brings its own cache
(``_supports_default_dynamic_cache`` is False, so ``generate`` makes no DynamicCache): the first
forward with ``use_cache`` returns a :class:`PlasticLMCache` holding the State after the
prompt, ``generate`` hands it back as ``past_key_values`` with only the new token, and the
State moves on by one token per step. Without a cache (``use_cache=False``) every step reads
the whole prefix from a fresh state.

Padding. A recurrent state reads every token it is given, so a pad token would change it.
Left padding is handled exactly: with an ``attention_mask`` holding zeros, each row's real
tokens (a suffix: pads must come first) are read on their own from a fresh state, the rows'
States are stacked, and the logits at pad positions are 0. That is the computation of each
prompt alone, so a batch of prompts of different lengths generates what each would alone.
Zeros after a row's first real token (right padding, holes) are refused: the state would have
read the tokens before them as if the pads were not there, which no unpadded run does.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.generation.configuration_utils import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import ModelConfig
from ..hf_folder import HF_KEYS, MODEL_TYPE, tokenizer_json
from ..model import PlasticLM
from ..state import State
from ..tokenizer import SPECIAL_TOKENS

_FIELDS = [f.name for f in dataclasses.fields(ModelConfig)]
# What transformers passes to a config beside its fields (see PreTrainedConfig.__post_init__).
_ACCEPTED = HF_KEYS | {"name_or_path", "_name_or_path", "_commit_hash", "num_labels", "attn_implementation",
                       "experts_implementation"} | set(GenerationConfig._get_default_generation_params())


class PlasticLMConfig(PreTrainedConfig):
    """A :class:`~plasticlm.config.ModelConfig` as a transformers config: the same fields, at top
    level, checked by ModelConfig itself; an unknown field is refused (not kept as an attribute)."""

    model_type = MODEL_TYPE

    vocab_size: int = ModelConfig.vocab_size
    d_model: int = ModelConfig.d_model
    n_layers: int = ModelConfig.n_layers
    n_heads: int = ModelConfig.n_heads
    head_dim: int = ModelConfig.head_dim
    value_dim: int = ModelConfig.value_dim
    ffn_hidden: int = ModelConfig.ffn_hidden
    memory: str = ModelConfig.memory
    reversible: bool = ModelConfig.reversible
    min_half_life: float = ModelConfig.min_half_life
    max_half_life: float = ModelConfig.max_half_life
    short_conv: int = ModelConfig.short_conv
    qk_norm: bool = ModelConfig.qk_norm
    bias_correction: bool | None = ModelConfig.bias_correction
    gate_rank: int = ModelConfig.gate_rank
    embeddings: str = ModelConfig.embeddings
    mutable_slots: int = ModelConfig.mutable_slots
    mutable_context: int = ModelConfig.mutable_context
    norm_eps: float = ModelConfig.norm_eps
    init_std: float = ModelConfig.init_std
    chunk_size: int = ModelConfig.chunk_size
    mode: str = ModelConfig.mode
    pad_token_id: int | None = 256 + SPECIAL_TOKENS.index("[PAD]")
    bos_token_id: int | None = 256 + SPECIAL_TOKENS.index("[BOS]")
    eos_token_id: int | None = 256 + SPECIAL_TOKENS.index("[EOS]")
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - _ACCEPTED)
        if unknown:
            where = kwargs.get("name_or_path") or kwargs.get("_name_or_path")  # the folder, when loading one
            raise ValueError(f"{str(where) + '/' if where else ''}config.json: unknown field {unknown[0]!r} for a plasticlm "
                             f"model (its fields: {_FIELDS})")
        self.model_config()  # every ModelConfig check, now
        super().__post_init__(**kwargs)

    def model_config(self) -> ModelConfig:
        from .. import archs

        return archs.make_config(MODEL_TYPE, {k: getattr(self, k) for k in _FIELDS}, where="config.json")

    @property
    def num_hidden_layers(self) -> int:  # what transformers' utilities and lm-eval look up
        return self.n_layers

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @classmethod
    def from_model_config(cls, config: ModelConfig, tokenizer=None, **kwargs) -> "PlasticLMConfig":
        if tokenizer is not None:  # the BPE puts its specials first; the config names them by id
            kwargs = {f: tokenizer.token_id(t) for f, t in
                      (("pad_token_id", "[PAD]"), ("bos_token_id", "[BOS]"), ("eos_token_id", "[EOS]"))} | kwargs
        return cls(**config.to_dict(), **kwargs)


class PlasticLMCache:
    """The recurrent State as transformers' generation cache, updated in place as a Cache is.

    ``get_seq_length`` counts the positions of ``input_ids`` consumed, pads included (``generate``
    slices a continued prompt by it); ``reorder_cache`` picks rows for beam search. It never
    crops: a State cannot forget.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, state: State, seen: int = 0):
        self.state, self.seen = state, seen

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.state = self.state.rows(beam_idx.to(self.state.layers[0].device))

    batch_select_indices = reorder_cache

    def __repr__(self) -> str:
        return f"PlasticLMCache(batch={self.state.batch_size}, seen={self.seen})"


class PlasticLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = PlasticLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _is_stateful = True  # no assisted generation: a State cannot be rolled back

    def __init__(self, config: PlasticLMConfig):
        super().__init__(config)
        self.model = PlasticLM(config.model_config())
        self.post_init()

    def _init_weights(self, module):
        """PlasticLM initialises itself (gate biases spread over half-lives, depth-scaled outputs);
        transformers' generic init would undo that, and loaded weights need none."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a PlasticLMCache, made by forward

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return None  # the head is the embedding, applied in PlasticLM.forward

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                       attention_mask=attention_mask, **kwargs)
        if past_key_values is not None:
            # The pads were dealt with when the prompt was read; the mask only grows by ones now.
            inputs["attention_mask"] = None
        return inputs

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: PlasticLMCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None, return_dict: bool | None = None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast | tuple:
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("PlasticLMForCausalLM reads token ids (input_ids); inputs_embeds is not supported")
        if past_key_values is not None and not isinstance(past_key_values, PlasticLMCache):
            raise TypeError(f"past_key_values must be the PlasticLMCache a previous call returned, got "
                            f"{type(past_key_values).__name__}")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        state = None if past_key_values is None else past_key_values.state
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            if past_key_values is not None:
                raise ValueError("attention_mask has zeros in a call that continues a cache: padding is only "
                                 "understood in the first call, on the left of each row")
            logits, state = self._left_padded(input_ids, attention_mask.bool())
            logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
        else:
            h, state = self.model.hidden(input_ids, state)
            h = h[:, -logits_to_keep:] if logits_to_keep else h
            logits = F.linear(h, self.model.embed.weight).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        cache = None
        if use_cache:
            seen = (0 if past_key_values is None else past_key_values.seen) + input_ids.shape[1]
            cache = PlasticLMCache(state) if past_key_values is None else past_key_values
            cache.state, cache.seen = state, seen
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)
        return out if return_dict is not False else out.to_tuple()

    def _left_padded(self, input_ids, mask):
        """Each row's real tokens read alone from a fresh state: (logits (B, T, V), 0 at pads; stacked State).
        The head is applied row by row too: a matrix product over another shape may round otherwise."""
        B, T = input_ids.shape
        first = mask.int().argmax(1)  # each row's first real position
        for r in range(B):
            if not bool(mask[r].any()):
                raise ValueError(f"attention_mask row {r} is all zeros: nothing to read")
            if not bool(mask[r, first[r]:].all()):
                raise ValueError(f"attention_mask row {r} has a zero after its first real token: only left padding "
                                 "is understood (tokenizer.padding_side = 'left'), since a recurrent state reads "
                                 "every token it is given")
        logits = torch.zeros(B, T, self.config.vocab_size, device=input_ids.device)
        states = []
        for r in range(B):
            a = int(first[r])
            h, s = self.model.hidden(input_ids[r:r + 1, a:])
            logits[r, a:] = F.linear(h[0], self.model.embed.weight).float()
            states.append(s)
        return logits, State.cat(states)


def to_hf(model: PlasticLM, tokenizer=None) -> PlasticLMForCausalLM:
    """The HF model around a copy of ``model``'s weights (bit for bit), in eval mode."""
    hf = PlasticLMForCausalLM(PlasticLMConfig.from_model_config(model.config, tokenizer))
    hf.model.load_state_dict(model.state_dict())
    return hf.to(next(model.parameters()).device).eval()


def hf_tokenizer(tokenizer):
    """A plasticlm tokenizer as a PreTrainedTokenizerFast with the same ids for every text.

    One difference, by design: the names of special tokens in a text ("[SEP]") become those
    tokens, as they do in ``plasticlm generate``'s prompts, while plasticlm's own ``encode`` keeps
    them as text. No [BOS] is added (``add_special_tokens`` adds nothing), so ``tok(prompt)`` gives
    the ids ``plasticlm generate`` reads; lm-evaluation-harness prefixes [BOS] itself where it
    conditions on nothing.
    """
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(tokenizer_json(tokenizer)),
                                   bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", sep_token="[SEP]",
                                   padding_side="left", model_max_length=1 << 30)


__all__ = ["PlasticLMCache", "PlasticLMConfig", "PlasticLMForCausalLM", "hf_tokenizer", "to_hf"]
