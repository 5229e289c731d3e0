"""``fedpeft init PATH``: write a commented experiment file to start from.

The file is generated from the config dataclasses, so it lists every field of every
section with the value ``fedpeft simulate`` uses by default and the field's help as a
comment; ``fedpeft simulate --config PATH`` runs it as written (the default job).
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from pathlib import Path
from typing import Any

import typer

from fedpeft.cli.common import console
from fedpeft.cli.options import JOB_DEFAULTS
from fedpeft.config import JobConfig, load_config, toml_value
from fedpeft.errors import ConfigError

HEADER = """\
# fedpeft experiment file, written by `fedpeft init`.
#
#   fedpeft simulate --config {path}               run it (the default job as written)
#   fedpeft simulate --config {path} --rounds 1    flags override the file
#   fedpeft simulate --config {path} --print-config   the resolved config, as TOML
#
# Every field is listed with its default and what it does: change what you need and
# delete the rest. Lines starting with "# name =" are unset (None) by default.
"""


def experiment_toml(cfg: JobConfig, path_hint: str = "exp.toml") -> str:
    """``cfg`` as a commented TOML file: each section's docstring, each field's help."""
    lines = [HEADER.format(path=path_hint)]
    hints = typing.get_type_hints(JobConfig)
    sections = []
    for f in dataclasses.fields(JobConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            sections.append(f)
        else:  # top-level scalars come before the first [section]
            lines += _field_lines(f, getattr(cfg, f.name))
    for f in sections:
        section = getattr(cfg, f.name)
        doc = (type(section).__doc__ or "").strip().splitlines()[0]
        lines.append("")
        lines.append(f"[{f.name}]  # {doc}")
        for sub in dataclasses.fields(section):
            lines += _field_lines(sub, getattr(section, sub.name))
    return "\n".join(lines) + "\n"


def _field_lines(f: dataclasses.Field[Any], value: Any) -> list[str]:
    text = f.metadata.get("help", "")
    out = [f"# {line}" for line in textwrap.wrap(text, 86)] if text else []
    if value is None:
        out.append(f"# {f.name} =")
    else:
        out.append(f"{f.name} = {toml_value(value)}")
    return out


def init(
    path: Path = typer.Argument(..., help="experiment file to write (.toml)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented experiment file (the default job) to edit and run."""
    if path.exists() and not force:
        raise ConfigError("PATH", f"{path} exists; pass --force to overwrite it")
    if path.suffix != ".toml":
        raise ConfigError("PATH", f"{path}: an experiment file ends in .toml")
    stem = path.stem
    cfg = JobConfig().replace({**JOB_DEFAULTS, "output": f"runs/{stem}"})
    text = experiment_toml(cfg, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if load_config(path) != cfg:  # the file must say exactly what it claims
        raise RuntimeError(f"{path} does not load back to the config it was written from")
    console.print(f"wrote {path}; run it with: fedpeft simulate --config {path}")


def register(app: typer.Typer) -> None:
    app.command("init")(init)
