"""Run configuration: typed dataclasses, shipped YAML recipes, ``key=value`` overrides.

A recipe is a YAML file (read with ``yaml.safe_load``) whose nesting mirrors
:class:`TrainConfig`; any key the dataclasses do not declare is rejected by name, and every
value is checked against its field's type. A recipe with a top-level ``stages:`` list is a
*stage list*: each stage is another recipe run after the previous one, starting from its
final weights (:func:`load_plan`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import archs
from ..config import ModelConfig
from ..settings import apply_overrides, from_dict as _from_dict, parse_override

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass
class DataConfig:
    kind: str = "bytes"
    """Stream kind, looked up in ``plasticlm.trainer.stream_kinds`` ('bytes': whole sequences of UTF-8
    bytes; 'traditional', 'linked', 'shuffled': the pretraining tasks; tasks registered there)."""
    source: str = "builtin"
    """'builtin' (the embedded standard-library docstring corpus), a UTF-8 text file, or for the
    pretraining tasks a directory written by ``plasticlm prepare``."""
    seq_len: int = 256
    """T: the longest sequence. Each row of a batch is one whole sequence of at most T tokens
    (a stream cuts a longer one there, and counts it)."""
    min_len: int = 0
    """'bytes' stream: each batch's sequences are all of one length, drawn uniformly in
    [min_len, seq_len]; 0 means seq_len."""
    batch_size: int = 16
    """B: sequences per batch, over all ranks (each rank reads batch_size / world_size)."""
    valid_fraction: float = 0.02
    """'bytes' stream: share of the text, taken from its end, held out for validation."""
    options: dict = field(default_factory=dict)
    """Extra keyword arguments for the stream kind (its own config fields)."""


@dataclass
class OptimConfig:
    lr: float = 3e-3
    """Peak learning rate of AdamW (fused on CUDA)."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (norms, biases and embeddings are not decayed)."""
    beta1: float = 0.9
    beta2: float = 0.95
    schedule: str = "cosine"
    """'cosine': linear warmup, then cosine decay to min_lr_ratio * lr at the last step.
    'wsd': warmup, stable at lr, then linear decay over the last decay_fraction of the steps."""
    warmup_steps: int = 10
    decay_fraction: float = 0.2
    """'wsd' only: share of the steps spent decaying."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""


@dataclass
class LossConfig:
    ramp_tokens: int = 0
    """Loss weight rises from 0 to 1 over the first ramp_tokens of each sequence (0: no ramp).
    Streams that ramp their own weights (the shuffled task) need none here."""
    ramp: str = "linear"
    """Ramp shape: 'linear' or 'cosine'."""
    proxy_weight: float = 0.0
    """Weight of the gradient-length proxy (DESIGN 3); 0 only logs the retention mass."""
    proxy_horizon: int = 0
    """Training length the lag bands are relative to, in tokens; 0 means data.seq_len."""
    proxy_bands: list = field(default_factory=lambda: [0.01, 0.1, 1.0])
    """Upper edges of the lag bands as fractions of the horizon (short, moderate, long)."""
    proxy_target: list = field(default_factory=lambda: [0.4, 0.3, 0.3])
    """Target share of the retention mass in each band (sums to 1)."""
    proxy_probe: int = 64
    """Tokens per row of the probe the gates are computed on (the start of each batch)."""
    proxy_every: int = 10
    """Log the retention mass every this many steps (every step when proxy_weight > 0)."""
    proxy_weighting: str = "gates"
    """'gates': each channel counts by its gates alone, (1 - a) a^k (DESIGN 3); 'read': also by how
    strongly the readout uses it, mean |q| x mean |k| on the probe, q's bias correction taken at
    the horizon (``losses.read_weight``; RQ4 found this closer to the measured gradient into the
    memory's writes)."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save every this many steps (0: only at the end and on SIGTERM)."""
    keep: int = 3
    """Keep the last k checkpoints."""
    resume: bool = True
    """Continue from the newest checkpoint in out_dir/checkpoints when there is one (false: refuse
    to start in an out_dir that holds checkpoints)."""
    init_from: str = ""
    """Start from the weights of this checkpoint (a run dir, one of its checkpoints, or a model
    dir); optimizer, schedule and data start afresh. Used by stages."""
    allow_changed: list = field(default_factory=list)
    """Settings that may differ from the checkpoint's when resuming, e.g. [optim.lr, steps] (a
    section name, such as optim, covers its fields). Resuming with any other change to what the
    run computes (model, optimizer, data, loss, seed, steps, ...; not out_dir, device, log or
    checkpoint settings) is refused, naming each changed field, so that a resumed run continues
    the run that was started unless the change is deliberate."""
    export_dtype: str = "float32"
    """dtype of the run's final top-level weights (out_dir/model.safetensors): 'float32', or
    'bfloat16' for half the bytes. Training checkpoints always keep float32 (resume is exact)."""
    export_shard_mib: float = 0
    """Split the final top-level weights into files of at most this many MiB (0: one file), for a
    model that must travel in small files (e.g. back from a lent GPU)."""


@dataclass
class LogConfig:
    every: int = 1
    """Write a metrics line every this many steps."""
    tensorboard: str = "auto"
    """'auto' (write event files when tensorboard is installed), 'required', 'disabled'."""
    eval_every: int = 0
    """Validation loss every this many steps (0: only at the end)."""


@dataclass
class DistConfig:
    backend: str = "auto"
    """'auto' (nccl on CUDA, gloo on CPU), 'gloo' or 'nccl'; used when launched by torchrun."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state with FSDP2 instead of replicating them."""


@dataclass
class TrainConfig:
    model: Any = field(default_factory=ModelConfig)
    """The architecture's config (ModelConfig for 'plasticlm')."""
    arch: str = "plasticlm"
    """An architecture registered in plasticlm.archs: 'plasticlm', 'transformer', 'gla', 'mamba2'."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    steps: int = 60
    """Optimizer steps."""
    segment_len: int = 128
    """L: tokens per row recomputed with a graph at a time (exact segment-wise BPTT)."""
    backprop: str = "segment"
    """'segment' (exact constant-memory segment BPTT, PlasticLM) or 'full' (plain autograd over
    the whole batch; any model, e.g. the Transformer baseline)."""
    bptt: str = "whole"
    """'whole': one optimizer step per batch of whole sequences, backpropagated through exactly.
    'window': truncated BPTT, as recipes did before: each batch is cut into windows of ``window``
    tokens, one optimizer step per window, the recurrent state carried detached from one window
    to the next (gradients stop at window edges)."""
    window: int = 256
    """bptt='window': tokens per row per optimizer step."""
    storage: str = "auto"
    """Where segment BPTT keeps boundary states: 'device', 'host' (CPU memory), or 'auto' (the
    device, unless they would take more than a quarter of its free memory)."""
    reconstruct: str = "auto"
    """Reversible models under the segment trainer: 'rebuild' recomputes each block's inputs from
    its outputs in the backward pass (activation memory of one block), 'store' keeps the segment's
    activations (one forward less per segment), 'auto' stores them when one segment's take at
    most a quarter of the free memory (measured once, on a probe segment)."""
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA, fp32 on CPU), 'fp32' or 'bf16'."""
    compile: bool = False
    """torch.compile the blocks' memory and feed-forward modules."""
    max_bad_steps: int = 5
    """Stop with an error after this many non-finite steps in a row."""
    seed: int = 0
    out_dir: str = "runs/tiny"
    """Where checkpoints, metrics and the final model go."""
    device: str = "auto"
    """'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'."""
    eval_tokens: int = 32768
    """Validation tokens scored at each evaluation."""

    def __post_init__(self) -> None:
        arch = archs.get(self.arch)
        if arch.trained_by != "plasticlm train":
            raise ValueError(f"arch {self.arch!r} is trained by `{arch.trained_by}`, not by this trainer")
        if isinstance(self.model, dict):
            self.model = archs.make_config(self.arch, self.model)
        for name in ("steps", "segment_len", "eval_tokens", "max_bad_steps", "window"):
            _positive(f"TrainConfig.{name}", getattr(self, name))
        for name in ("seq_len", "batch_size"):
            _positive(f"data.{name}", getattr(self.data, name))
        _choice("backprop", self.backprop, ("segment", "full"))
        _choice("bptt", self.bptt, ("whole", "window"))
        _choice("storage", self.storage, ("auto", "device", "host"))
        _choice("reconstruct", self.reconstruct, ("auto", "rebuild", "store"))
        _choice("precision", self.precision, ("auto", "fp32", "bf16"))
        _choice("optim.schedule", self.optim.schedule, ("cosine", "wsd"))
        _choice("loss.ramp", self.loss.ramp, ("linear", "cosine"))
        _choice("log.tensorboard", self.log.tensorboard, ("auto", "required", "disabled"))
        _choice("dist.backend", self.dist.backend, ("auto", "gloo", "nccl"))
        if not 0 < self.data.valid_fraction < 1:
            raise ValueError(f"data.valid_fraction must lie in (0, 1), got {self.data.valid_fraction}")
        if not 0 <= self.data.min_len <= self.data.seq_len:
            raise ValueError(f"data.min_len must lie in [0, data.seq_len={self.data.seq_len}], got {self.data.min_len} "
                             "(lower it with the sequence length; 0 means seq_len)")
        if not 0 <= self.optim.warmup_steps or not 0 < self.optim.decay_fraction <= 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.decay_fraction in (0, 1]")
        known = {k for key in _flat(to_dict(self)) for k in _prefixes(key)}
        for name in self.checkpoint.allow_changed:
            if name not in known:
                raise ValueError(f"checkpoint.allow_changed: {name!r} is not a setting (e.g. optim.lr, steps, or "
                                 "a section such as optim)")
        _choice("checkpoint.export_dtype", self.checkpoint.export_dtype, ("float32", "bfloat16"))
        if self.checkpoint.export_shard_mib < 0:
            raise ValueError(f"checkpoint.export_shard_mib must be >= 0, got {self.checkpoint.export_shard_mib}")
        if self.checkpoint.keep < 1 or self.checkpoint.every < 0:
            raise ValueError(f"checkpoint.keep must be >= 1 and checkpoint.every >= 0, got {self.checkpoint.keep}, "
                             f"{self.checkpoint.every}")
        lc = self.loss
        _choice("loss.proxy_weighting", lc.proxy_weighting, ("gates", "read"))
        if len(lc.proxy_bands) != len(lc.proxy_target) or not lc.proxy_bands:
            raise ValueError(f"loss.proxy_bands ({lc.proxy_bands}) and loss.proxy_target ({lc.proxy_target}) "
                             "must be non-empty lists of equal length")
        if sorted(lc.proxy_bands) != list(lc.proxy_bands) or lc.proxy_bands[0] <= 0:
            raise ValueError(f"loss.proxy_bands must be increasing fractions > 0, got {lc.proxy_bands}")
        if abs(sum(lc.proxy_target) - 1) > 1e-6 or min(lc.proxy_target) < 0:
            raise ValueError(f"loss.proxy_target must be shares >= 0 summing to 1, got {lc.proxy_target}")
        if lc.proxy_weight < 0 or lc.ramp_tokens < 0 or lc.proxy_probe < 1 or lc.proxy_every < 1:
            raise ValueError("loss.proxy_weight and loss.ramp_tokens must be >= 0, loss.proxy_probe and "
                             "loss.proxy_every >= 1")
        if self.backprop == "segment" and not arch.segment:
            raise ValueError(f"backprop='segment' needs the plasticlm architecture; use backprop=full for "
                             f"arch={self.arch!r}")


RESUME_FREE = ("out_dir", "device", "log", "checkpoint", "compile", "storage", "reconstruct", "eval_tokens",
               "dist.backend")
"""Settings a resumed run may change without a word: where it runs, how it reports, saves and
checks itself, none of what it computes."""


def changed_on_resume(saved: Any, cfg: TrainConfig, allowed: bool = True) -> list[tuple[str, Any, Any]]:
    """(setting, checkpoint's value, this run's value) for each setting of ``cfg`` that differs from
    ``saved`` (a checkpoint's ``to_dict(config)``), except :data:`RESUME_FREE` and, when ``allowed``,
    what ``cfg.checkpoint.allow_changed`` names."""
    then, now = _flat(saved if isinstance(saved, dict) else {}), _flat(to_dict(cfg))
    free = RESUME_FREE + (tuple(cfg.checkpoint.allow_changed) if allowed else ())
    missing = "(not set)"
    # A field added since the checkpoint was written, at its default, is what that run ran with.
    defaults = _flat(to_dict(dataclasses.replace(cfg, model=type(cfg.model)())))
    for k, v in now.items():
        if k not in then and k.startswith("model.") and defaults.get(k, missing) == v:
            then[k] = v
    return [(k, then.get(k, missing), now.get(k, missing)) for k in sorted(set(then) | set(now))
            if then.get(k, missing) != now.get(k, missing) and _prefixes(k).isdisjoint(free)]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as {dotted name: value}; an empty mapping is a value of its own."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _prefixes(key: str) -> set[str]:
    """'a.b.c' -> {'a', 'a.b', 'a.b.c'}."""
    parts = key.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _positive(name, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def from_dict(cls, data: dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` (a TrainConfig or a section of one) from nested mappings."""
    nested = {"model": lambda value, d, name: archs.make_config(d.get("arch", "plasticlm"), value, name)}
    return _from_dict(cls, data, where, nested if cls is TrainConfig else None)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"recipe file not found: {p}")
        return p
    p = RECIPES / f"{recipe}.yaml"
    if not p.exists():
        raise ValueError(f"unknown recipe {recipe!r}; shipped recipes: {shipped_recipes()} (or pass a .yaml path)")
    return p


def shipped_recipes() -> list[str]:
    return sorted(x.stem for x in RECIPES.glob("*.yaml"))


def read_recipe(recipe: str) -> tuple[Path, dict[str, Any]]:
    path = recipe_path(recipe)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of config keys, got {type(data).__name__}")
    return path, data


def load_config(recipe: str = "tiny", overrides: list[str] = ()) -> TrainConfig:
    """Read a single-stage recipe and apply ``section.key=value`` overrides."""
    path, data = read_recipe(recipe)
    if "stages" in data:
        raise ValueError(f"{path} is a stage list; read it with load_plan")
    try:
        return from_dict(TrainConfig, apply_overrides(data, overrides))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_plan(recipe: str = "tiny", overrides: list[str] = ()) -> list[TrainConfig]:
    """The stages a recipe asks for: one config, or one per entry of a stage list.

    A stage list is ``stages: [{recipe: NAME, overrides: {key: value}}, ...]`` plus an optional
    ``out_dir``. Stage i writes to ``out_dir/i-NAME`` and, unless its entry's overrides set
    ``checkpoint.init_from``, starts from stage i-1's final weights. The command-line
    overrides apply to every stage.
    """
    path, data = read_recipe(recipe)
    if "stages" not in data:
        return [load_config(recipe, overrides)]
    unknown = sorted(set(data) - {"stages", "out_dir"})
    if unknown:
        raise ValueError(f"{path}: a stage list holds only 'stages' and 'out_dir', found {unknown}")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path}: 'stages' must be a non-empty list of {{recipe: NAME, overrides: {{...}}}}")
    pairs = [parse_override(o) for o in overrides]
    root = Path(data.get("out_dir", f"runs/{path.stem}"))
    for key, value in pairs:
        if key.strip() == "out_dir":  # for a stage list, out_dir is the root of the stages' dirs
            root = Path(str(value))
    pairs = [(k, v) for k, v in pairs if k.strip() != "out_dir"]
    configs, prev = [], None
    for i, st in enumerate(stages):
        if isinstance(st, str):
            st = {"recipe": st}
        if not isinstance(st, dict) or "recipe" not in st or set(st) - {"recipe", "overrides"}:
            raise ValueError(f"{path}: stage {i} must be {{recipe: NAME, overrides: {{...}}}}, got {st!r}")
        sub_path, sub = read_recipe(st["recipe"])
        if "stages" in sub:
            raise ValueError(f"{path}: stage {i} names another stage list ({sub_path})")
        sub = apply_overrides(sub, st.get("overrides") or {})
        sub = apply_overrides(sub, {"out_dir": str(root / f"{i + 1}-{Path(st['recipe']).stem}")})
        own = st.get("overrides") or {}
        if prev is not None and "checkpoint.init_from" not in own and "init_from" not in own.get("checkpoint", {}):
            sub = apply_overrides(sub, {"checkpoint.init_from": prev})
        sub = apply_overrides(sub, dict(pairs))
        try:
            cfg = from_dict(TrainConfig, sub)
        except ValueError as e:
            raise ValueError(f"{path}: stage {i} ({sub_path}): {e}") from None
        configs.append(cfg)
        prev = cfg.out_dir
    return configs
