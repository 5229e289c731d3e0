"""Field checks shared by the config sections: each raises a ConfigError naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedpeft.errors import ConfigError


def doc(text: str) -> dict[str, str]:
    """A field's ``metadata``: its help text, shown by the CLI."""
    return {"help": text}


def choices(names: Iterable[str]) -> str:
    """``a, b or c``: a registry's names for a help text."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def positive(section: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{section}.{name}", f"must be > 0, got {value!r}")


def non_negative(section: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{section}.{name}", f"must be >= 0, got {value!r}")


def fraction(section: str, name: str, value: float, *, one_allowed: bool = False) -> None:
    """``value`` in [0, 1) — or [0, 1] with ``one_allowed``."""
    numeric = isinstance(value, (int, float))
    if not (numeric and value >= 0.0 and (value <= 1.0 if one_allowed else value < 1.0)):
        interval = "[0, 1]" if one_allowed else "[0, 1)"
        raise ConfigError(f"{section}.{name}", f"must be in {interval}, got {value!r}")


def int_in(section: str, name: str, value: int, bound_name: str, bound: int) -> None:
    """``value`` is an integer in ``[0, bound]``; the message names ``bound_name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
        raise ConfigError(
            f"{section}.{name}", f"must be an integer in [0, {bound_name}={bound}], got {value!r}"
        )


def one_of(section: str, name: str, value: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{section}.{name}", f"must be one of {allowed}, got {value!r}")
