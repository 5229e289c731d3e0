"""The coordinator's per-round client config: the round learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest

from fedpeft.config import JobConfig
from fedpeft.coordinator.schedule import RoundConfig, round_lr_factor
from fedpeft.errors import ConfigError
from fedpeft.protocol.messages import TaskSettings


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_runs_from_one_to_final(schedule: str) -> None:
    factors = [round_lr_factor(r, 10, schedule, 0.1) for r in range(1, 11)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(factors))


def test_factor_values_match_the_formulas() -> None:
    # round 4 of 7: progress 0.5
    assert round_lr_factor(4, 7, "linear", 0.0) == pytest.approx(0.5)
    assert round_lr_factor(4, 7, "cosine", 0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    # round 2 of 5: progress 0.25
    cos = 0.5 * (1 + math.cos(math.pi * 0.25))
    assert round_lr_factor(2, 5, "cosine", 0.0) == pytest.approx(cos)
    assert round_lr_factor(3, 5, "constant", 0.0) == 1.0
    assert round_lr_factor(1, 1, "cosine", 0.0) == 1.0  # a single round keeps the lr
    assert round_lr_factor(12, 10, "linear", 0.3) == pytest.approx(0.3)  # past the end


def test_bad_schedule_and_round_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown round schedule"):
        round_lr_factor(1, 5, "step", 0.1)
    with pytest.raises(ValueError, match="1-based"):
        round_lr_factor(0, 5, "linear", 0.1)


def test_round_config_adds_lr_only_when_scheduled() -> None:
    constant = RoundConfig(TaskSettings(proximal_mu=0.1), lr=1e-3, rounds=4)
    assert constant(3) == TaskSettings(proximal_mu=0.1)
    linear = RoundConfig(TaskSettings(), lr=1e-3, rounds=3, schedule="linear", final=0.0)
    assert [linear(r).lr for r in (1, 2, 3)] == pytest.approx([1e-3, 5e-4, 0.0])
    assert linear(2).proximal_mu == 0.0


def test_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"federation\.client_lr_schedule"):
        JobConfig().replace({"federation.client_lr_schedule": "exponential"})
    with pytest.raises(ConfigError, match=r"federation\.client_lr_final"):
        JobConfig().replace({"federation.client_lr_final": 1.5})


def test_warmup_ramps_then_decays_from_the_last_warmup_round() -> None:
    # 4 warm-up rounds of 10: 1/4, 2/4, 3/4, 1, then linear from 1 (round 4) to 0.1 (round 10)
    factors = [round_lr_factor(r, 10, "linear", 0.1, warmup=4) for r in range(1, 11)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4:] == pytest.approx([1 - 0.9 * k / 6 for k in range(1, 7)])
    assert factors[-1] == pytest.approx(0.1)
    # constant after the warm-up; a one-round warm-up changes nothing
    assert [round_lr_factor(r, 6, "constant", 0.1, warmup=3) for r in range(1, 7)] == (
        pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1])
    )
    for schedule in ("constant", "linear", "cosine"):
        assert [round_lr_factor(r, 8, schedule, 0.2, warmup=1) for r in range(1, 9)] == [
            round_lr_factor(r, 8, schedule, 0.2) for r in range(1, 9)
        ]
    # warm-up over every round: the last round reaches the full lr
    assert round_lr_factor(5, 5, "cosine", 0.0, warmup=5) == 1.0
    with pytest.raises(ValueError, match="warm-up"):
        round_lr_factor(1, 5, "linear", 0.1, warmup=-1)


def test_round_config_sends_the_warmed_up_lr_with_a_constant_schedule() -> None:
    warm = RoundConfig(TaskSettings(), lr=1e-3, rounds=5, warmup=2)
    assert [warm(r).lr for r in range(1, 6)] == pytest.approx([5e-4] + [1e-3] * 4)


def test_warmup_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"federation\.client_lr_warmup_rounds"):
        JobConfig().replace({"federation.client_lr_warmup_rounds": -1})
    rounds = JobConfig().federation.rounds
    with pytest.raises(ConfigError, match=r"federation\.client_lr_warmup_rounds"):
        JobConfig().replace({"federation.client_lr_warmup_rounds": rounds + 1})
    cfg = JobConfig().replace({"federation.client_lr_warmup_rounds": 2})
    assert cfg.federation.client_lr_warmup_rounds == 2
