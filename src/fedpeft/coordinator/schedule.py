"""Per-round settings the coordinator sends to clients (Flower's ``on_fit_config_fn``).

The local loop anneals within one client's few steps (``train.schedule``); across rounds
a constant client learning rate leaves the federation at a noise floor. A round
schedule decays the learning rate each sampled client uses from ``train.lr`` in round 1
to ``train.lr · client_lr_final`` in the last round. A warm-up of ``W`` rounds first ramps
the learning rate linearly from ``train.lr / W`` (round 1) to ``train.lr`` (round ``W``), the
round-level counterpart of ``get_linear_schedule_with_warmup``: under label skew the first
cohorts can pull an untrained model all the way to their majority class, and smaller first
steps keep one cohort from deciding the run.
"""

from __future__ import annotations

import math

from fedpeft.config import ROUND_SCHEDULES
from fedpeft.protocol.messages import TaskSettings


def round_lr_factor(
    round_num: int, rounds: int, schedule: str, final: float, warmup: int = 0
) -> float:
    """Multiplier of ``train.lr`` in ``round_num`` (1-based) of ``rounds``.

    With ``warmup = W > 0`` rounds 1..W use ``round_num / W``, and the decay below runs over
    rounds W..rounds instead of 1..rounds. ``constant`` → 1. ``linear`` and ``cosine`` go
    from 1 (round 1, or round W) to ``final`` in the last round (a single round uses 1).
    """
    if schedule not in ROUND_SCHEDULES:
        raise ValueError(f"unknown round schedule {schedule!r}; known: {list(ROUND_SCHEDULES)}")
    if round_num < 1:
        raise ValueError(f"rounds are 1-based, got {round_num}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warm-up rounds must be a non-negative integer, got {warmup!r}")
    if round_num < warmup:
        return round_num / warmup
    start = max(1, warmup)  # the round the decay starts from, at factor 1
    if schedule == "constant" or rounds <= start:
        return 1.0
    progress = min(1.0, (round_num - start) / (rounds - start))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    shape = 1.0 - progress if schedule == "linear" else cosine
    return final + (1.0 - final) * shape


class RoundConfig:
    """Builds a round's task settings: the fixed ones plus the scheduled ``lr``."""

    def __init__(
        self,
        fixed: TaskSettings,
        *,
        lr: float,
        rounds: int,
        schedule: str = "constant",
        final: float = 1.0,
        warmup: int = 0,
    ) -> None:
        round_lr_factor(1, rounds, schedule, final, warmup)  # validates schedule and warm-up
        self.fixed = fixed
        self.lr = lr
        self.rounds = rounds
        self.schedule = schedule
        self.final = final
        self.warmup = warmup

    def __call__(self, round_num: int) -> TaskSettings:
        if self.schedule == "constant" and not self.warmup:
            return self.fixed  # clients train at their own train.lr
        factor = round_lr_factor(round_num, self.rounds, self.schedule, self.final, self.warmup)
        return self.fixed.replace(lr=self.lr * factor)
