"""FedAvg (McMahan et al. 2017) and FedAvgM (Hsu et al. 2019): the example-weighted mean
of client updates, optionally through server momentum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedpeft.aggregation.strategy import ClientUpdate, Strategy, Tensors, weighted_mean
from fedpeft.errors import ConfigError


class FedAvg(Strategy):
    """θ ← θ + η · v with v ← β · v + Σ n_i Δ_i / Σ n_i (η = server_lr, β = server_momentum).

    β = 0 and η = 1 is plain FedAvg; β > 0 is FedAvgM (Flower's ``FedAvgM``), which
    smooths the cohort-to-cohort swings of non-IID rounds.

    LoRA note: averaging A and B separately is not averaging the products B·A; the
    result is the product of averages. This is the common default (FedIT, FlowerTune)
    and the bias shrinks as clients agree.
    """

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.0) -> None:
        if not server_lr > 0:
            raise ConfigError("federation.server_lr", f"must be > 0, got {server_lr}")
        if not 0.0 <= server_momentum < 1.0:
            raise ConfigError(
                "federation.server_momentum", f"must be in [0, 1), got {server_momentum}"
            )
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.velocity: Tensors = {}

    def aggregate_train(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        del round_num
        mean = weighted_mean(updates)
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
