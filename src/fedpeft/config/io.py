"""A job's config as TOML and back: dict → validated dataclasses, dataclasses → TOML."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fedpeft.errors import ConfigError


class Serialisable(Protocol):
    """A config that turns into TOML tables (:class:`fedpeft.config.JobConfig`)."""

    def to_dict(self) -> dict[str, Any]: ...


T = TypeVar("T")


def drop_none(value: Any) -> Any:
    """TOML has no null: drop None entries so a saved config reloads."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    return value


def build(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass ``cls`` from a dict, checking unknown keys and types."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown field; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(typing.cast(type, hint), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(hint, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, name)
        for option in inner:  # e.g. str | int | list[str | int]: the first that fits
            try:
                return _coerce(option, value, name)
            except ConfigError:
                continue
        kinds = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ConfigError(name, f"must be {kinds}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, f"must be a list, got {value!r}")
        return [_coerce(args[0], v, name) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    return value


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; a missing or malformed file is a ConfigError on --config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc


def dump_toml(config: Serialisable) -> str:
    """Serialise a config to TOML (sections of scalars and lists only)."""
    lines: list[str] = []
    top = config.to_dict()
    for key, value in top.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in top.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")
