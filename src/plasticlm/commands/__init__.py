"""Subcommands of the `plasticlm` CLI, one module each."""
