"""Registry of subcommands defined outside cli.py: each entry is register(subparsers, common_parent)."""

REGISTRATIONS: list = []
