"""Server-side aggregation: a Strategy ABC, FedAvg(M), FedExP, FedAdam and FedYogi, by name."""

from __future__ import annotations

from fedpeft.aggregation.fedavg import FedAvg, FedExP
from fedpeft.aggregation.fedopt import FedAdam, FedOpt, FedYogi
from fedpeft.aggregation.strategy import (
    AggregateStats,
    ClientUpdate,
    Strategy,
    Tensors,
    aggregate_stats,
    weighted_mean,
    weighted_metrics,
)
from fedpeft.config import FederationConfig
from fedpeft.errors import ConfigError

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedexp": FedExP,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}


def make_strategy(cfg: FederationConfig) -> Strategy:
    """The strategy named by ``federation.strategy``, configured from ``cfg``."""
    if cfg.strategy == "fedavg":
        return FedAvg(
            server_lr=cfg.server_lr,
            server_momentum=cfg.server_momentum,
            lora_aggregation=cfg.lora_aggregation,
        )
    if cfg.strategy == "fedexp":
        if cfg.server_momentum:
            raise ConfigError("federation.server_momentum", "fedexp has no server momentum")
        return FedExP(server_lr=cfg.server_lr, eps=cfg.fedexp_eps)
    if cfg.strategy in ("fedadam", "fedyogi"):
        cls = STRATEGIES[cfg.strategy]
        return cls(server_lr=cfg.server_lr, beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau)  # type: ignore[call-arg]
    raise ConfigError(
        "federation.strategy", f"unknown strategy {cfg.strategy!r}; known: {sorted(STRATEGIES)}"
    )


__all__ = [
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
    "weighted_mean",
    "weighted_metrics",
]
