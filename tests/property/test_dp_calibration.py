"""Calibrated noise never overshoots the target ε (Hypothesis over ε, δ, q, rounds).

The accountant is slow (0.1-2 s per evaluation, a dozen per calibration), so the default
run draws a handful of Poisson/RDP cases; the wider sweep (fixed-size sampling, the PLD
accountant) is marked ``slow``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.errors import ConfigError
from fedpeft.privacy.accountant import (
    CALIBRATION_TOL,
    RoundPrivacy,
    calibrate_noise_multiplier,
    epsilon,
)

FAST = settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
WIDE = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def budgets(draw: st.DrawFn, samplings: tuple[str, ...]) -> dict:
    population = draw(st.integers(50, 5000))
    sample_size = draw(st.integers(1, max(1, population // 5)))
    return {
        "target_epsilon": draw(st.floats(0.5, 10.0)),
        "delta": draw(st.sampled_from([1e-7, 1e-6, 1e-5, 1e-4])) / max(1.0, population / 1e3),
        "rounds": draw(st.integers(1, 60)),
        "sampling": draw(st.sampled_from(samplings)),
        "population": population,
        "sample_size": sample_size,
    }


def check_never_overshoots(b: dict, accountant: str) -> None:
    target, delta, rounds = b["target_epsilon"], b["delta"], b["rounds"]
    shape = {k: b[k] for k in ("sampling", "population", "sample_size")}
    try:
        z = calibrate_noise_multiplier(target, delta, rounds, accountant=accountant, **shape)
    except ConfigError as err:  # out of reach even at z = 100: must say so with the numbers
        assert "out of reach" in str(err)
        worst = epsilon([RoundPrivacy(100.0, **shape)] * rounds, delta, accountant)
        assert worst > target
        return
    spent = epsilon([RoundPrivacy(z, **shape)] * rounds, delta, accountant)
    assert spent <= target
    # near-minimal: a noise multiplier a few tolerances lower overshoots (unless at the floor)
    lower = z - 3 * CALIBRATION_TOL
    if lower > 0.05:
        assert epsilon([RoundPrivacy(lower, **shape)] * rounds, delta, accountant) > target


@FAST
@given(budgets(("poisson",)))
def test_calibration_never_overshoots_rdp_poisson(b: dict) -> None:
    check_never_overshoots(b, "rdp")


@pytest.mark.slow
@WIDE
@given(budgets(("poisson", "fixed")))
def test_calibration_never_overshoots_rdp_wide(b: dict) -> None:
    check_never_overshoots(b, "rdp")


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(budgets(("poisson",)))
def test_calibration_never_overshoots_pld(b: dict) -> None:
    check_never_overshoots(b, "pld")
