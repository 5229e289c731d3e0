"""Helpers shared by the subcommands: config resolution, help panels, consoles.

The config dataclasses (:mod:`fedpeft.config`) are the one source that documents every
field: :func:`config_options` turns them into the options of a command. It

* finds which config key each option sets — from the ``{"section.field": param}`` dict
  literal in the command's body that maps flags to config keys (the same dict the command
  passes to :meth:`JobConfig.replace`), or from ``keys=``;
* gives every such option the field's ``metadata["help"]``, the default the command
  really uses (the dataclass default, or the command's own defaults such as
  ``SIMULATE_DEFAULTS``) and a help panel named after its config section;
* adds an option ``--<section>-<field>`` for every field of the command's sections that no
  option sets yet, so ``--help`` lists each field exactly once; their values reach the
  command through :func:`extra_overrides`.

Options added by hand later get their panel and default automatically as long as their
config key is in that dict; ``tests/unit/test_cli_help.py`` fails for any option without
help text or panel and for any field listed twice or not at all.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.models import OptionInfo

from fedpeft.config import JobConfig, load_config

console = Console(stderr=False)

F = TypeVar("F", bound=Callable[..., Any])

#: Help panel of each config section (``--help`` groups options by these).
SECTION_PANELS: dict[str, str] = {
    "data": "Data",
    "model": "Model",
    "lora": "Model",
    "adapter": "Model",
    "offsite": "Model",
    "federation": "Federation",
    "train": "Training",
    "codec": "Compression",
    "secagg": "Privacy & security",
    "dp": "Privacy & security",
    "privacy": "Privacy & security",
    "output": "Output",
}
#: Fields that say where and how the job runs rather than what it computes.
BACKEND_KEYS = frozenset(
    {
        "federation.backend",
        "federation.workers",
        "federation.cpus_per_worker",
        "federation.gpus_per_worker",
        "federation.ray_address",
        "federation.worker_retries",
        "model.device",
        "model.cache_dir",
        "train.threads",
    }
)
#: Options that are not config fields, and their panels.
COMMAND_PANELS: dict[str, str] = {
    "config": "Experiment file",
    "resume": "Experiment file",
    "print_config": "Experiment file",
    "tensorboard": "Output",
}

#: Functions a command may wrap a parameter in inside its overrides dict.
VALUE_PARSERS = frozenset({"parse_columns", "parse_value"})

_EXTRA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "fedpeft_cli_extra_overrides", default=None
)


def resolve_config(config_path: Path | None, overrides: dict[str, Any]) -> JobConfig:
    """Defaults ← TOML file ← command-line flags (flags left unset don't override)."""
    base = load_config(config_path) if config_path is not None else JobConfig()
    return base.replace(overrides)


def extra_overrides() -> dict[str, Any]:
    """The dotted overrides set through the options :func:`config_options` generated."""
    return dict(_EXTRA.get() or {})


def parse_columns(value: str | None) -> str | int | list[str | int] | None:
    """``--text-column`` / ``--label-column``: a name, a 0-based index (a file without a
    header row), or several joined by commas (``title,description`` or ``1,2``)."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    cols: list[str | int] = [int(p) if p.isdigit() else p for p in parts]
    return cols[0] if len(cols) == 1 else cols


def print_config_and_exit(cfg: JobConfig) -> None:
    """``--print-config``: the resolved config as TOML that ``--config`` loads, then exit 0.

    Written with ``typer.echo``, not rich: ``[model]`` would be read as rich markup.
    """
    from fedpeft.config import dump_toml

    typer.echo(dump_toml(cfg), nl=False)
    raise typer.Exit(0)


# ----------------------------------------------------------------------------- fields


def config_fields(sections: Iterable[str] | None = None) -> dict[str, dataclasses.Field[Any]]:
    """Every leaf field of :class:`JobConfig` by dotted key (``federation.rounds``,
    ``output``), in declaration order; only ``sections`` (and the top level) if given."""
    wanted = None if sections is None else set(sections)
    hints = typing.get_type_hints(JobConfig)
    out: dict[str, dataclasses.Field[Any]] = {}
    for top in dataclasses.fields(JobConfig):
        hint = hints[top.name]
        if dataclasses.is_dataclass(hint):
            if wanted is not None and top.name not in wanted:
                continue
            for sub in dataclasses.fields(hint):
                out[f"{top.name}.{sub.name}"] = sub
        else:
            out[top.name] = top
    return out


def field_type(key: str) -> Any:
    """The resolved type hint of a dotted config key."""
    section, _, name = key.rpartition(".")
    hints = typing.get_type_hints(JobConfig)
    if not section:
        return hints[name]
    return typing.get_type_hints(hints[section])[name]


def field_default(key: str, defaults: Mapping[str, Any] | None = None) -> Any:
    """What a command uses for ``key`` when nothing sets it."""
    if defaults and key in defaults:
        return defaults[key]
    f = config_fields()[key]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def panel_for(key: str) -> str | None:
    """The help panel of a dotted config key (None when its section has none)."""
    if key in BACKEND_KEYS:
        return "Backend"
    section = key.partition(".")[0]
    return SECTION_PANELS.get(section)


def show_value(value: Any) -> str:
    """A default as a user would write it in TOML (``none`` where TOML has no value)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value) or "[]"
    return str(value)


# ----------------------------------------------------------------------------- options


def option_keys(func: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: "section.field"}`` from the dict literal(s) in ``func``'s body that map
    config keys to the command's parameters (``{"federation.rounds": rounds, ...}``)."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):  # no source (frozen app): options keep what they declare
        return {}
    params = set(inspect.signature(func).parameters)
    known = set(config_fields())
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Dict):
            continue
        for k, v in zip(node.keys, node.values, strict=True):
            if isinstance(v, ast.Call) and _called(v) in VALUE_PARSERS and len(v.args) == 1:
                v = v.args[0]  # "data.text_column": parse_columns(text_column)
            if (
                isinstance(k, ast.Constant)
                and isinstance(k.value, str)
                and k.value in known
                and isinstance(v, ast.Name)
                and v.id in params
            ):
                found.setdefault(v.id, k.value)
    return found


def _option_type(hint: Any) -> tuple[Any, bool]:
    """A CLI type for a field's type hint, and whether values need :func:`parse_value`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        return str, True
    if origin is list:
        return list[str], False
    if hint in (bool, int, float, str):
        return hint, False
    return str, True


def parse_value(text: str) -> Any:
    """A flag's text as a TOML-like scalar: ``true``/``false``, an integer, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


def config_options(
    *,
    sections: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    keys: Mapping[str, str] | None = None,
    panels: Mapping[str, str] | None = None,
) -> Callable[[F], F]:
    """Decorate a typer command so that its options document the config (module docstring).

    ``sections``: config sections this command uses (fields of other sections get no
    option; None: every section, including ones added later); ``defaults``: the
    command's own defaults over the dataclass ones; ``keys``: ``{parameter: key}`` beyond
    what :func:`option_keys` finds; ``panels``: panels of parameters that are not config
    fields (beyond :data:`COMMAND_PANELS`).
    """
    sections = None if sections is None else tuple(sections)

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
        mapping = {**option_keys(func), **(keys or {})}
        extra_panels = {**COMMAND_PANELS, **(panels or {})}
        params: list[inspect.Parameter] = []
        taken = {name for p in signature.parameters.values() for name in _decls(p.default)}
        for p in signature.parameters.values():
            info = p.default
            if isinstance(info, OptionInfo):
                key = mapping.get(p.name)
                if key is not None:
                    _document(info, key, defaults)
                else:
                    info.rich_help_panel = info.rich_help_panel or extra_panels.get(p.name)
                    if info.show_default is True:
                        info.show_default = show_value(info.default)
            params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
        covered = set(mapping.values())
        generated: dict[str, tuple[str, bool]] = {}
        for key in config_fields(sections):
            if key in covered:
                continue
            flag = "--" + key.replace(".", "-").replace("_", "-")
            if flag in taken:
                continue
            name = "cfg_" + key.replace(".", "__")
            opt_type, needs_parse = _option_type(field_type(key))
            decls = (
                (f"{flag}/--no-{flag[2:]}",) if opt_type is bool else (flag,)
            )  # booleans get an explicit off switch
            info = typer.Option(None, *decls)
            _document(info, key, defaults)
            params.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=opt_type | None
                )
            )
            generated[name] = (key, needs_parse)

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            extra: dict[str, Any] = {}
            for name, (key, needs_parse) in generated.items():
                value = kwargs.pop(name, None)
                if value is None or value == []:
                    continue
                extra[key] = parse_value(value) if needs_parse else value
            token = _EXTRA.set(extra)
            try:
                return func(**kwargs)
            finally:
                _EXTRA.reset(token)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__dict__["generated_options"] = generated
        return typing.cast(F, wrapper)

    return decorate


def _called(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _decls(default: Any) -> list[str]:
    if not isinstance(default, OptionInfo):
        return []
    out: list[str] = []
    for decl in default.param_decls or ():
        out.extend(d for d in decl.split("/") if d.startswith("--"))
    return out


def _document(info: OptionInfo, key: str, defaults: Mapping[str, Any] | None) -> None:
    """Panel, shown default and help of an option that sets config ``key``."""
    help_text = config_fields()[key].metadata.get("help")
    if help_text:  # the dataclass documents the field; the option only names it
        info.help = help_text
    if info.help and key not in info.help:
        info.help = f"{info.help} ({key})"
    info.rich_help_panel = info.rich_help_panel or panel_for(key)
    info.show_default = show_value(field_default(key, defaults))
