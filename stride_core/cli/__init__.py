"""Interfaces: the `stride` command line (commands, with the audits' and the dashboard's subcommands in audit
and app), the argument builders it shares with the multi-process entry point (options, torchrun), and the
registry through which commands defined elsewhere (the benchmarks) are added without importing the CLI.
"""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
