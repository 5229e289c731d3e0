"""Server-side aggregation: a Strategy ABC, FedAvg(M), FedExP, FedAdam, FedYogi and the
robust FedMedian, FedTrimmedAvg and Krum, by name; the per-update bounds of plain rounds."""

from __future__ import annotations

from fedpeft.aggregation.bounds import DEPLOYMENT_MAX_EXAMPLES, UpdateBounds
from fedpeft.aggregation.fedavg import FedAvg, FedExP
from fedpeft.aggregation.fedopt import FedAdam, FedOpt, FedYogi
from fedpeft.aggregation.lora_product import LORA_AGGREGATIONS
from fedpeft.aggregation.robust import FedMedian, FedTrimmedAvg, Krum
from fedpeft.aggregation.strategy import (
    STRATEGIES,
    AggregateStats,
    ClientUpdate,
    FederationSettings,
    Strategy,
    Tensors,
    aggregate_stats,
    register_strategy,
    weighted_mean,
)
from fedpeft.errors import ConfigError


def make_strategy(cfg: FederationSettings) -> Strategy:
    """The strategy named by ``federation.strategy``, configured from ``cfg``, with the
    coordinator's per-update bounds of plain rounds (on by default)."""
    cls = STRATEGIES.get(cfg.strategy)
    if cls is None:
        raise ConfigError(
            "federation.strategy", f"unknown strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}"
        )
    strategy = cls.from_config(cfg)
    strategy.bounds = UpdateBounds.from_config(cfg)
    return strategy


__all__ = [
    "DEPLOYMENT_MAX_EXAMPLES",
    "LORA_AGGREGATIONS",
    "STRATEGIES",
    "AggregateStats",
    "ClientUpdate",
    "FedAdam",
    "FedAvg",
    "FedExP",
    "FedMedian",
    "FedOpt",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "Strategy",
    "Tensors",
    "UpdateBounds",
    "aggregate_stats",
    "make_strategy",
    "register_strategy",
    "weighted_mean",
]
