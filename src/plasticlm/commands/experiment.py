"""plasticlm experiment NAME [--quick] [--device D] [--out DIR] [--jobs N] [--adopt DIR] [field=value ...]"""
from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "experiment", help="run an evidence experiment (mqar, bptt, reading): fresh models, results and plots",
        description="Run one of the experiments of EXPERIMENTS.md: train fresh models through plasticlm's trainer "
                    "and write OUT/results.json (config, provenance, every run's curves), OUT/results.md (tables) "
                    "and PNG plots. The JSON grows run by run: after a crash the same command resumes. "
                    "`--quick` is the seconds-long form the tests run (the code path, not the figures). Settings "
                    "are field=value, dotted for nested fields, e.g. `plasticlm experiment mqar "
                    "protocol.max_steps=500 d_models=[64]`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("overrides", nargs="*", metavar="field=value", help="config settings")
    p.add_argument("--quick", action="store_true", help="the tiny form: seconds on CPU")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    p.add_argument("--out", default=None, help="results directory (default: experiments/results/NAME[-quick])")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own process (one torch thread each on CPU)")
    p.add_argument("--list", action="store_true", help="list the experiments, their questions and run counts")
    p.add_argument("--adopt", action="append", default=[], metavar="DIR",
                   help="take over the finished runs of another results folder of this experiment, made with "
                        "settings that differ only in which runs are planned (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..device import pick_device
    from ..experiments import EXPERIMENTS, make_config, run_experiment
    from ..experiments.runner import experiment_module

    if args.list or not args.name:
        for name in EXPERIMENTS:
            mod = experiment_module(name)
            print(f"{name}: {mod.QUESTION} ({len(mod.plan(mod.Config()))} runs; "
                  f"--quick: {len(mod.plan(mod.Config.quick()))})")
        return 0 if args.list else 2
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    device = str(pick_device(args.device, select=False))
    make_config(args.name, args.quick, args.overrides)  # a bad setting fails before anything runs
    out = run_experiment(args.name, device=device, quick=args.quick, out=args.out, jobs=args.jobs,
                         overrides=args.overrides, progress=not args.no_progress, adopt=args.adopt,
                         command=["plasticlm", *sys.argv[1:]] if sys.argv[1:2] == ["experiment"] else None)
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0
