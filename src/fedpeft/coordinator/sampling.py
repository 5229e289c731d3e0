"""Client sampling per round: fixed-size or Poisson.

The privacy accountant needs to know which one ran: fixed-size sampling without
replacement of ``k`` of ``n`` clients, or Poisson sampling where each client joins
independently with probability ``q = k / n`` (so the cohort size varies).
Both are pure functions of ``(seed, round)``: a resumed run samples the same cohorts.
"""

from __future__ import annotations

import enum

import numpy as np

from fedpeft.errors import ConfigError


class Sampling(enum.StrEnum):
    FIXED = "fixed"
    POISSON = "poisson"


class ClientSampler:
    def __init__(self, num_clients: int, per_round: int, scheme: Sampling | str, seed: int) -> None:
        if per_round > num_clients:
            raise ConfigError(
                "federation.clients_per_round",
                f"{per_round} clients per round but only {num_clients} clients",
            )
        self.num_clients = num_clients
        self.per_round = per_round
        self.scheme = Sampling(scheme)
        self.seed = seed

    @property
    def rate(self) -> float:
        """The sampling probability q the accountant uses."""
        return self.per_round / self.num_clients

    def sample(self, round_num: int) -> list[int]:
        rng = np.random.default_rng([self.seed, round_num, 0x5A4D])
        if self.scheme is Sampling.FIXED:
            chosen = rng.choice(self.num_clients, size=self.per_round, replace=False)
        else:
            chosen = np.flatnonzero(rng.random(self.num_clients) < self.rate)
        return sorted(int(c) for c in chosen)


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """A per-(round, client) seed, independent of which worker runs the task."""
    return int(np.random.default_rng([seed, round_num, client_id]).integers(0, 2**31 - 1))
