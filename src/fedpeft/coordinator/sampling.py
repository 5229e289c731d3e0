"""Client sampling per round: fixed-size or Poisson.

The privacy accountant needs to know which one ran: fixed-size sampling without
replacement of ``k`` of ``n`` clients, or Poisson sampling where each client joins
independently with probability ``q = k / n`` (so the cohort size varies).

A seeded sampler is a pure function of ``(seed, round)``: a resumed run samples the same
cohorts. That is right without DP, and wrong whenever the accountant claims amplification
by sampling: anyone who knows ``train.seed`` knows every cohort, so a client's
participation is not random to them and the amplified ε does not hold. Central DP
therefore draws cohorts from the OS's entropy (:func:`from_entropy`; the privacy mechanism
decides, :meth:`fedpeft.coordinator.privacy.PrivacyMechanism.cohort_sampler`).
"""

from __future__ import annotations

import copy
import enum
import secrets
from typing import Any

import numpy as np

from fedpeft.errors import ConfigError


class Sampling(enum.StrEnum):
    FIXED = "fixed"
    POISSON = "poisson"


class ClientSampler:
    """``per_round`` of ``num_clients`` per round; ``seed`` None: from the OS's entropy."""

    def __init__(
        self, num_clients: int, per_round: int, scheme: Sampling | str, seed: int | None
    ) -> None:
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

    @property
    def seeded(self) -> bool:
        """Whether the cohorts follow from a seed (reproducible, hence predictable)."""
        return self.seed is not None

    def from_entropy(self) -> ClientSampler:
        """The same sampling, each cohort drawn from fresh OS entropy."""
        return ClientSampler(self.num_clients, self.per_round, self.scheme, None)

    def sample(self, round_num: int) -> list[int]:
        if self.seed is None:
            rng = np.random.default_rng()  # fresh OS entropy: nobody can predict the cohort
        else:
            rng = np.random.default_rng([self.seed, round_num, 0x5A4D])
        if self.scheme is Sampling.FIXED:
            chosen = rng.choice(self.num_clients, size=self.per_round, replace=False)
        else:
            chosen = np.flatnonzero(rng.random(self.num_clients) < self.rate)
        return sorted(int(c) for c in chosen)


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """A per-(round, client) seed, independent of which worker runs the task."""
    return int(np.random.default_rng([seed, round_num, client_id]).integers(0, 2**31 - 1))


def from_entropy(sampler: Any) -> Any:
    """``sampler`` drawing its cohorts from the OS's entropy: its own ``from_entropy()``, or
    for a sampler keyed by an integer ``seed`` attribute (the deployment's live sampler) a
    copy keyed by a fresh secret seed that is never stored. Refuses (ConfigError) a
    sampler with neither."""
    if callable(getattr(sampler, "from_entropy", None)):
        return sampler.from_entropy()
    if isinstance(getattr(sampler, "seed", None), int):
        fresh = copy.copy(sampler)
        fresh.seed = secrets.randbits(64)
        return fresh
    raise ConfigError(
        "federation.sampling",
        f"{type(sampler).__name__} cannot draw cohorts from OS entropy, which central DP's "
        "amplification by sampling needs",
    )
