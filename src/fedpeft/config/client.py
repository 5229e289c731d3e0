"""``[client.policy]``: the privacy floor a data owner sets for the tasks its daemon takes.

A client daemon (``fedpeft client run``) reads it from ``--policy FILE.toml`` and its
flags (a flag overrides the file); :mod:`fedpeft.client.policy` checks every task against
it before training and refuses, with the reason, a task below the floor. Each field's
error names it (``client.policy.max_epsilon``)::

    [client.policy]
    require_secagg = true
    min_cohort = 10
    max_epsilon = 8.0
    max_delta = 1e-5
    min_noise_multiplier = 0.5
    allowed_codecs = ["dense", "compeft"]
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedpeft.compression import available_codecs
from fedpeft.config.checks import choices, doc
from fedpeft.config.io import build
from fedpeft.errors import ConfigError

SECTION = "client.policy"


@dataclass(frozen=True)
class ClientPolicy:
    """What a task must offer before this client trains for it (the defaults accept any
    task: a data owner opts in to each floor)."""

    require_secagg: bool = field(
        default=False,
        metadata=doc("take only tasks under secure aggregation (the coordinator sees only sums)"),
    )
    min_cohort: int = field(
        default=0,
        metadata=doc(
            "fewest clients in any sum the coordinator can unmask (the SecAgg survivor floor "
            "the clients enforce); 0 = no floor; above 0 implies secure aggregation"
        ),
    )
    max_epsilon: float | None = field(
        default=None,
        metadata=doc(
            "largest epsilon of the whole run, computed by this client's own accountant from "
            "the task's declared DP parameters; tasks without DP are refused"
        ),
    )
    max_delta: float = field(
        default=1e-5, metadata=doc("largest delta a task may declare (checked with max_epsilon)")
    )
    min_noise_multiplier: float = field(
        default=0.0,
        metadata=doc(
            "smallest noise multiplier: noise std on the sum over its L2 sensitivity "
            "(dp.noise_multiplier's meaning); above 0 refuses tasks without DP noise"
        ),
    )
    allowed_codecs: tuple[str, ...] = field(
        default=(),
        metadata=doc(f"codecs the job may use ({choices(available_codecs())}); empty = any"),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.require_secagg, bool):
            raise ConfigError(
                f"{SECTION}.require_secagg", f"must be true or false, got {self.require_secagg!r}"
            )
        if isinstance(self.min_cohort, bool) or not isinstance(self.min_cohort, int):
            raise ConfigError(
                f"{SECTION}.min_cohort", f"must be an integer, got {self.min_cohort!r}"
            )
        if self.min_cohort < 0:
            raise ConfigError(f"{SECTION}.min_cohort", f"must be >= 0, got {self.min_cohort}")
        if self.max_epsilon is not None and not _finite_above(self.max_epsilon, 0.0):
            raise ConfigError(f"{SECTION}.max_epsilon", f"must be > 0, got {self.max_epsilon!r}")
        if not (_finite_above(self.max_delta, 0.0) and self.max_delta < 1.0):
            raise ConfigError(f"{SECTION}.max_delta", f"must be in (0, 1), got {self.max_delta!r}")
        if not (_finite_above(self.min_noise_multiplier, -1.0) and self.min_noise_multiplier >= 0):
            raise ConfigError(
                f"{SECTION}.min_noise_multiplier",
                f"must be >= 0, got {self.min_noise_multiplier!r}",
            )
        codecs = tuple(self.allowed_codecs)
        object.__setattr__(self, "allowed_codecs", codecs)
        known = available_codecs()
        for name in codecs:
            if name not in known:
                raise ConfigError(
                    f"{SECTION}.allowed_codecs", f"unknown codec {name!r}; known: {choices(known)}"
                )

    @property
    def active(self) -> bool:
        """Whether any floor is set (the default policy accepts every task)."""
        return self != ClientPolicy()

    @property
    def needs_secagg(self) -> bool:
        """A cohort floor can only be checked in secure-aggregation parameters."""
        return self.require_secagg or self.min_cohort > 0

    @property
    def needs_dp(self) -> bool:
        return self.max_epsilon is not None or self.min_noise_multiplier > 0

    def replace(self, **changes: Any) -> ClientPolicy:
        """This policy with the given fields changed (``None`` values are left out: an
        unset flag keeps the file's value)."""
        given = {k: v for k, v in changes.items() if v is not None}
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        return ClientPolicy(**{**current, **given})

    def describe(self) -> str:
        """One line for the daemon's log: the floors that are set."""
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != f.default and f.name != "max_delta"
        ]
        if self.max_epsilon is not None:
            parts.append(f"max_delta={self.max_delta!r}")
        return ", ".join(parts) or "none (every task is accepted)"


def _finite_above(value: Any, low: float) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > low


def policy_from_dict(data: dict[str, Any]) -> ClientPolicy:
    """``[client.policy]`` from a TOML document's tables: unknown tables under ``[client]``
    and unknown fields are refused, naming them."""
    client = data.get("client", {})
    if not isinstance(client, dict):
        raise ConfigError("client", f"must be a table, got {type(client).__name__}")
    unknown = sorted(set(client) - {"policy"})
    if unknown:
        raise ConfigError(f"client.{unknown[0]}", "unknown table; known: ['policy']")
    table = dict(client.get("policy", {}))
    if isinstance(table.get("allowed_codecs"), list):
        table["allowed_codecs"] = tuple(table["allowed_codecs"])
    return build(ClientPolicy, table, f"{SECTION}.")


def load_policy(path: str | Path) -> ClientPolicy:
    """The ``[client.policy]`` table of a TOML file (``--policy``); errors name the file or
    the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--policy", f"file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--policy", f"{path} is not valid TOML: {exc}") from exc
    policy = policy_from_dict(data)  # unknown tables under [client] are named first
    if "policy" not in data.get("client", {}):
        raise ConfigError("--policy", f"{path} has no [client.policy] table")
    return policy
