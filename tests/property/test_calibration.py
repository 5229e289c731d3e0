"""CCVR statistics: any split of the data over clients merges to the pooled statistics."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.aggregation.calibration import (
    feature_stats,
    merge_feature_stats,
    unpack_symmetric,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def split_data(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, list[np.ndarray]]:
    classes = draw(st.integers(1, 4))
    d = draw(st.integers(1, 6))
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=draw(st.floats(-5, 5)), scale=draw(st.floats(0.01, 3)), size=(n, d))
    y = rng.integers(0, classes, size=n)
    clients = draw(st.integers(1, 8))
    owner = rng.integers(0, clients, size=n)  # some clients may hold nothing
    return x, y, classes, [np.flatnonzero(owner == c) for c in range(clients)]


@SETTINGS
@given(split_data())
def test_merged_client_stats_equal_pooled_stats(
    problem: tuple[np.ndarray, np.ndarray, int, list[np.ndarray]],
) -> None:
    x, y, classes, parts = problem
    stats = [feature_stats("clf", x[idx], y[idx], classes) for idx in parts]
    count, mean, cov = merge_feature_stats(stats, "clf")
    for c in range(classes):
        xc = x[y == c]
        assert count[c] == len(xc)
        if len(xc) == 0:
            continue
        np.testing.assert_allclose(mean[c], xc.mean(axis=0), rtol=1e-5, atol=1e-5)
        if len(xc) > 1:  # unbiased covariance, float32 on the wire
            scale = max(1.0, float(np.abs(xc).max()) ** 2)
            np.testing.assert_allclose(
                cov[c], np.cov(xc.T, ddof=1).reshape(cov[c].shape), rtol=1e-4, atol=1e-4 * scale
            )


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_packed_scatter_round_trips(d: int, k: int, seed: int) -> None:
    a = np.random.default_rng(seed).normal(size=(k, d, d))
    sym = a + np.swapaxes(a, 1, 2)
    rows, cols = np.triu_indices(d)
    np.testing.assert_array_equal(unpack_symmetric(sym[:, rows, cols], d), sym)
