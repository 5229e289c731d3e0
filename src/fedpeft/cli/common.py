"""Helpers shared by the subcommands: config resolution from TOML + flags, consoles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from fedpeft.config import JobConfig, load_config

console = Console(stderr=False)


def resolve_config(config_path: Path | None, overrides: dict[str, Any]) -> JobConfig:
    """Defaults ← TOML file ← command-line flags (flags left unset don't override)."""
    base = load_config(config_path) if config_path is not None else JobConfig()
    return base.replace(overrides)
