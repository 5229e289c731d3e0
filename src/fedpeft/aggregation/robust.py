"""Byzantine-robust aggregation of plain rounds: FedMedian, FedTrimmedAvg and Krum, the
set Flower ships (``FedMedian``, ``FedTrimmedAvg``, ``Krum``).

Each replaces the weighted mean by a statistic one client cannot drag far:

* **FedMedian** (Yin et al. 2018) — the coordinate-wise median of the updates;
* **FedTrimmedAvg** (Yin et al. 2018) — per coordinate, drop the ``trim_fraction`` largest
  and smallest values, average the rest;
* **Krum** (Blanchard et al. 2017) — the one update closest to its ``n − f − 2`` nearest
  neighbours (``f = krum_byzantine``).

All three are unweighted (as in Flower): a client's claimed example count buys it nothing.
They need each client's update, so they are refused under secure aggregation
(``needs_individual_updates``) and under central DP (which hands strategies only a noised
mean).

LoRA note: FedMedian and FedTrimmedAvg work coordinate-wise on the A and B factors
separately — like ``lora_aggregation = "factors"``, the product of robust factors is not a
robust product, and the bias shrinks as clients agree. Krum keeps one client's A and B
together, so its step is a product some client actually trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from fedpeft.aggregation.strategy import (
    AggregateStats,
    ClientUpdate,
    FederationSettings,
    Strategy,
    Tensors,
    register_strategy,
)
from fedpeft.errors import ConfigError


class _Robust(Strategy):
    """θ ← θ + η · robust(Δ_1 … Δ_k): the shared step; subclasses give the statistic."""

    needs_individual_updates = True

    def __init__(self, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ConfigError("federation.server_lr", f"must be > 0, got {server_lr}")
        self.server_lr = server_lr

    @staticmethod
    def _check_plain(fed: FederationSettings, name: str) -> None:
        if fed.server_momentum:
            raise ConfigError("federation.server_momentum", f"{name} has no server momentum")

    def robust_step(self, updates: Sequence[ClientUpdate]) -> Tensors:
        raise NotImplementedError

    def aggregate_updates(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        del round_num
        if not updates:
            raise ValueError("no updates to aggregate")
        step = self.robust_step(sorted(updates, key=lambda u: u.client_id))
        return {
            k: (current[k].astype(np.float64) + self.server_lr * step[k]).astype(np.float32)
            for k in current
        }

    def aggregate_mean(
        self, round_num: int, current: Tensors, mean: Tensors, stats: AggregateStats
    ) -> Tensors:
        del round_num, current, mean, stats
        raise ConfigError(
            "federation.strategy",
            f"{self.name} needs each client's update; this round gives only their (noised "
            "or secure) mean — use fedavg with DP or secure aggregation",
        )


def _stacked(updates: Sequence[ClientUpdate], name: str) -> np.ndarray:
    return np.stack([u.delta[name].astype(np.float64) for u in updates])


@register_strategy
class FedMedian(_Robust):
    """θ ← θ + η · median_i Δ_i, coordinate by coordinate."""

    name = "fedmedian"

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        cls._check_plain(fed, cls.name)
        return cls(server_lr=fed.server_lr)

    def robust_step(self, updates: Sequence[ClientUpdate]) -> Tensors:
        return {k: np.median(_stacked(updates, k), axis=0) for k in updates[0].delta}


@register_strategy
class FedTrimmedAvg(_Robust):
    """θ ← θ + η · trimmed mean: per coordinate, the ⌊β·k⌋ largest and smallest of the k
    values are dropped (β = ``trim_fraction``) and the rest averaged."""

    name = "fedtrimmedavg"

    def __init__(self, server_lr: float = 1.0, trim_fraction: float = 0.2) -> None:
        super().__init__(server_lr)
        if not 0.0 <= trim_fraction < 0.5:
            raise ConfigError(
                "federation.trim_fraction", f"must be in [0, 0.5), got {trim_fraction}"
            )
        self.trim_fraction = trim_fraction

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        cls._check_plain(fed, cls.name)
        return cls(server_lr=fed.server_lr, trim_fraction=fed.trim_fraction)

    def robust_step(self, updates: Sequence[ClientUpdate]) -> Tensors:
        cut = int(self.trim_fraction * len(updates))
        out: Tensors = {}
        for k in updates[0].delta:
            ordered = np.sort(_stacked(updates, k), axis=0)
            out[k] = ordered[cut : len(updates) - cut].mean(axis=0)
        return out


@register_strategy
class Krum(_Robust):
    """θ ← θ + η · Δ_j, j = argmin_i Σ_{m ∈ N(i)} ‖Δ_i − Δ_m‖², N(i) the n − f − 2 updates
    nearest to Δ_i (at least one), f = ``krum_byzantine``."""

    name = "krum"

    def __init__(self, server_lr: float = 1.0, byzantine: int = 1) -> None:
        super().__init__(server_lr)
        if isinstance(byzantine, bool) or not isinstance(byzantine, int) or byzantine < 0:
            raise ConfigError(
                "federation.krum_byzantine", f"must be an integer >= 0, got {byzantine!r}"
            )
        self.byzantine = byzantine
        self.last_chosen = -1

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        cls._check_plain(fed, cls.name)
        return cls(server_lr=fed.server_lr, byzantine=fed.krum_byzantine)

    def robust_step(self, updates: Sequence[ClientUpdate]) -> Tensors:
        names = list(updates[0].delta)
        flat = np.stack(
            [
                np.concatenate([u.delta[k].astype(np.float64).ravel() for k in names])
                for u in updates
            ]
        )
        sq = (flat * flat).sum(axis=1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
        neighbours = max(1, len(updates) - self.byzantine - 2)
        scores = [
            float(np.sort(np.delete(dist[i], i))[:neighbours].sum()) for i in range(len(updates))
        ]
        best = int(np.argmin(scores))  # ties: the lowest client id (updates are sorted)
        self.last_chosen = updates[best].client_id
        return {k: updates[best].delta[k].astype(np.float64) for k in names}

    def train_metrics(self) -> dict[str, float]:
        return {**super().train_metrics(), "krum_chosen": float(self.last_chosen)}
