"""Hyperparameter search with Optuna: SQLite storage, pruning on validation loss, resumable.

Each trial is an ordinary training run of the recipe with the sampled values as overrides. Its
out_dir is named by a hash of those values, so a trial cut short (a killed study) that Optuna
retries with the same values resumes its run from its checkpoints.
The study lives in ``out_dir/study.db``; invoking the same command again continues it until it
holds ``n_trials`` finished trials.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Param:
    key: str
    kind: str  # 'float', 'log', 'int', 'choice'
    args: tuple

    @classmethod
    def parse(cls, spec: str) -> "Param":
        """``key=float:LO:HI``, ``key=log:LO:HI``, ``key=int:LO:HI`` or ``key=choice:A,B,C``."""
        import yaml

        if "=" not in spec or ":" not in spec.split("=", 1)[1]:
            raise ValueError(f"--param {spec!r} must look like key=log:1e-4:1e-2, key=int:2:8 or key=choice:a,b")
        key, rest = spec.split("=", 1)
        kind, _, body = rest.partition(":")
        if kind == "choice":
            values = tuple(yaml.safe_load(v) for v in body.split(","))
            if not values or any(isinstance(v, (dict, list)) for v in values):
                raise ValueError(f"--param {spec!r}: choice needs comma-separated scalars")
            return cls(key, kind, values)
        if kind not in ("float", "log", "int"):
            raise ValueError(f"--param {spec!r}: kind must be float, log, int or choice, got {kind!r}")
        try:
            lo, hi = (int(x) if kind == "int" else float(x) for x in body.split(":"))
        except ValueError:
            raise ValueError(f"--param {spec!r}: expected {kind}:LOW:HIGH with numbers") from None
        if not lo < hi or (kind == "log" and lo <= 0):
            raise ValueError(f"--param {spec!r}: need LOW < HIGH (and LOW > 0 for log)")
        return cls(key, kind, (lo, hi))

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        if self.kind == "int":
            return trial.suggest_int(self.key, *self.args)
        return trial.suggest_float(self.key, *self.args, log=self.kind == "log")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("plasticlm tune needs optuna: pip install 'plasticlm[train]'") from None
    return optuna


def trial_dir(out_dir: Path, values: dict[str, Any]) -> Path:
    h = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    return out_dir / f"trial-{h}"


def open_study(out_dir: str | Path, name: str = "plasticlm", seed: int = 0):
    """The study stored in ``out_dir/study.db`` (created when absent)."""
    optuna = _optuna()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A trial whose process died stops its heartbeat; after the grace period the next invocation
    # marks it failed and the callback enqueues its values again (its run then resumes).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}
        storage = optuna.storages.RDBStorage(f"sqlite:///{out.resolve() / 'study.db'}", heartbeat_interval=30,
                                             grace_period=90, **retry)
    return optuna.create_study(
        study_name=name, storage=storage, load_if_exists=True,
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))


def run_study(recipe: str, overrides: list[str], params: list[Param], n_trials: int, out_dir: str | Path,
              name: str = "plasticlm", seed: int = 0, progress: bool = False):
    """Run trials until the study holds ``n_trials`` complete or pruned ones; returns the study."""
    from .config import load_config
    from .loop import train

    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not params:
        raise ValueError("give at least one --param to search over")
    load_config(recipe, overrides)  # a bad recipe or override fails before any trial
    out = Path(out_dir)
    study = open_study(out, name, seed)
    State = optuna.trial.TrialState

    def objective(trial) -> float:
        values = {p.key: p.suggest(trial) for p in params}
        run_dir = trial_dir(out, values)
        trial.set_user_attr("out_dir", str(run_dir))
        cfg = load_config(recipe, [*overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items()),
                                   f"out_dir={run_dir}"])
        if not cfg.log.eval_every:
            raise ValueError("tuning prunes on validation loss: set log.eval_every (e.g. log.eval_every=50)")

        def on_eval(step: int, valid: float) -> None:
            if step < cfg.steps:
                trial.report(valid, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"valid loss {valid:.4f} at step {step}")

        valid = train(cfg, progress=progress, on_eval=on_eval)["valid_loss"]
        return valid if math.isfinite(valid) else float("inf")

    finished = len(study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED)))
    if n_trials > finished:
        study.optimize(objective, n_trials=n_trials - finished)
    return study
