"""Server-side aggregation: a Strategy ABC, FedAvg(M), FedExP, FedAdam and FedYogi, by name."""

from __future__ import annotations

from fedpeft.aggregation.fedavg import FedAvg, FedExP
from fedpeft.aggregation.fedopt import FedAdam, FedOpt, FedYogi
from fedpeft.aggregation.lora_product import LORA_AGGREGATIONS
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
    weighted_metrics,
)
from fedpeft.errors import ConfigError


def make_strategy(cfg: FederationSettings) -> Strategy:
    """The strategy named by ``federation.strategy``, configured from ``cfg``."""
    cls = STRATEGIES.get(cfg.strategy)
    if cls is None:
        raise ConfigError(
            "federation.strategy", f"unknown strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}"
        )
    return cls.from_config(cfg)


__all__ = [
    "LORA_AGGREGATIONS",
    "STRATEGIES",
    "AggregateStats",
    "ClientUpdate",
    "FedAdam",
    "FedAvg",
    "FedExP",
    "FedOpt",
    "FedYogi",
    "Strategy",
    "Tensors",
    "aggregate_stats",
    "make_strategy",
    "register_strategy",
    "weighted_mean",
    "weighted_metrics",
]
