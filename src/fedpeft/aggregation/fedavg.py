"""FedAvg (McMahan et al. 2017), FedAvgM (Hsu et al. 2019): the example-weighted mean
of client updates, optionally through server momentum; FedExP (Jhunjhunwala et al. 2023):
the same mean, extrapolated by a server step size read off the round's updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Self

import numpy as np

from fedpeft.aggregation.lora_product import LORA_AGGREGATIONS, product_aggregate
from fedpeft.aggregation.strategy import (
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
from fedpeft.tensors import sq_norm

#: FedAvg's mean step uses no statistics beyond the mean
_NO_STATS = AggregateStats(0, 0.0)


@register_strategy
class FedAvg(Strategy):
    """θ ← θ + η · v with v ← β · v + Σ n_i Δ_i / Σ n_i (η = server_lr, β = server_momentum).

    β = 0 and η = 1 is plain FedAvg; β > 0 is FedAvgM (Flower's ``FedAvgM``), which
    smooths the cohort-to-cohort swings of non-IID rounds.

    LoRA note: averaging A and B separately (``lora_aggregation="factors"``) is not
    averaging the products B·A; the result is the product of averages. This is the common
    default (FedIT, FlowerTune) and the bias shrinks as clients agree.
    ``lora_aggregation="product"`` averages the products exactly and re-factors them to
    rank r (:mod:`fedpeft.aggregation.lora_product`); other tensors (the head) are
    averaged as usual.
    """

    #: FedAvg needs each update only with product aggregation
    individual_updates_setting = "federation.lora_aggregation"

    name = "fedavg"

    def __init__(
        self,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        lora_aggregation: str = "factors",
    ) -> None:
        if not server_lr > 0:
            raise ConfigError("federation.server_lr", f"must be > 0, got {server_lr}")
        if not 0.0 <= server_momentum < 1.0:
            raise ConfigError(
                "federation.server_momentum", f"must be in [0, 1), got {server_momentum}"
            )
        if lora_aggregation not in LORA_AGGREGATIONS:
            raise ConfigError(
                "federation.lora_aggregation",
                f"must be one of {', '.join(LORA_AGGREGATIONS)}, got {lora_aggregation!r}",
            )
        if lora_aggregation == "product" and server_momentum:
            raise ConfigError(
                "federation.lora_aggregation",
                "product aggregation re-factors the adapter every round; server momentum "
                "would add up factors in different bases (set federation.server_momentum = 0)",
            )
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.lora_aggregation = lora_aggregation
        self.needs_individual_updates = lora_aggregation == "product"
        self.velocity: Tensors = {}

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        return cls(
            server_lr=fed.server_lr,
            server_momentum=fed.server_momentum,
            lora_aggregation=fed.lora_aggregation,
        )

    def aggregate_updates(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        if self.lora_aggregation == "product":
            mean = weighted_mean(updates)
            new = {k: (current[k] + self.server_lr * mean[k]).astype("float32") for k in current}
            new.update(product_aggregate(current, new, updates, self.server_lr))
            return new
        return self.aggregate_mean(round_num, current, weighted_mean(updates), _NO_STATS)

    def aggregate_mean(
        self, round_num: int, current: Tensors, mean: Tensors, stats: AggregateStats
    ) -> Tensors:
        del round_num, stats
        if self.lora_aggregation == "product":
            raise ValueError("product aggregation needs each client's update, not their mean")
        if self.server_momentum == 0.0:
            return {k: (current[k] + self.server_lr * mean[k]).astype("float32") for k in current}
        out: Tensors = {}
        for k, x in current.items():
            v = mean[k].astype(np.float64)
            if k in self.velocity:
                v = v + self.server_momentum * self.velocity[k]
            self.velocity[k] = v
            out[k] = (x + self.server_lr * v).astype(np.float32)
        return out

    def state_dict(self) -> Tensors:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.velocity = {
            k.removeprefix("velocity/"): np.asarray(v, np.float64)
            for k, v in state.items()
            if k.startswith("velocity/")
        }


@register_strategy
class FedExP(FedAvg):
    """FedExP (Jhunjhunwala, Wang & Joshi, ICLR 2023, Algorithm 1): θ ← θ + η_g · Δ̄ with

        η_g = max(1, Σ p_i ‖Δ_i‖² / (2 (‖Δ̄‖² + ε))),   Δ̄ = Σ p_i Δ_i,  p_i = n_i / Σ n,

    norms over the whole adapter. When clients agree (‖Δ̄‖² ≈ Σ p_i ‖Δ_i‖²) this is FedAvg;
    when their updates point apart — non-IID cohorts, noise — the mean is short and the
    server steps further along it, as projection methods (POCS) do. ``server_lr`` scales
    η_g (1 = the paper). The paper evaluates the mean of the last two iterates because the
    global model oscillates; here that is ``federation.server_ema`` (0.5 ≈ that average).

    Needs Σ p_i ‖Δ_i‖²; under secure aggregation each client sends p_i-weighted ‖Δ_i‖² as
    one more masked scalar, so the coordinator still learns only the sum.
    """

    name = "fedexp"
    needs_sq_norm = True

    def __init__(self, server_lr: float = 1.0, eps: float = 1e-3) -> None:
        super().__init__(server_lr=server_lr)
        if not eps > 0:
            raise ConfigError("federation.fedexp_eps", f"must be > 0, got {eps}")
        self.eps = eps
        self.last_step = 1.0

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        if fed.server_momentum:
            raise ConfigError("federation.server_momentum", "fedexp has no server momentum")
        return cls(server_lr=fed.server_lr, eps=fed.fedexp_eps)

    def aggregate_updates(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        return self.aggregate_mean(
            round_num, current, weighted_mean(updates), aggregate_stats(updates)
        )

    def aggregate_mean(
        self, round_num: int, current: Tensors, mean: Tensors, stats: AggregateStats
    ) -> Tensors:
        del round_num
        if stats.mean_sq_norm is None:
            raise ValueError("FedExP needs the round's spread Σ p_i ‖Δ_i‖² (mean_sq_norm)")
        spread = stats.mean_sq_norm
        norm2 = sq_norm(mean)
        self.last_step = self.server_lr * max(1.0, spread / (2.0 * (norm2 + self.eps)))
        return {
            k: (current[k].astype(np.float64) + self.last_step * mean[k]).astype(np.float32)
            for k in current
        }

    def train_metrics(self) -> dict[str, float]:
        return {**super().train_metrics(), "server_step": self.last_step}
