"""What one client may weigh in a plain round: the coordinator's per-update bounds.

A plain round sees every update, so it can bound each client's influence before any
strategy averages: an update whose L2 norm exceeds the round's bound is scaled down to it
(norm bounding, Sun et al. 2019; the median-relative bound is FLAME's adaptive clipping,
Nguyen et al. 2022, with headroom). The bound is ``norm_multiple`` times the cohort's
median update norm, or the fixed ``norm_max``, or the smaller of the two when both are
set. Honest clients rarely come near a few times the median; a scaled (boosted) update is
cut to at most that, so one client moves the mean by at most ``norm_multiple`` honest
steps divided by the cohort — as long as fewer than half the cohort collude (the median
is then an honest client's norm; the fixed bound holds regardless).

Bounds apply only where a strategy sees individual updates
(:meth:`~fedpeft.aggregation.strategy.Strategy.aggregate_train`): central DP clips every
update to its own data-independent clip instead (a median-relative clip would make one
client's presence change how the others are clipped, outside the DP sensitivity), and a
secure round never shows single updates.

The cap on a client's reported example count is checked when an update is decoded
(:func:`fedpeft.coordinator.collect.decode_update`); its configured value travels here
because it is part of the same per-client bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

import numpy as np

from fedpeft.aggregation.strategy import ClientUpdate
from fedpeft.errors import ConfigError
from fedpeft.tensors import l2_norm

#: A deployment's cap on the examples one client may report, when none is configured
#: (the simulation's automatic cap is its largest shard)
DEPLOYMENT_MAX_EXAMPLES = 100_000


class BoundSettings(Protocol):
    """What :class:`UpdateBounds` reads of ``[federation]``."""

    max_client_examples: int
    update_norm_multiple: float
    update_norm_max: float


@dataclass(frozen=True)
class UpdateBounds:
    """Per-client bounds of a plain round (0 turns a bound off)."""

    #: most training examples one client may report (0: automatic, see ``examples_cap``)
    max_examples: int = 0
    #: clip each update to this multiple of the cohort's median norm
    norm_multiple: float = 3.0
    #: clip each update to this L2 norm
    norm_max: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_examples, bool) or not isinstance(self.max_examples, int):
            raise ConfigError(
                "federation.max_client_examples",
                f"must be an integer, got {self.max_examples!r}",
            )
        if self.max_examples < 0:
            raise ConfigError(
                "federation.max_client_examples", f"must be >= 0, got {self.max_examples}"
            )
        for name, value in (
            ("update_norm_multiple", self.norm_multiple),
            ("update_norm_max", self.norm_max),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"federation.{name}", f"must be finite and >= 0, got {value}")
        if 0 < self.norm_multiple < 1:
            raise ConfigError(
                "federation.update_norm_multiple",
                f"must be 0 (off) or >= 1 (a bound below the median clips most honest "
                f"clients), got {self.norm_multiple}",
            )

    @classmethod
    def from_config(cls, fed: BoundSettings) -> Self:
        return cls(
            max_examples=fed.max_client_examples,
            norm_multiple=fed.update_norm_multiple,
            norm_max=fed.update_norm_max,
        )

    def examples_cap(self, shard_sizes: Sequence[int] | None = None) -> int:
        """The cap on a client's reported examples: the configured one, else the largest
        shard (simulation: no honest client holds more), else
        :data:`DEPLOYMENT_MAX_EXAMPLES`."""
        if self.max_examples:
            return self.max_examples
        if shard_sizes:
            return max(1, max(shard_sizes))
        return DEPLOYMENT_MAX_EXAMPLES

    @property
    def bounds_norm(self) -> bool:
        return bool(self.norm_multiple or self.norm_max)

    def norm_bound(self, norms: Sequence[float]) -> float:
        """The round's bound on one update's L2 norm (inf: no bound)."""
        bound = math.inf
        if self.norm_max:
            bound = self.norm_max
        if self.norm_multiple and norms:
            # a zero median (most of the cohort sent nothing) clips every update to zero:
            # such a round makes no step rather than the outliers' step
            bound = min(bound, self.norm_multiple * float(np.median(norms)))
        return bound

    def apply(self, updates: Sequence[ClientUpdate]) -> tuple[list[ClientUpdate], dict[str, Any]]:
        """The updates with every norm above the round's bound scaled down to it, and the
        metrics line's ``clients_norm_clipped`` and ``update_norm_bound``."""
        if not self.bounds_norm:
            return list(updates), {}
        norms = [l2_norm(u.delta) for u in updates]
        bound = self.norm_bound(norms)
        out: list[ClientUpdate] = []
        clipped = 0
        for update, norm in zip(updates, norms, strict=True):
            if norm > bound:
                factor = bound / norm
                delta = {
                    k: (v.astype(np.float64) * factor).astype(np.float32)
                    for k, v in update.delta.items()
                }
                out.append(replace(update, delta=delta))
                clipped += 1
            else:
                out.append(update)
        return out, {"clients_norm_clipped": clipped, "update_norm_bound": bound}
