"""Subcommands defined outside the CLI package, found through the entry-point group `stride_core.commands`.

Each entry point names `register(subparsers, common_parent)`; pyproject.toml declares the benchmarks'
(`stride_core.bench.commands:register`). The CLI reads the group here, so a provider never imports the CLI and
the CLI never imports a provider by name.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

GROUP = "stride_core.commands"


def command_providers() -> list:
    """The installed entry points of GROUP, by name (an install without them has no extra commands)."""
    return sorted(entry_points(group=GROUP), key=lambda ep: ep.name)


def register_commands(subparsers, common_parent) -> list[str]:
    """Add every provider's subcommands; one that fails to load is logged and skipped. Returns the names added."""
    added = []
    for ep in command_providers():
        try:
            register = ep.load()
        except Exception as exc:  # an optional provider with a broken install must not take the CLI down
            logger.warning("commands %r (%s) could not be loaded: %s", ep.name, ep.value, exc)
            continue
        register(subparsers, common_parent)
        added.append(ep.name)
    return added
