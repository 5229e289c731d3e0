"""Per-round settings the coordinator sends to clients (Flower's ``on_fit_config_fn``).

The local loop anneals within one client's few steps (``train.schedule``); across rounds
a constant client learning rate leaves the federation at a noise floor. A round
schedule decays the learning rate each sampled client uses from ``train.lr`` in round 1
to ``train.lr · client_lr_final`` in the last round.
"""

from __future__ import annotations

import math
from typing import Any

ROUND_SCHEDULES = ("constant", "linear", "cosine")


def round_lr_factor(round_num: int, rounds: int, schedule: str, final: float) -> float:
    """Multiplier of ``train.lr`` in ``round_num`` (1-based) of ``rounds``.

    ``constant`` → 1. ``linear`` and ``cosine`` go from 1 in round 1 to ``final`` in the
    last round (a single round uses 1).
    """
    if schedule not in ROUND_SCHEDULES:
        raise ValueError(f"unknown round schedule {schedule!r}; known: {list(ROUND_SCHEDULES)}")
    if round_num < 1:
        raise ValueError(f"rounds are 1-based, got {round_num}")
    if schedule == "constant" or rounds <= 1:
        return 1.0
    progress = min(1.0, (round_num - 1) / (rounds - 1))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    shape = 1.0 - progress if schedule == "linear" else cosine
    return final + (1.0 - final) * shape


class RoundConfig:
    """Builds the per-round client config: fixed entries plus the scheduled ``lr``."""

    def __init__(
        self,
        fixed: dict[str, Any],
        *,
        lr: float,
        rounds: int,
        schedule: str = "constant",
        final: float = 1.0,
    ) -> None:
        round_lr_factor(1, rounds, schedule, final)  # validates the schedule name
        self.fixed = dict(fixed)
        self.lr = lr
        self.rounds = rounds
        self.schedule = schedule
        self.final = final

    def __call__(self, round_num: int) -> dict[str, Any]:
        config = dict(self.fixed)
        if self.schedule != "constant":
            config["lr"] = self.lr * round_lr_factor(
                round_num, self.rounds, self.schedule, self.final
            )
        return config
