"""Adaptive server optimizers FedAdam and FedYogi (Reddi et al. 2021, Algorithm 2).

The pseudo-gradient is the weighted mean update Δ̄. With m₀ = 0 and v₀ = τ²:

* m ← β₁ m + (1 − β₁) Δ̄
* FedAdam: v ← β₂ v + (1 − β₂) Δ̄²
* FedYogi: v ← v − (1 − β₂) Δ̄² · sign(v − Δ̄²)
* θ ← θ + η · m / (√v + τ)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

import numpy as np

from fedpeft.aggregation.strategy import (
    AggregateStats,
    FederationSettings,
    Strategy,
    Tensors,
    register_strategy,
)
from fedpeft.errors import ConfigError


class FedOpt(Strategy):
    """The shared loop of FedAdam and FedYogi; a subclass gives the second moment."""

    name = "fedopt"

    def __init__(
        self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        if not server_lr > 0:
            raise ConfigError("federation.server_lr", f"must be > 0, got {server_lr}")
        for field, value in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ConfigError(f"federation.{field}", f"must be in [0, 1), got {value}")
        if not tau > 0:
            raise ConfigError("federation.tau", f"must be > 0, got {tau}")
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: Tensors = {}
        self.v: Tensors = {}

    @classmethod
    def from_config(cls, fed: FederationSettings) -> Self:
        return cls(server_lr=fed.server_lr, beta1=fed.beta1, beta2=fed.beta2, tau=fed.tau)

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def aggregate_mean(
        self, round_num: int, current: Tensors, mean: Tensors, stats: AggregateStats
    ) -> Tensors:
        del round_num, stats
        delta = mean
        out: Tensors = {}
        for k, x in current.items():
            g = delta[k].astype(np.float64)
            m = self.m.get(k, np.zeros_like(g))
            v = self.v.get(k, np.full_like(g, self.tau**2))
            m = self.beta1 * m + (1 - self.beta1) * g
            v = self._second_moment(v, g * g)
            self.m[k], self.v[k] = m, v
            out[k] = (x + self.server_lr * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def state_dict(self) -> Tensors:
        state = {f"m/{k}": v for k, v in self.m.items()}
        state.update({f"v/{k}": v for k, v in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("v/")}


@register_strategy
class FedAdam(FedOpt):
    name = "fedadam"

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * g2


@register_strategy
class FedYogi(FedOpt):
    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, g2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta2) * g2 * np.sign(v - g2)
