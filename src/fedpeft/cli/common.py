"""Helpers shared by the subcommands: config resolution, the options every job command
has besides its config fields (:mod:`fedpeft.cli.options` generates those), consoles."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fedpeft.cli.options import EXPERIMENT_PANEL, OUTPUT_PANEL
from fedpeft.config import JobConfig, dump_toml, load_config

console = Console(stderr=False)


def resolve_config(
    config_path: Path | None,
    overrides: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> JobConfig:
    """Defaults (the dataclasses', then the command's) or the TOML file ← command-line
    flags: a file replaces the command's defaults, it does not add to them."""
    if config_path is not None:
        base = load_config(config_path)
    else:
        base = JobConfig().replace(dict(defaults or {}))
    return base.replace(dict(overrides))


def print_config_and_exit(cfg: JobConfig) -> None:
    """``--print-config``: the resolved config as TOML that ``--config`` loads, then exit 0.

    Written with ``typer.echo``, not rich: ``[model]`` would be read as rich markup.
    """
    typer.echo(dump_toml(cfg), nl=False)
    raise typer.Exit(0)


def config_file_option() -> Any:
    """``--config``: the experiment file a job command starts from."""
    return typer.Option(
        None, "--config", help="TOML experiment file", rich_help_panel=EXPERIMENT_PANEL
    )


def print_config_option() -> Any:
    """``--print-config``: see :func:`print_config_and_exit`."""
    return typer.Option(
        False,
        "--print-config",
        help="print the resolved config as TOML (for --config) and exit",
        rich_help_panel=EXPERIMENT_PANEL,
    )


def tensorboard_option() -> Any:
    """``--tensorboard``: metrics as TensorBoard scalars too."""
    return typer.Option(
        None,
        "--tensorboard",
        help="also write TensorBoard scalars to this folder",
        rich_help_panel=OUTPUT_PANEL,
    )


def force_option() -> Any:
    """``--force``: replace the run an ``--output`` folder already holds."""
    return typer.Option(
        False,
        "--force",
        help="replace the run the --output folder holds (its run files are removed)",
        rich_help_panel=OUTPUT_PANEL,
    )


def log_to_stderr() -> None:
    """Progress lines (rounds, clients, refused calls) at INFO on stderr for a service
    (journald adds the time); ``--debug`` keeps DEBUG."""
    fedpeft_log = logging.getLogger("fedpeft")
    level = logging.getLevelName(os.environ.get("FEDPEFT_LOG_LEVEL", "INFO").upper())
    if isinstance(level, int) and fedpeft_log.getEffectiveLevel() > level:
        fedpeft_log.setLevel(level)
