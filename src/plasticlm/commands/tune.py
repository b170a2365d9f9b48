"""plasticlm tune RECIPE [key=value ...] --param KEY=KIND:... --trials N"""
from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "tune", help="hyperparameter search (Optuna) over a recipe",
        description="Search hyperparameters of RECIPE with Optuna (TPE sampler, median pruning on the "
                    "validation loss reported every log.eval_every steps). The study is stored in "
                    "OUT/study.db (SQLite): run the same command again to continue it. Each trial trains "
                    "in OUT/trial-HASH. Example: `plasticlm tune tiny steps=40 log.eval_every=10 "
                    "--param optim.lr=log:1e-4:1e-2 --param model.n_layers=int:2:6 --trials 20`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("recipe", help="recipe name or path to a .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="fixed config overrides for every trial")
    p.add_argument("--param", action="append", default=[], metavar="KEY=KIND:ARGS",
                   help="a searched value: KEY=log:LO:HI, KEY=float:LO:HI, KEY=int:LO:HI or KEY=choice:A,B,C "
                        "(repeat for several)")
    p.add_argument("--trials", type=int, default=20, help="finished (complete or pruned) trials the study should hold")
    p.add_argument("--out", default="runs/tune", help="study directory (study.db and one run dir per trial)")
    p.add_argument("--study", default="plasticlm", help="study name inside study.db")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..trainer.tune import Param, run_study

    params = [Param.parse(s) for s in args.param]
    study = run_study(args.recipe, args.overrides, params, args.trials, args.out, args.study, args.seed)
    states = [t.state.name for t in study.trials]
    print(f"study {args.study!r} in {args.out}/study.db: {len(states)} trials "
          f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, {states.count('FAIL')} failed)")
    try:
        best = study.best_trial
        print(f"best: valid loss {best.value:.4f} with {best.params} ({best.user_attrs.get('out_dir')})")
    except ValueError:
        print("no trial has completed yet")
    return 0
