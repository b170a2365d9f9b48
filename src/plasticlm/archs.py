"""Every architecture plasticlm builds, trains, loads and evaluates, each named once.

An :class:`Arch` names its config dataclass, its model class and its adapter to the
evaluations' :class:`~plasticlm.lm.LM` interface as ``"module:Name"`` strings, imported on first
use, so an architecture whose optional package is missing costs nothing until it is asked for.
The trainer (``arch:`` in a recipe), the benchmarks, the checkpoint loader and the evaluation CLI
all look architectures up here; :func:`register` adds one (e.g. a test's toy model).

Models built here share one interface: ``model(tokens (B, T), state=None) -> (logits, state)``,
``hidden``, ``init_state(B)`` and ``step`` (the AUNN, trained by ``plasticlm aunn train``, is
reached only through its adapter).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .settings import from_dict

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Arch:
    name: str
    summary: str
    config: str
    """``module:Class`` of the config dataclass."""
    model: str
    """``module:Class`` of the model; built as ``Class(config)``."""
    adapter: str
    """``module:Class`` of the LM adapter; built as ``Class(model, **options)``."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Config fields the name implies (``gla`` is a RecurrentConfig with mixer='gla')."""
    trained_by: str = "plasticlm train"
    """The command that trains it."""
    weights: str = "model.safetensors"
    """The file of a checkpoint folder that holds its weights."""
    segment: bool = False
    """Whether the exact segment trainer (``backprop: segment``) applies to it."""
    blocks: str = "n_layers"
    """The config field that counts the model's repeated blocks, each holding at least one tensor
    (what :func:`meta_state_dict` bounds before building anything; a config without it is not bounded)."""


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    ARCHS[arch.name] = arch
    return arch


register(Arch("plasticlm", "the gated-average recurrent LM of DESIGN 1", "plasticlm.config:ModelConfig",
              "plasticlm.model:PlasticLM", "plasticlm.lm:PlasticLMAsLM", segment=True))
register(Arch("transformer", "causal SDPA Transformer (RoPE, RMSNorm, SwiGLU); its state is the KV cache",
              "plasticlm.baselines.transformer:TransformerConfig", "plasticlm.baselines.transformer:Transformer",
              "plasticlm.baselines.transformer:TransformerAsLM"))
register(Arch("gla", "fla's GatedLinearAttention mixer in pre-norm SwiGLU blocks",
              "plasticlm.baselines.fla_models:RecurrentConfig", "plasticlm.baselines.fla_models:RecurrentLM",
              "plasticlm.baselines.fla_models:RecurrentAsLM", fixed={"mixer": "gla"}))
register(Arch("mamba2", "fla's Mamba2 mixer in pre-norm SwiGLU blocks",
              "plasticlm.baselines.fla_models:RecurrentConfig", "plasticlm.baselines.fla_models:RecurrentLM",
              "plasticlm.baselines.fla_models:RecurrentAsLM", fixed={"mixer": "mamba2"}))
register(Arch("aunn", "Absolute Unit NN: index -> token, reads by gradient steps", "plasticlm.aunn.config:AUNNConfig",
              "plasticlm.aunn.model:AUNN", "plasticlm.aunn.online:AUNNAsLM", trained_by="plasticlm aunn train",
              blocks="depth", weights="aunn.safetensors"))


def get(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def _import(ref: str, arch: str):
    module, name = ref.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"arch {arch!r} needs {ref}, which cannot be imported here: {e}") from None


def config_class(name: str):
    return _import(get(name).config, name)


def model_class(name: str):
    return _import(get(name).model, name)


def make_config(name: str, data: Any, where: str = "model"):
    """The arch's config from a mapping (types checked, unknown keys named) or a config as given.

    The fields the name implies are filled in, and a contrary value is refused.
    """
    arch, cls = get(name), config_class(name)
    if isinstance(data, dict):
        for key, want in arch.fixed.items():
            if key in data and data[key] != want:
                raise ValueError(f"{where}.{key}={data[key]!r} contradicts arch {name!r} (which means {key}={want!r})")
        data = {**data, **arch.fixed}
    cfg = from_dict(cls, data, where)
    for key, want in arch.fixed.items():
        if getattr(cfg, key) != want:
            raise ValueError(f"{where}.{key}={getattr(cfg, key)!r} contradicts arch {name!r} (which means "
                             f"{key}={want!r})")
    return cfg


def build(name: str, config):
    """A fresh model of arch ``name`` from its config (a dataclass or a mapping)."""
    return model_class(name)(make_config(name, config))


def meta_state_dict(name: str, config, max_blocks: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict of arch ``name``'s model for ``config``, built on the meta device: every
    tensor's name, shape and dtype, with no memory allocated and no initialisation computed.

    Building costs time per block, so ``max_blocks`` bounds the config's count of blocks
    (:attr:`Arch.blocks`) first: a weights file of n tensors holds at most n blocks, and a forged
    ``n_layers=10**9`` is refused at once instead of building modules for minutes. A width too
    large to describe (its storage size overflows) is refused too. ValueError naming the field.
    """
    import torch

    arch, cfg = get(name), make_config(name, config)
    blocks = getattr(cfg, arch.blocks, 0)
    if max_blocks is not None and blocks > max_blocks:
        raise ValueError(f"{arch.blocks}={blocks:,} blocks, but the weights hold {max_blocks:,} tensors in all")
    try:
        with torch.device("meta"):
            return dict(model_class(name)(cfg).state_dict())
    except (RuntimeError, OverflowError) as e:
        raise ValueError(f"the config describes a model that cannot be built: {e}") from None


def sized_like(name: str, plastic_config, **overrides):
    """The config of arch ``name`` with the parameter count of PlasticLM(plastic_config): same vocabulary,
    width, depth and heads, feed-forward width matched (plasticlm itself: the config, with overrides)."""
    if name == "plasticlm":
        import dataclasses

        return dataclasses.replace(plastic_config, **overrides)
    cls = config_class(name)
    if not hasattr(cls, "sized_like"):
        raise ValueError(f"arch {name!r} cannot be sized like a PlasticLM")
    return cls.sized_like(plastic_config, **get(name).fixed, **overrides)


def arch_of(model) -> str:
    """The registered name of a model instance."""
    for name, arch in ARCHS.items():
        module, cls_name = arch.model.split(":")
        if type(model).__name__ == cls_name and type(model).__module__ == module and all(
                getattr(model.config, k, None) == v for k, v in arch.fixed.items()):
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture; known: {', '.join(sorted(ARCHS))}")


def as_lm(model, **options):
    """The model behind the evaluations' LM interface (options: e.g. ``piece`` for the recurrent ones)."""
    name = arch_of(model)
    return _import(get(name).adapter, name)(model, **options)
