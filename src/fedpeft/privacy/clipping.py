"""Clipping of client updates: the one L2 norm and L2 clip every side uses, and server-side
adaptive clipping.

Adaptive clipping: Andrew, Thakkar, McMahan, Ramaswamy 2021,
"Differentially Private Learning with Adaptive Clipping" (NeurIPS 2021).

Instead of a fixed clip norm C, the coordinator tracks the ``target_quantile`` γ of the
clients' update norms. Each round every participating client reports whether its update
was clipped; the server releases a *noised* count and moves C geometrically:

    b̃ = (Σ_i (b_i − ½) + N(0, σ_b²)) / m + ½            (b_i = 1 if ‖Δ_i‖ ≤ C)
    C ← C · exp(−η · (b̃ − γ))

where m is the public (expected) number of clients per round. Centring the indicators at
½ makes one client move the noised sum by at most ½, so the count release is a Gaussian
mechanism with noise multiplier 2σ_b. Released together with the update sum (noise
multiplier z_Δ on the clip norm) it composes, on the same sampled cohort, into one
Gaussian mechanism with ``z = (z_Δ^-2 + (2σ_b)^-2)^(-1/2)`` (the paper's Theorem 1
argument): :func:`split_noise_multiplier` gives the z_Δ that keeps the total at the z
the accountant was told. The paper's defaults: γ = 0.5, η = 0.2, σ_b = m / 20.

The count noise here is added by the server (central DP). Under secure aggregation the
indicators could ride in the masked vector with client-side discrete noise; that is not
done here, and adaptive clipping should be refused with distributed DP until it is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedpeft.errors import ConfigError
from fedpeft.tensors import Tensors, l2_norm

_FIELD = "dp.adaptive_clip"


def clip_l2(tensors: Tensors, max_norm: float) -> tuple[Tensors, float, float]:
    """``tensors`` scaled as a whole so that their global L2 norm is at most ``max_norm``;
    with the norm before clipping and the factor applied (1.0: left as it was)."""
    if not max_norm > 0:
        raise ValueError(f"`max_norm` must be > 0, got {max_norm}")
    norm = l2_norm(tensors)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    if factor == 1.0:
        return tensors, norm, factor
    return {k: (v * factor).astype(np.float32) for k, v in tensors.items()}, norm, factor


def default_count_noise_std(expected_clients: float) -> float:
    """Andrew et al.'s recommended σ_b = m / 20 for m expected clients per round."""
    return expected_clients / 20.0


def split_noise_multiplier(z_total: float, count_noise_std: float) -> float:
    """Noise multiplier z_Δ of the update sum such that it and the clipped-count release
    (std ``count_noise_std`` on a sum of sensitivity ½) together cost ``z_total``:
    ``z_Δ = (z_total^-2 − (2σ_b)^-2)^(-1/2)``. Raises ConfigError when the count alone
    already costs more (2σ_b ≤ z_total)."""
    if not (math.isfinite(z_total) and z_total > 0):
        raise ConfigError("dp.noise_multiplier", f"must be > 0, got {z_total!r}")
    if not (math.isfinite(count_noise_std) and count_noise_std > 0):
        raise ConfigError(f"{_FIELD}.count_noise_std", f"must be > 0, got {count_noise_std!r}")
    count_z = 2.0 * count_noise_std
    remaining = z_total**-2 - count_z**-2
    if remaining <= 0:
        raise ConfigError(
            f"{_FIELD}.count_noise_std",
            f"count noise std {count_noise_std:g} (noise multiplier 2*std = {count_z:g}) "
            f"must exceed half the total noise multiplier {z_total:g}: the clipped-count "
            "release alone would spend the whole budget; raise the count noise or lower "
            "the target",
        )
    return remaining**-0.5


class AdaptiveClip:
    """The clip norm of one DP run, updated each round from the noised clipped count."""

    def __init__(
        self,
        initial: float,
        target_quantile: float = 0.5,
        lr: float = 0.2,
        count_noise_std: float | None = None,
        *,
        expected_clients: float | None = None,
    ) -> None:
        if not (math.isfinite(initial) and initial > 0):
            raise ConfigError("dp.clip", f"must be > 0, got {initial!r}")
        if not 0.0 < target_quantile < 1.0:
            raise ConfigError(
                f"{_FIELD}.target_quantile", f"must be in (0, 1), got {target_quantile!r}"
            )
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"{_FIELD}.lr", f"must be > 0, got {lr!r}")
        if count_noise_std is None:
            if expected_clients is None or expected_clients <= 0:
                raise ConfigError(
                    f"{_FIELD}.count_noise_std",
                    "give count_noise_std, or expected_clients for the default m/20",
                )
            count_noise_std = default_count_noise_std(expected_clients)
        if not (math.isfinite(count_noise_std) and count_noise_std > 0):
            raise ConfigError(f"{_FIELD}.count_noise_std", f"must be > 0, got {count_noise_std!r}")
        self.clip = float(initial)
        self.target_quantile = float(target_quantile)
        self.lr = float(lr)
        self.count_noise_std = float(count_noise_std)
        self.expected_clients = None if expected_clients is None else float(expected_clients)
        self.last_unclipped_fraction: float | None = None

    def update(
        self,
        clipped_indicators_sum: float,
        num_clients: int,
        rng: np.random.Generator,
        *,
        denominator: float | None = None,
    ) -> float:
        """One round's geometric update; returns the new clip norm.

        ``clipped_indicators_sum``: how many of the round's ``num_clients`` reporting
        clients had an update norm above the current clip (were clipped). ``denominator``
        is the public m of the formula (default: ``expected_clients`` if given, else
        ``num_clients``; with Poisson sampling pass the expected cohort). ``rng`` draws the
        count noise: seed it from OS entropy, not the run seed.
        """
        if not (isinstance(num_clients, (int, np.integer)) and num_clients >= 0):
            raise ValueError(f"num_clients must be an int >= 0, got {num_clients!r}")
        if not 0 <= clipped_indicators_sum <= num_clients:
            raise ValueError(
                f"clipped_indicators_sum {clipped_indicators_sum} outside [0, {num_clients}]"
            )
        m = denominator if denominator is not None else (self.expected_clients or num_clients)
        if not m or m <= 0:
            raise ValueError("adaptive clipping needs a positive client count")
        unclipped = num_clients - clipped_indicators_sum
        centred = unclipped - 0.5 * num_clients  # Σ (b_i − ½)
        noised = centred + rng.normal(0.0, self.count_noise_std)
        fraction = noised / m + 0.5
        self.last_unclipped_fraction = float(fraction)
        self.clip = self.clip * math.exp(-self.lr * (fraction - self.target_quantile))
        return self.clip

    def state_dict(self) -> dict[str, Any]:
        return {
            "clip": self.clip,
            "target_quantile": self.target_quantile,
            "lr": self.lr,
            "count_noise_std": self.count_noise_std,
            "expected_clients": self.expected_clients,
            "last_unclipped_fraction": self.last_unclipped_fraction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("target_quantile", "lr", "count_noise_std"):
            if not math.isclose(float(state[key]), getattr(self, key)):
                raise ConfigError(
                    f"{_FIELD}.{key}",
                    f"checkpoint has {state[key]!r}, this run {getattr(self, key)!r}: the "
                    "adaptive clip's privacy parameters cannot change on resume",
                )
        self.clip = float(state["clip"])
        last = state.get("last_unclipped_fraction")
        self.last_unclipped_fraction = None if last is None else float(last)
