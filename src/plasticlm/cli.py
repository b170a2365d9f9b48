"""``plasticlm`` command line. Each subcommand lives in a module with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define a subcommand, in the order `plasticlm --help` lists them.
COMMANDS = [
    "plasticlm.commands.build_corpus",
    "plasticlm.commands.prepare",
    "plasticlm.commands.train",
    "plasticlm.commands.plot",
    "plasticlm.commands.tune",
    "plasticlm.commands.read",
    "plasticlm.commands.generate",
    "plasticlm.commands.eval",
    "plasticlm.commands.export_hf",
    "plasticlm.commands.experiment",
    "plasticlm.commands.aunn",
    "plasticlm.commands.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plasticlm",
        description="A recurrent language model that learns by reading. `plasticlm COMMAND --help` explains each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (argparse cannot interleave a
    # variadic positional with options), so they are collected from what it leaves over.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if "=" not in x or x.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .files import DataError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, KeyError, OSError) as e:
        # Bad input: say what and where, without a traceback (PLASTICLM_DEBUG=1 shows it). Bad
        # data (a corrupt, foreign or invalid file; a file that cannot be read or written) exits 1,
        # bad usage (an option, a setting, a path that is not there) 2.
        import os

        if os.environ.get("PLASTICLM_DEBUG"):
            raise
        print(f"plasticlm {args.command}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, DataError) or (isinstance(e, OSError) and not isinstance(e, FileNotFoundError)) else 2
    except KeyboardInterrupt:
        print(f"plasticlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
