"""FedAvg (McMahan et al. 2017): the example-weighted mean of client updates."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.aggregation.strategy import ClientUpdate, Strategy, Tensors, weighted_mean
from fedpeft.errors import ConfigError


class FedAvg(Strategy):
    """θ ← θ + η · Σ n_i Δ_i / Σ n_i (η = server_lr, 1.0 is plain FedAvg).

    LoRA note: averaging A and B separately is not averaging the products B·A; the
    result is the product of averages. This is the common default (FedIT, FlowerTune)
    and the bias shrinks as clients agree.
    """

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ConfigError("federation.server_lr", f"must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def aggregate_train(
        self, round_num: int, current: Tensors, updates: Sequence[ClientUpdate]
    ) -> Tensors:
        del round_num
        mean = weighted_mean(updates)
        return {k: (current[k] + self.server_lr * mean[k]).astype("float32") for k in current}
