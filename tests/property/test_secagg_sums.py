"""Property tests of what travels as masked sums under SecAgg: the learning report's
fixed-point digits and the calibration statistics. Honest cohorts always decode to the
exact totals and always pass the plausibility check (a check that refused honest sums
would fail rounds; one that decoded wrong totals would misreport them)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.aggregation import calibration as ccvr
from fedpeft.coordinator.secure import PLAUSIBILITY_HEADROOM, plan_levels
from fedpeft.privacy.secagg.updates import (
    LOSS_SCALE,
    SecureEncoding,
    StatsEncoding,
    decode_secure_sum,
    decode_stats_sum,
    encode_secure,
    encode_stats,
    metric_values,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _add(total: np.ndarray, vector: np.ndarray, bits: int) -> np.ndarray:
    return (total + vector) & np.uint64((1 << bits) - 1)


@SETTINGS
@given(
    clients=st.integers(3, 12),
    bits=st.integers(12, 40),
    cap=st.integers(1, 5000),
    uniform=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_honest_reports_decode_to_exact_totals_and_pass_the_check(
    clients: int, bits: int, cap: int, uniform: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    levels = plan_levels(bits, PLAUSIBILITY_HEADROOM * clients)
    dim = 7
    enc = SecureEncoding(
        names=("w",),
        sizes=(dim,),
        density=1.0,
        subset_seed=0,
        levels=levels,
        clip_range=0.1,
        weight_cap=1 if uniform else cap,
        bits=bits,
        uniform_weights=uniform,
        with_sq_norm=not uniform,
        metrics=True,
        examples_cap=cap,
    )
    total = np.zeros(enc.length, np.uint64)
    want = {"examples": 0, "loss_sum": 0, "steps": 0, "clipped": 0}
    for _ in range(clients):
        n = int(rng.integers(1, 2 * cap + 1))  # some beyond the cap: counted at the cap
        report = {
            "train_loss": float(rng.uniform(0, 30)),
            "train_steps": float(rng.integers(0, 500)),
        }
        update = rng.uniform(-0.2, 0.2, dim)  # some coordinates beyond the clip
        vector, _, info = encode_secure({"w": update}, enc, n, rng, report)
        clipped = round(info["secagg_clipped_fraction"] * enc.sent)
        for key, value in metric_values(enc, n, report, clipped).items():
            want[key] += value
        total = _add(total, vector, bits)
    decoded = decode_secure_sum(total, enc, {"w": (dim,)}, clients=clients)
    assert decoded.metric_totals == want
    means = decoded.metric_means(clients, enc.sent)
    assert means["train_loss"] == want["loss_sum"] / (LOSS_SCALE * want["examples"])
    assert 0.0 <= means["secagg_clipped_fraction"] <= 1.0


@SETTINGS
@given(
    clients=st.integers(2, 6),
    classes=st.integers(2, 4),
    dim=st.integers(1, 6),
    scale=st.floats(0.01, 8.0),  # within FEATURE_CLIP: clipped features differ by design
    seed=st.integers(0, 2**31),
)
def test_honest_statistics_sum_to_the_pooled_statistics(
    clients: int, classes: int, dim: int, scale: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    enc = StatsEncoding.plan("m", classes, dim, cohort=clients, examples_cap=40, bits=62)
    total = np.zeros(enc.length, np.uint64)
    plain = []
    for _ in range(clients):
        n = int(rng.integers(1, 41))
        x = scale * rng.standard_normal((n, dim)) + rng.uniform(-scale, scale, dim)
        y = rng.integers(0, classes, n)
        total = _add(total, encode_stats(x, y, enc), enc.bits)
        plain.append(ccvr.feature_stats("m", x, y, classes))
    pooled = decode_stats_sum(total, enc, clients)
    want = ccvr.merge_feature_stats(plain, "m")
    got = ccvr.merge_feature_stats([pooled], "m")
    np.testing.assert_array_equal(got[0], want[0])
    # the plain path sends float32 statistics: its own rounding dominates the comparison
    tol = 1e-5 * scale**2 + 1e-6
    np.testing.assert_allclose(got[1], want[1], atol=1e-5 * scale + 1e-6)
    np.testing.assert_allclose(got[2], want[2], atol=tol * 10, rtol=1e-4)
