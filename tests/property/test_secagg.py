"""Property tests of SecAgg+: exact sums under random dropouts and cohorts, the planning
rule, the neighbour graph, quantisation and the bit packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.errors import CodecError, ConfigError
from fedpeft.privacy.secagg import (
    MAX_BITS,
    SecAggAborted,
    dequantize,
    from_field,
    harary_neighbours,
    pack,
    plan_secagg,
    quantize,
    sum_bits,
    to_field,
    unpack,
)
from fedpeft.privacy.secagg.params import (
    CORRECTNESS_BITS,
    SECURITY_BITS,
    SMALL_COHORT,
    _binom_cdf_below,
)
from fedpeft.privacy.secagg.simulate import STAGES, simulate_round

ROUNDS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MORE_ROUNDS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
FAST = settings(max_examples=200, deadline=None)


@st.composite
def rounds(draw: st.DrawFn, max_n: int = 20):
    n = draw(st.integers(3, max_n))  # MIN_COHORT
    fraction = draw(st.sampled_from([0.0, 0.02, 0.1, 0.2, 0.3]))
    try:
        params = plan_secagg(
            draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True)),
            length=draw(st.integers(1, 300)),
            bits=draw(st.integers(1, MAX_BITS)),
            round_num=draw(st.integers(0, 1000)),
            seed=draw(st.integers(0, 2**32)),
            dropout_fraction=fraction,
        )
    except ConfigError:
        params = plan_secagg(
            list(range(n)), length=5, bits=8, round_num=0, seed=0, dropout_fraction=0.0
        )
    stage_of = {
        c: draw(st.sampled_from((None, *STAGES)) if draw(st.booleans()) else st.none())
        for c in params.clients
    }
    drop = {s: [c for c, v in stage_of.items() if v == s] for s in STAGES}
    seed = draw(st.integers(0, 2**32))
    return params, drop, seed


@ROUNDS
@given(rounds())
def test_random_rounds_give_the_exact_sum_or_abort(case) -> None:
    check_round(*case)


@pytest.mark.slow
@MORE_ROUNDS
@given(rounds(max_n=30))
def test_many_random_rounds_give_the_exact_sum_or_abort(case) -> None:
    check_round(*case)


def check_round(params, drop, seed) -> None:
    rng = np.random.default_rng(seed)
    inputs = {
        c: rng.integers(0, 1 << params.bits, params.length, dtype=np.uint64) for c in params.clients
    }
    try:
        run = simulate_round(params, inputs, drop)
    except SecAggAborted:
        return
    gone = set(drop["advertise"]) | set(drop["share"]) | set(drop["mask"])
    survivors = tuple(c for c in params.clients if c not in gone)
    # pruning may drop a client that answered but kept fewer than t neighbours
    assert set(run.server.survivors) <= set(survivors)
    total = np.zeros(params.length, np.uint64)
    for c in run.server.survivors:
        total += inputs[c]
    assert np.array_equal(run.server.result(), total & np.uint64((1 << params.bits) - 1))


@ROUNDS
@given(st.integers(3, 24), st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]), st.integers(0, 99))
def test_planned_rounds_survive_the_planned_dropout(n: int, fraction: float, seed: int) -> None:
    check_planned(n, fraction, seed)


@pytest.mark.slow
@MORE_ROUNDS
@given(st.integers(3, 60), st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]), st.integers(0, 99))
def test_many_planned_rounds_survive_the_planned_dropout(n, fraction, seed) -> None:
    check_planned(n, fraction, seed)


def check_planned(n: int, fraction: float, seed: int) -> None:
    """floor(δ·n) random clients vanish after masking (the hardest case) and the round
    still completes with the exact sum (complete graphs: always; sparse ones: except with
    probability 2^-20 by the rule)."""
    try:
        params = plan_secagg(
            range(n), length=4, bits=10, round_num=1, seed=seed, dropout_fraction=fraction
        )
    except ConfigError as exc:
        assert exc.field == "secagg.dropout_fraction"
        return
    rng = np.random.default_rng(seed)
    gone = rng.choice(n, size=math.floor(fraction * n), replace=False).tolist()
    inputs = {c: rng.integers(0, 1 << 10, 4, dtype=np.uint64) for c in params.clients}
    run = simulate_round(params, inputs, {"unmask": gone})  # masked, then vanished
    total = sum((inputs[c] for c in params.clients), np.zeros(4, np.uint64))
    assert np.array_equal(run.server.result(), total & np.uint64(1023))


@FAST
@given(
    st.integers(3, 1000),
    st.floats(0.0, 0.99),
    st.one_of(st.none(), st.integers(1, 1200)),
)
def test_plan_rule_holds_or_names_the_field(n: int, fraction: float, min_degree) -> None:
    try:
        p = plan_secagg(
            range(n),
            length=1,
            bits=8,
            round_num=0,
            seed=0,
            dropout_fraction=fraction,
            min_degree=min_degree,
        )
    except ConfigError as exc:
        if min_degree is not None and min_degree > n - 1:
            assert exc.field == "secagg.min_degree"
        else:
            assert exc.field == "secagg.dropout_fraction"
            k = n - 1
            assert math.floor(fraction * n) > k - (k // 2 + 1)  # the complete graph fails too
        return
    k, t = p.degree, p.threshold
    assert 2 * t > k  # a lying server never gets t shares of both secrets
    assert 1 <= t <= k <= n - 1 and (n * k) % 2 == 0
    assert k % 2 == 0 or k == n - 1  # odd sparse degrees let a lying server split the sum
    if min_degree is not None:
        assert k >= min_degree
    if k == n - 1:
        assert math.floor(fraction * n) <= k - t
    else:
        assert n > SMALL_COHORT
        assert n * _binom_cdf_below(k, 1 - fraction, t) <= 2.0**-CORRECTNESS_BITS
        assert n * fraction ** (k // 2) <= 2.0**-SECURITY_BITS


def test_plan_refuses_impossible_settings_naming_the_field() -> None:
    cases = {
        "secagg.dropout_fraction": dict(cohort=range(10), dropout_fraction=0.5),
        "secagg.clients": dict(cohort=[3, 4]),  # two clients learn each other's update
        "secagg.min_degree": dict(cohort=range(5), min_degree=5),
        "secagg.bits": dict(cohort=range(5), bits=0),
        "secagg.length": dict(cohort=range(5), length=0),
    }
    for field, kw in cases.items():
        args = dict(length=3, bits=8, round_num=0, seed=0) | kw
        with pytest.raises(ConfigError, match=field) as info:
            plan_secagg(**args)  # type: ignore[arg-type]
        assert info.value.field == field
    with pytest.raises(ConfigError, match=r"secagg\.dropout_fraction"):
        plan_secagg(range(5), length=1, bits=8, round_num=0, seed=0, dropout_fraction=1.0)
    with pytest.raises(ConfigError, match="twice"):
        plan_secagg([1, 1, 2], length=1, bits=8, round_num=0, seed=0)


def test_plan_degree_grows_like_log_n() -> None:
    ks = {
        n: plan_secagg(range(n), length=1, bits=8, round_num=0, seed=0, dropout_fraction=0.1).degree
        for n in (100, 1000)
    }
    assert ks[100] < 99 and ks[1000] < 2 * ks[100]
    # n = 3..1000 all plan at the default tolerance
    for n in (3, 4, 11, 57, 500, 1000):
        plan_secagg(range(n), length=1, bits=8, round_num=0, seed=0)


@settings(max_examples=100, deadline=None)
@given(st.integers(3, 120), st.integers(1, 119), st.integers(0, 2**64 - 1))
def test_harary_graph_is_symmetric_regular_connected_and_seeded(n, k, seed) -> None:
    k = min(k, n - 1)
    if k % 2 and n % 2:
        k -= 1
    if k < 1:
        return
    clients = tuple(range(0, 3 * n, 3))
    g = harary_neighbours(clients, k, seed)
    assert set(g) == set(clients)
    for c, nbrs in g.items():
        assert len(nbrs) == k and c not in nbrs and list(nbrs) == sorted(nbrs)
        assert all(c in g[j] for j in nbrs)
    seen, todo = {clients[0]}, [clients[0]]
    while todo:
        for j in g[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    assert len(seen) == n or k == 1  # H(k, n) is k-connected; k = 1 is a matching
    assert harary_neighbours(clients, k, seed) == g
    if 2 < k < n - 2:
        assert harary_neighbours(clients, k, (seed + 1) % 2**64) != g


# -- integers ------------------------------------------------------------------


@FAST
@given(st.integers(1, MAX_BITS), st.integers(0, 3000), st.integers(0, 2**32))
def test_pack_round_trips_in_exactly_ceil_mb_over_8_bytes(bits: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 1 << bits, size=m, dtype=np.uint64, endpoint=False)
    data = pack(v, bits)
    assert len(data) == (m * bits + 7) // 8
    assert np.array_equal(unpack(data, bits, m), v)
    if (m * bits) % 8:
        corrupt = data[:-1] + bytes([data[-1] | 0x80])
        with pytest.raises(CodecError, match="padding"):
            unpack(corrupt, bits, m)
    with pytest.raises(CodecError):
        unpack(data + b"\0", bits, m)


@FAST
@given(st.integers(1, 10_000), st.integers(0, 2**40))
def test_sum_bits_never_wraps_and_is_minimal(n: int, max_abs: int) -> None:
    b = sum_bits(n, max_abs)
    for total in (n * max_abs, -n * max_abs):
        if b <= MAX_BITS:
            field = to_field(np.array([total]), b)
            assert int(from_field(field, b)[0]) == total
    if b > 1:
        assert n * max_abs > 2 ** (b - 2) - 1  # b - 1 bits would not do


@FAST
@given(st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=50), st.integers(47, MAX_BITS))
def test_field_sum_of_signed_values_is_exact(values, bits) -> None:
    field = to_field(np.array(values, np.int64), bits)
    total = int(np.sum(field, dtype=np.uint64) & np.uint64((1 << bits) - 1))
    assert int(from_field(np.array([total], np.uint64), bits)[0]) == sum(values)


def test_quantize_is_unbiased_on_the_grid_and_counts_clipping() -> None:
    rng = np.random.default_rng(0)
    x = np.array([-2.0, -0.73, -0.1, 0.0, 0.05, 0.333, 0.99, 1.5])
    clip, levels, draws = 1.0, 7, 4000
    acc = np.zeros_like(x)
    for _ in range(draws):
        q, clipped = quantize(x, clip=clip, levels=levels, rng=rng)
        assert q.dtype == np.int64 and np.all(np.abs(q) <= levels)
        assert clipped == 2 / 8
        acc += dequantize(q, clip=clip, levels=levels)
    mean = acc / draws
    target = np.clip(x, -clip, clip)
    # each rounding has variance at most step**2 / 4
    tolerance = 5 * (clip / levels) / 2 / np.sqrt(draws)
    assert np.all(np.abs(mean - target) <= tolerance), (mean, target)
    on_grid = target * levels / clip
    exact = np.isclose(on_grid, np.round(on_grid))
    q, _ = quantize(x, clip=clip, levels=levels, rng=rng)
    assert np.array_equal(q[exact], np.round(on_grid[exact]).astype(np.int64))


@FAST
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=100),
    st.floats(0.01, 10),
    st.integers(1, 1000),
)
def test_quantize_stays_within_one_step(values, clip, levels) -> None:
    x = np.array(values)
    q, clipped = quantize(x, clip=clip, levels=levels, rng=np.random.default_rng(1))
    back = dequantize(q, clip=clip, levels=levels)
    assert np.all(np.abs(back - np.clip(x, -clip, clip)) <= clip / levels * (1 + 1e-9))
    assert clipped == np.mean(np.abs(x) > clip)


def test_quantize_rejects_bad_settings() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match=r"secagg\.clip"):
        quantize(np.zeros(3), clip=0.0, levels=3, rng=rng)
    with pytest.raises(ConfigError, match=r"secagg\.levels"):
        quantize(np.zeros(3), clip=1.0, levels=0, rng=rng)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), clip=1.0, levels=3, rng=rng)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(0, 20), st.binary(min_size=16, max_size=16), st.randoms())
def test_cached_shamir_combine_matches_pycryptodome(t: int, extra: int, secret, random) -> None:
    from Crypto.Protocol.SecretSharing import Shamir

    from fedpeft.privacy.secagg.crypto import combine_shares, split_secret

    k = t + extra
    shares = list(enumerate(split_secret(secret, t, k), start=1))
    chosen = sorted(random.sample(shares, t))
    assert combine_shares(chosen) == secret == Shamir.combine(chosen, False)
    if t > 1:  # t - 1 shares interpolate to something else (with overwhelming probability)
        assert combine_shares(chosen[:-1]) != secret
