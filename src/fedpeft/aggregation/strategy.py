"""The Strategy ABC: hooks for configure/aggregate of training and evaluation.

As in Flower's ``Strategy``, the round loop belongs to the engine
(:class:`fedpeft.coordinator.engine.RoundEngine`); a strategy only answers the hooks.
Adapters travel as named float32 numpy arrays (``Tensors``); updates are deltas
``θ_local − θ_start``.

Strategies register by name (:func:`register_strategy`, like the codecs of
:mod:`fedpeft.compression`): ``federation.strategy`` is validated against
:data:`STRATEGIES` and :func:`fedpeft.aggregation.make_strategy` is one lookup. This
package stays free of :mod:`fedpeft.config` at import time because the config reads
these registries.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import numpy as np

from fedpeft.tensors import Tensors, sq_norm

if TYPE_CHECKING:
    from fedpeft.aggregation.bounds import UpdateBounds


@dataclass(frozen=True)
class ClientUpdate:
    """One decoded, validated client update."""

    client_id: int
    num_examples: int
    delta: Tensors
    metrics: Mapping[str, float] = field(default_factory=dict)


def example_weights(updates: Sequence[ClientUpdate]) -> list[tuple[ClientUpdate, float]]:
    """Each update with its weight p_i = n_i / Σ n, in client-id order (a fixed order makes
    float sums over clients deterministic)."""
    if not updates:
        raise ValueError("no updates to average")
    ordered = sorted(updates, key=lambda u: u.client_id)
    total = float(sum(u.num_examples for u in ordered))
    if total <= 0:
        raise ValueError("updates carry no examples")
    return [(u, u.num_examples / total) for u in ordered]


def weighted_mean(updates: Sequence[ClientUpdate]) -> Tensors:
    """Σ n_i Δ_i / Σ n_i, accumulated in float64 in client-id order (deterministic)."""
    weighted = example_weights(updates)
    first = weighted[0][0]
    out: Tensors = {}
    for name in first.delta:
        acc = np.zeros(first.delta[name].shape, dtype=np.float64)
        for u, p in weighted:
            acc += p * u.delta[name].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out


@dataclass(frozen=True)
class AggregateStats:
    """What a round reveals besides the mean update — all a sum-only (secure) round gives.

    ``mean_sq_norm`` is Σ p_i ‖Δ_i‖² (FedExP's spread); under secure aggregation it travels
    as one more masked scalar per client, so it is None when the round did not carry it.
    """

    num_clients: int
    total_weight: float
    mean_sq_norm: float | None = None


def aggregate_stats(updates: Sequence[ClientUpdate]) -> AggregateStats:
    """The :class:`AggregateStats` of individual updates (what a secure round sums up)."""
    weighted = example_weights(updates)
    spread = sum(p * sq_norm(u.delta) for u, p in weighted)
    total = float(sum(u.num_examples for u, _ in weighted))
    return AggregateStats(len(weighted), total, spread)


class FederationSettings(Protocol):
    """What strategies read of the job's ``[federation]`` section
    (:class:`fedpeft.config.FederationConfig`; this package does not import the config,
    which reads this package's registry)."""

    strategy: str
    server_lr: float
    server_momentum: float
    lora_aggregation: str
    beta1: float
    beta2: float
    tau: float
    fedexp_eps: float
    trim_fraction: float
    krum_byzantine: int
    max_client_examples: int
    update_norm_multiple: float
    update_norm_max: float


class Strategy(abc.ABC):
    """Hooks the round engine calls. Subclasses override hooks, never the loop.

    Two ways in: :meth:`aggregate_train` sees every client's update (plain rounds);
    :meth:`aggregate_mean` sees only the weighted mean and :class:`AggregateStats` — what a
    securely aggregated round reveals. A strategy that can work from the mean (FedAvg,
    FedAvgM, FedAdam, FedYogi, FedExP with its spread scalar) implements the latter and
    gets the former for free; one that needs individual updates sets
    ``needs_individual_updates`` and is refused with secure aggregation.

    :meth:`aggregate_train` is a template: it bounds each update's norm (``bounds``, set
    from ``[federation]`` by :func:`fedpeft.aggregation.make_strategy`; None: unbounded)
    and hands the bounded updates to the hook :meth:`aggregate_updates`.
    """

    name: str = "strategy"
    #: True when aggregation needs each client's update (refused under secure aggregation)
    needs_individual_updates: bool = False
    #: the setting a refusal names when individual updates are not available
    individual_updates_setting: str = "federation.strategy"
    #: True when :meth:`aggregate_mean` reads ``stats.mean_sq_norm``: a secure round then
    #: carries it as one more masked scalar per client, and DP refuses the strategy (the
    #: norms are not noised)
    needs_sq_norm: bool = False
    #: the coordinator's per-update bounds of plain rounds (None: unbounded)
    bounds: UpdateBounds | None = None
    #: what the last bounding did, for the round's metrics line
    bound_metrics: Mapping[str, Any] = MappingProxyType({})

    @classmethod
    @abc.abstractmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        """The strategy configured from the job's ``[federation]`` section."""

    def configure_train(self, round_num: int, client_ids: Sequence[int]) -> dict[str, Any]:
        """Per-round settings sent to every sampled client (empty: the job's defaults)."""
        del round_num, client_ids
        return {}

    def aggregate_train(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        """Return the new global adapter from the current one and the round's updates,
        each bounded first (subclasses override :meth:`aggregate_updates`, not this)."""
        if self.bounds is not None:
            updates, self.bound_metrics = self.bounds.apply(updates)
        return self.aggregate_updates(round_num, current, updates)

    def aggregate_updates(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        """The hook of :meth:`aggregate_train`: the new global adapter from the round's
        (bounded) updates; by default the step from their weighted mean."""
        return self.aggregate_mean(
            round_num, current, weighted_mean(updates), aggregate_stats(updates)
        )

    @abc.abstractmethod
    def aggregate_mean(
        self, round_num: int, current: Tensors, mean: Tensors, stats: AggregateStats
    ) -> Tensors:
        """Return the new global adapter from the current one and the round's weighted mean
        update Σ n_i Δ_i / Σ n_i (all a securely aggregated round reveals)."""

    def train_metrics(self) -> dict[str, float]:
        """Server-side numbers of the last ``aggregate_train`` for the round's metrics line
        (a server step size, say): by default what the bounds did."""
        return dict(self.bound_metrics)

    def configure_evaluate(self, round_num: int, every: int, last_round: int) -> bool:
        """Whether to evaluate the global adapter after ``round_num``."""
        return round_num % every == 0 or round_num == last_round

    def aggregate_evaluate(self, round_num: int, metrics: Mapping[str, float]) -> dict[str, float]:
        del round_num
        return dict(metrics)

    # Server-side state (optimizer moments) for checkpoints; stateless by default.
    def state_dict(self) -> Tensors:
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        del state


#: ``federation.strategy`` → strategy class, filled by :func:`register_strategy`
STRATEGIES: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    """Class decorator registering a strategy under its ``name``."""
    other = STRATEGIES.get(cls.name)
    if other is not None and other is not cls:
        raise ValueError(f"strategy name {cls.name!r} is already registered")
    STRATEGIES[cls.name] = cls
    return cls
