"""The vectorised discrete Gaussian sampler against the exact pmf and against opendp's exact
sampler: mean, variance, tails and chi-square tests at sigma 0.5, 1, 5 and 100."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedpeft.privacy.discrete_gaussian import (
    discrete_gaussian_pmf,
    discrete_gaussian_variance,
    integer_l2_bound,
    sample_discrete_gaussian,
)

SIGMAS = (0.5, 1.0, 5.0, 100.0)
N = 200_000
#: Seeds are fixed, so each test is deterministic; the bound keeps a correct sampler from
#: failing by bad luck (z-scores of 5, p-values of 1e-4) while still catching a wrong law.
Z_MAX = 5.0
P_MIN = 1e-4


def exact_moments(sigma: float) -> tuple[float, float]:
    """(variance, fourth central moment) of N_Z(0, sigma²) from the pmf."""
    bound = math.ceil(40 * sigma) + 2
    k = np.arange(-bound, bound + 1, dtype=np.float64)
    p = discrete_gaussian_pmf(k, sigma)
    return float((k**2 * p).sum()), float((k**4 * p).sum())


def binned(
    values: np.ndarray, sigma: float, min_expected: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Observed and expected counts over runs of consecutive integers, each run expecting at
    least ``min_expected`` of ``n`` draws; the outer runs take the tails."""
    bound = math.ceil(12 * sigma) + 2
    k = np.arange(-bound, bound + 1)
    p = discrete_gaussian_pmf(k, sigma)
    groups: list[list[int]] = []
    current: list[int] = []
    acc = 0.0
    for i, pi in enumerate(p):
        current.append(i)
        acc += pi * n
        if acc >= min_expected:
            groups.append(current)
            current, acc = [], 0.0
    if current:
        groups[-1].extend(current)
    starts = np.array([k[g[0]] for g in groups])
    expected = np.array([p[g].sum() for g in groups])
    expected *= n / expected.sum()  # the mass beyond ±12 sigma (< e^-72) goes to the ends
    which = np.searchsorted(starts[1:], values, side="right")
    observed = np.bincount(which, minlength=len(groups))
    return observed, expected


@pytest.fixture(scope="module")
def draws() -> dict[float, np.ndarray]:
    rng = np.random.default_rng(20260312)
    return {s: sample_discrete_gaussian(s, N, rng) for s in SIGMAS}


@pytest.mark.parametrize("sigma", SIGMAS)
def test_mean_and_variance_match_the_exact_law(draws: dict, sigma: float) -> None:
    x = draws[sigma].astype(np.float64)
    var, m4 = exact_moments(sigma)
    assert abs(x.mean()) < Z_MAX * math.sqrt(var / N)
    var_se = math.sqrt((m4 - var**2) / N)
    assert abs(x.var() - var) < Z_MAX * var_se
    assert var <= sigma**2 + 1e-9  # the discrete Gaussian's variance never exceeds sigma²


@pytest.mark.parametrize("sigma", SIGMAS)
def test_tail_frequencies_match_the_exact_law(draws: dict, sigma: float) -> None:
    x = np.abs(draws[sigma])
    for multiple in (1.0, 2.0, 3.0):
        cut = math.floor(multiple * sigma)
        k = np.arange(cut + 1, math.ceil(40 * sigma) + 3)
        p = 2 * float(discrete_gaussian_pmf(k, sigma).sum())  # P(|X| > cut)
        freq = float((x > cut).mean())
        assert abs(freq - p) < Z_MAX * math.sqrt(p * (1 - p) / N) + 1e-12, (multiple, freq, p)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_chi_square_against_the_exact_pmf(draws: dict, sigma: float) -> None:
    obs, expected = binned(draws[sigma], sigma, 20.0, N)
    assert len(obs) >= 3
    result = stats.chisquare(obs, expected)
    assert result.pvalue > P_MIN, (sigma, result)


def test_pmf_is_normalised_and_symmetric() -> None:
    for sigma in SIGMAS:
        k = np.arange(-(math.ceil(40 * sigma) + 2), math.ceil(40 * sigma) + 3)
        p = discrete_gaussian_pmf(k, sigma)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.allclose(p, p[::-1])
    # large sigma: the discrete variance tends to sigma²
    assert discrete_gaussian_variance(100.0) == pytest.approx(1e4, rel=1e-9)


def test_shapes_dtype_and_determinism() -> None:
    a = sample_discrete_gaussian(3.0, (4, 5), np.random.default_rng(1))
    b = sample_discrete_gaussian(3.0, (4, 5), np.random.default_rng(1))
    assert a.shape == (4, 5) and a.dtype == np.int64
    assert np.array_equal(a, b)
    assert sample_discrete_gaussian(3.0, 0, np.random.default_rng(1)).shape == (0,)
    assert sample_discrete_gaussian(3.0, 7, np.random.default_rng(1)).shape == (7,)


def test_integer_l2_bound_holds_for_adversarial_rounding() -> None:
    rng = np.random.default_rng(5)
    d, clip, scale = 1000, 2.0, 30.0
    bound = integer_l2_bound(clip, scale, d)
    for _ in range(20):
        x = rng.normal(size=d)
        x *= clip / np.linalg.norm(x)
        scaled = scale * x
        # round every coordinate away from zero: the worst case for the norm
        worst = np.sign(scaled) * np.ceil(np.abs(scaled))
        stochastic = np.floor(scaled + rng.random(d))
        assert np.linalg.norm(worst) <= bound
        assert np.linalg.norm(stochastic) <= bound
    with pytest.raises(ValueError, match="clip"):
        integer_l2_bound(0.0, scale, d)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan, math.inf])
def test_bad_sigma_is_refused(sigma: float) -> None:
    with pytest.raises(ValueError, match="sigma"):
        sample_discrete_gaussian(sigma, 3, np.random.default_rng(0))


# ---- against opendp's exact sampler -------------------------------------------------------


def opendp_samples(sigma: float, n: int) -> np.ndarray:
    dp = pytest.importorskip("opendp.prelude")
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    meas = dp.m.make_gaussian(*space, scale=sigma)
    return np.asarray(meas([0] * n), dtype=np.int64)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_same_distribution_as_opendp(draws: dict, sigma: float) -> None:
    # opendp takes ~20 µs per draw: 20k of its draws against 20k of ours
    n = 20_000
    theirs = opendp_samples(sigma, n)
    ours = draws[sigma][:n]
    var, m4 = exact_moments(sigma)
    mean_se = math.sqrt(2 * var / n)
    assert abs(ours.mean() - theirs.mean()) < Z_MAX * mean_se
    var_se = math.sqrt(2 * (m4 - var**2) / n)
    assert abs(ours.var() - theirs.var()) < Z_MAX * var_se
    # two-sample chi-square on bins each expecting >= 20 draws per sample
    obs_ours, _ = binned(ours, sigma, 20.0, n)
    obs_theirs, _ = binned(theirs, sigma, 20.0, n)
    table = np.array([obs_ours, obs_theirs])
    table = table[:, table.sum(axis=0) > 0]
    assert stats.chi2_contingency(table).pvalue > P_MIN
