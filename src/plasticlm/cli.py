"""``plasticlm`` command line. Each subcommand lives in a module with ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define a subcommand, in the order `plasticlm --help` lists them.
COMMANDS = [
    "plasticlm.commands.train",
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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError, KeyError) as e:
        # Bad input: say what and where, without a traceback (PLASTICLM_DEBUG=1 shows it).
        import os

        if os.environ.get("PLASTICLM_DEBUG"):
            raise
        print(f"plasticlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plasticlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
