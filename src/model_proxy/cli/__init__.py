"""The ``model-proxy`` command: its subcommands, their flags and start-up."""

from model_proxy.cli.commands import main

__all__ = ["main"]
