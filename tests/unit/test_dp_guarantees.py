"""Every completed round carries at least the noise the ledger records, and the accounting
matches the randomness (issue 26). Each test writes the adversary or the fault in and
names, in its docstring, the break it catches:

* the decoded sum's noise has the variance the ledger's σ says (zeroed sampler: fails);
* the ledger holds a distributed round before the unmask stage, so a crash after the
  decode never under-counts;
* the budget is checked before round 1 and before the first round after a resume;
* a noisy sum that wraps mod 2^bits fails the round; weight digits never truncate;
* a coordinator that lies about dropouts never obtains a sum over fewer than the
  parameters' floor (even degrees; the odd-degree split is reproduced);
* fewer survivors than distributed DP's n_min fail the round;
* central DP draws cohorts from OS entropy and says so; seeded runs say so too;
* SecAgg refuses a cohort of two.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import NumpyClientApp, Spy
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.privacy.ledger import PrivacyLedger
from fedpeft.privacy.secagg import SecAggParams, harary_neighbours, plan_secagg, survivor_floor
from fedpeft.privacy.secagg.client import unmask_refusal
from fedpeft.privacy.secagg.encoding import to_field
from fedpeft.privacy.secagg.updates import SecureEncoding, decode_secure_sum, encode_secure

# ---- a DP round engine over NumpyClientApp ------------------------------------------


def dp_cfg(tmp_path: Path, **settings: Any) -> JobConfig:
    base: dict[str, Any] = {
        "output": str(tmp_path / "run"),
        "federation.clients": 40,
        "federation.clients_per_round": 8,
        "federation.rounds": 1,
        "dp.delta": 1e-5,
        "secagg.enabled": True,
        "secagg.tolerated_dropout": 0.25,
    }
    base.update(settings)
    return JobConfig().replace(base)


def dp_engine(
    cfg: JobConfig,
    app: NumpyClientApp,
    *,
    resume: bool = False,
    dropout: tuple[float, str] | None = None,
) -> tuple[Any, Spy]:
    """A RoundEngine with the job's own collection and privacy mechanism
    (``privacy_settings``), in process; ``resume`` continues the run folder's checkpoint."""
    from fedpeft.aggregation import make_strategy
    from fedpeft.coordinator.engine import RoundEngine
    from fedpeft.coordinator.job import privacy_settings
    from fedpeft.coordinator.sampling import ClientSampler
    from fedpeft.protocol.codecs import downlink_codec, uplink_codec
    from fedpeft.rundir import RunDir
    from fedpeft.simulation.dropout import DropoutBackend
    from fedpeft.simulation.inprocess import InProcessBackend

    backend: Any = InProcessBackend(lambda _name: app)
    if dropout is not None:
        backend = DropoutBackend(backend, dropout[0], dropout[1], seed=0)
    spy = Spy(backend)
    fed = cfg.federation
    run = RunDir(cfg.output)
    if not resume:
        run.create(cfg, {"task": "classification", "label_names": ["a", "b"]})
    engine = RoundEngine(
        backend=spy,
        strategy=make_strategy(fed),
        sampler=ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, 0),
        shards=[np.arange(3) for _ in range(fed.clients)],
        uplink=uplink_codec(cfg.codec),
        downlink=downlink_codec(cfg.codec),
        run=run,
        rounds=fed.rounds,
        seed=0,
        **privacy_settings(cfg, run.path, population=fed.clients, shard_sizes=[3] * fed.clients),
    )
    if resume:
        engine.resume()
    else:
        engine.start_fresh()
    spy.tasks.clear()
    return engine, spy


def ledger_rounds(cfg: JobConfig) -> list[Any]:
    ledger = PrivacyLedger(Path(cfg.output) / "privacy.db")
    try:
        return ledger.rounds()
    finally:
        ledger.close()


# ---- the noise in the decoded sum ----------------------------------------------------


def test_decoded_sum_carries_the_noise_the_ledger_records(tmp_path: Path) -> None:
    """Clients whose updates are zero: what the coordinator decodes is the clients' noise
    alone. Its variance (integer units) must be survivors × σ², σ being the ledger's
    ``local_sigma``. Mutations caught: the client's discrete Gaussian sampler replaced by
    zeros (variance 0), or σ halved on the client (variance / 4)."""
    cfg = dp_cfg(tmp_path, **{"dp.noise_multiplier": 1.0, "federation.rounds": 3})
    app = NumpyClientApp(cfg, scale=0.0)
    app.SHAPES = {"w": (1500,)}
    engine, _ = dp_engine(cfg, app)
    noise: list[np.ndarray] = []
    expected: list[float] = []
    for round_num in (1, 2, 3):
        before = engine.state.params["w"].astype(np.float64)
        record = engine.run_round(round_num)
        assert "round_failed" not in record
        event = ledger_rounds(cfg)[-1]
        survivors = record["secagg_survivors"]
        mean = engine.state.params["w"].astype(np.float64) - before
        # the mean is Σ noise · (clip / levels) / survivors
        noise.append(mean * survivors * record["secagg_levels"] / cfg.dp.clip)
        expected.append(survivors * event.local_sigma**2)
        assert event.noisy_clients <= survivors  # at least the accounted noise
    engine.privacy.close()
    ratio = [float(np.var(n)) / e for n, e in zip(noise, expected, strict=True)]
    # 1500 coordinates: the variance estimate's relative sd is sqrt(2/1500) ≈ 3.7%
    assert all(0.85 < r < 1.15 for r in ratio), ratio


# ---- the ledger before the unmask stage; a crash after the decode ------------------


class _Crash(BaseException):
    """A process dying at a chosen point (not an error the engine handles)."""


def test_ledger_records_the_round_before_the_unmask_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round's event is durable (read through a second connection) when the unmask
    stage starts, and a crash right after the sum is decoded leaves it recorded; the
    re-run round is counted again. Mutation caught: recording in ``record_round`` after
    the aggregate (the pre-fix order) — the ledger is empty at unmask and after the crash."""
    import fedpeft.coordinator.secure as secure

    cfg = dp_cfg(tmp_path, **{"dp.noise_multiplier": 1.0, "federation.rounds": 1})
    app = NumpyClientApp(cfg)
    engine, spy = dp_engine(cfg, app)
    seen_at_unmask: list[int] = []
    inner_run = spy.run

    def run(tasks: Any, on_result: Any = None) -> Any:
        if tasks and tasks[0].kind == "secagg_unmask":
            seen_at_unmask.append(len(ledger_rounds(cfg)))
        return inner_run(tasks, on_result)

    spy.run = run  # type: ignore[method-assign]
    real_decode = secure.decode_secure_sum

    def decode_then_die(*args: Any, **kwargs: Any) -> Any:
        real_decode(*args, **kwargs)
        raise _Crash

    monkeypatch.setattr(secure, "decode_secure_sum", decode_then_die)
    with pytest.raises(_Crash):
        engine.run()
    engine.privacy.close()
    assert seen_at_unmask == [1]
    assert len(ledger_rounds(cfg)) == 1  # the crashed round counts
    monkeypatch.setattr(secure, "decode_secure_sum", real_decode)
    # no checkpoint of round 1 was written: the resumed run re-runs it and counts it again
    engine, _ = dp_engine(cfg, app, resume=True)
    assert engine.state.round == 0
    engine.run()
    engine.privacy.close()
    assert len(ledger_rounds(cfg)) == 2
    line = engine.run_dir.read_metrics()[-1]
    from fedpeft.privacy.accountant import epsilon

    assert line["epsilon"] == pytest.approx(epsilon(ledger_rounds(cfg), 1e-5))


# ---- the budget before round 1 and after a resume -----------------------------------


def test_budget_stops_a_run_before_round_one(tmp_path: Path) -> None:
    """The issue's case: target ε 1 with z 0.3 spends ε ≈ 50 in one round, so not even
    round 1 may run — no client is contacted, nothing is recorded. Mutation caught:
    ``commit_round`` without its budget check (round 1 ran and recorded ε 52.6)."""
    cfg = dp_cfg(tmp_path, **{"dp.epsilon": 1.0, "dp.noise_multiplier": 0.3})
    engine, spy = dp_engine(cfg, NumpyClientApp(cfg))
    records = engine.run()
    engine.privacy.close()
    assert records == [] and spy.tasks == []
    assert engine.stopped is not None and "before round 1" in engine.stopped
    assert ledger_rounds(cfg) == []


def test_budget_is_checked_on_the_first_round_after_a_resume(tmp_path: Path) -> None:
    """A target that affords one round at z 1: the first run does one round; the resumed
    run (a fresh controller that has planned nothing yet) must stop before round 2
    without contacting a client. Mutation caught: as above — the resumed run's round 2
    ran over budget."""
    from fedpeft.privacy.accountant import epsilon

    cfg = dp_cfg(tmp_path, **{"dp.noise_multiplier": 1.0, "dp.epsilon": 1000.0})
    app = NumpyClientApp(cfg)
    engine, _ = dp_engine(cfg, app)
    engine.run()
    engine.privacy.close()
    one = ledger_rounds(cfg)
    spent_one = epsilon(one, 1e-5)
    between = (spent_one + epsilon(one * 2, 1e-5)) / 2
    cfg = cfg.replace({"dp.epsilon": between, "federation.rounds": 3})
    engine, spy = dp_engine(cfg, app, resume=True)
    records = engine.run()
    engine.privacy.close()
    assert records == [] and spy.tasks == []
    assert engine.stopped is not None and "before round 2" in engine.stopped
    assert len(ledger_rounds(cfg)) == 1


# ---- n_min: fewer survivors than the noise was sized for ----------------------------


def test_a_round_below_n_min_fails_though_secagg_could_complete(tmp_path: Path) -> None:
    """Tolerance 0: each client's noise is sized for all 8 clients (n_min 8). One client
    vanishing before masking leaves 7 — enough for the protocol (t + 1 = 5), not for the
    noise: the round fails and the adapter stays. Mutation caught: ``min_survivors``
    left out of the round's SecAgg parameters (the round completed with 7)."""
    cfg = dp_cfg(tmp_path, **{"dp.noise_multiplier": 1.0, "secagg.tolerated_dropout": 0.0})
    engine, _ = dp_engine(cfg, NumpyClientApp(cfg), dropout=(0.125, "before_masking"))
    before = {k: v.copy() for k, v in engine.state.params.items()}
    record = engine.run_round(1)
    engine.privacy.close()
    assert "round_failed" in record and "8 survivors" in record["round_failed"]
    for name, value in engine.state.params.items():
        np.testing.assert_array_equal(value, before[name])
    assert len(ledger_rounds(cfg)) == 1  # the noised inputs were sent: counted anyway


# ---- the field: wraps are detected, weights never truncated --------------------------


def _encoding(levels: int, bits: int, sigma: float, dim: int, **kw: Any) -> SecureEncoding:
    return SecureEncoding(
        names=("w",),
        sizes=(dim,),
        density=1.0,
        subset_seed=0,
        levels=levels,
        clip_range=1.0,
        weight_cap=kw.get("weight_cap", 1),
        bits=bits,
        uniform_weights=kw.get("uniform", True),
        with_sq_norm=False,
        noise_sigma=sigma,
    )


def _secure_sum(enc: SecureEncoding, updates: list[np.ndarray], examples: int = 1) -> Any:
    rng = np.random.default_rng(0)
    total = np.zeros(enc.length, np.uint64)
    for u in updates:
        vector, _, _ = encode_secure({"w": u}, enc, examples, rng)
        total = (total + vector) & np.uint64((1 << enc.bits) - 1)
    return decode_secure_sum(total, enc, {"w": (enc.dim,)})


def test_a_noisy_sum_that_wraps_fails_instead_of_decoding() -> None:
    """Levels sized for the values alone (the pre-fix headroom), noise far larger: the sum
    wraps and the decoder refuses it. Mutation caught: ``check_no_wrap`` removed (the
    wrapped sum decoded silently into a wrong mean)."""
    from fedpeft.coordinator.secure import plan_levels

    cohort, bits = 10, 16
    enc = _encoding(plan_levels(bits, cohort), bits, sigma=2000.0, dim=3000)
    updates = [np.full(3000, 0.9) for _ in range(cohort)]
    with pytest.raises(ProtocolError, match="wrap"):
        _secure_sum(enc, updates)
    # a field with the planned headroom, and one client whose noise pushed a coordinate
    # past the field's edge: that wrapped coordinate is caught
    from fedpeft.coordinator.secure import noise_fits

    sigma, levels = 3.0, 100
    enc = _encoding(levels, bits, sigma=sigma, dim=4)
    assert noise_fits(bits, cohort, levels, sigma)
    half = 2 ** (bits - 1)
    sums = np.array([0, 5, -7, half + 10])  # the last coordinate wrapped to -half + 10
    field = to_field(np.concatenate([sums, [cohort]]).astype(np.int64), bits)
    with pytest.raises(ProtocolError, match="wrapped mod 2\\^16: 1 coordinate"):
        decode_secure_sum(field, enc, {"w": (4,)})
    field = to_field(np.concatenate([sums[:3], [0], [cohort]]).astype(np.int64), bits)
    decode_secure_sum(field, enc, {"w": (4,)})  # an honest sum decodes


def test_the_planned_field_holds_the_real_noise_of_the_issue_case(tmp_path: Path) -> None:
    """The issue's case (cohort 100, 30,000 coordinates, auto bits 17, ε 1 over 50 rounds)
    wrapped 4 of 30,000 coordinates silently: 17 bits cannot hold that noise, and the plan
    now says so (``secagg.bits``); with 24 bits the plan leaves room for √cohort·σ and the
    sum of 100 clients' values and noise decodes. Mutation caught: the headroom sized from
    z·L (pre-fix) — 17 bits are accepted and the plan's noise does not fit."""
    from fedpeft.coordinator.dp import make_dp_controller
    from fedpeft.coordinator.secure import auto_bits, noise_fits
    from fedpeft.privacy.discrete_gaussian import sample_discrete_gaussian

    cfg = dp_cfg(
        tmp_path,
        **{
            "federation.clients": 1000,
            "federation.clients_per_round": 100,
            "federation.rounds": 50,
            "dp.epsilon": 1.0,
            "secagg.tolerated_dropout": 0.0,
        },
    )
    ctl = make_dp_controller(cfg, tmp_path, distributed=True, population=1000)
    assert auto_bits(True, 100) == 17
    with pytest.raises(ConfigError, match=r"secagg\.bits"):  # refused, not wrapped
        ctl.plan_distributed(bits=17, cohort=100, dim=30000)
    bits = 24
    plan = ctl.plan_distributed(bits=bits, cohort=100, dim=30000)
    assert noise_fits(bits, 100, plan.levels, plan.sigma)
    enc = _encoding(plan.levels, bits, plan.sigma, 30000)
    rng = np.random.default_rng(1)
    values = rng.integers(-plan.levels, plan.levels + 1, size=(100, 30000)).sum(axis=0)
    noise = sum(sample_discrete_gaussian(plan.sigma, (30000,), rng) for _ in range(100))
    field = to_field(np.concatenate([values + noise, [100]]).astype(np.int64), bits)
    decoded = decode_secure_sum(field, enc, {"w": (30000,)})
    assert decoded.total_weight == 100


def test_weights_never_truncate_when_levels_squared_is_below_the_cap() -> None:
    """10 clients of weight 1000 with 31 levels (31² = 961 ≤ 1000): the pre-fix two
    digits decoded Σw as 1360; the weight now takes the digits it needs. Mutation
    caught: a fixed two weight digits."""
    enc = _encoding(31, 24, 0.0, 8, weight_cap=1000, uniform=False)
    out = _secure_sum(enc, [np.full(8, 0.1)] * 10, examples=1000)
    assert out.total_weight == 10_000
    np.testing.assert_allclose(out.value_sum, 1.0, atol=0.1)


# ---- a coordinator that lies about who dropped ----------------------------------------


def smallest_sum(params: Any, graph: dict[int, tuple[int, ...]], declared: set[int]) -> int | None:
    """The fewest clients whose exact sum a coordinator obtains by declaring ``declared``
    the survivors (everyone else dropped) to every client, or None if it obtains none.

    Only clients the real client check (:func:`unmask_refusal`) lets answer reveal
    shares; a self-mask seed needs t shares from answering neighbours, so does a dropped
    client's mask key. A part of the survivors can be summed only if it is a connected
    component of the survivors' graph (pairwise masks between two survivors cancel only
    together), every member's self mask is rebuilt and every dropped neighbour's key is."""
    t = params.threshold
    nbrs = {c: set(v) for c, v in graph.items()}
    answering = {
        c
        for c in declared
        if unmask_refusal(
            params,
            c,
            nbrs[c],
            set(),
            sorted(nbrs[c] & declared),
            sorted(nbrs[c] - declared),
            sorted(declared),
        )
        is None
    }
    self_known = {c for c in declared if len(nbrs[c] & answering) >= t}
    key_known = {c for c in nbrs if c not in declared and len(nbrs[c] & answering) >= t}
    best = None
    left = set(declared)
    while left:
        stack, part = [left.pop()], set()
        while stack:
            c = stack.pop()
            part.add(c)
            for j in nbrs[c] & left:
                left.discard(j)
                stack.append(j)
        outside = set().union(*(nbrs[c] for c in part)) - declared
        if part <= self_known and outside <= key_known:
            best = len(part) if best is None else min(best, len(part))
    return best


def ring_of(params: Any) -> list[int]:
    order = np.random.default_rng(params.graph_seed).permutation(len(params.clients))
    return [params.clients[i] for i in order]


def attacks(params: Any, rng: np.random.Generator, count: int) -> list[set[int]]:
    """Declared-dropped sets: gaps of k/2 and k/2 + 1 ring-consecutive clients at two
    places, the antipodal four-gap split (the issue's 32 + 36 attack), and random sets."""
    ring, n, k = ring_of(params), len(params.clients), params.degree
    out: list[set[int]] = []
    for gap in (k // 2, k // 2 + 1):
        for _ in range(count):
            a, b = (int(x) for x in rng.integers(0, n, 2))
            out.append(
                {ring[(a + i) % n] for i in range(gap)} | {ring[(b + i) % n] for i in range(gap)}
            )
            m = int(rng.integers(gap + 1, max(gap + 2, n // 2 - gap)))
            starts = (a, a + m, a + n // 2, a + n // 2 + m)
            out.append({ring[(s + i) % n] for s in starts for i in range(gap)})
    for _ in range(count):
        size = int(rng.integers(1, max(2, n // 2)))
        out.append({int(x) for x in rng.choice(params.clients, size=size, replace=False)})
    return out


def check_no_small_sum(
    n: int, k: int, dropout: float, rng: np.random.Generator, count: int
) -> None:
    """Every attack against (n, k), with distributed DP's floor n_min and without one
    (plain SecAgg: the protocol's own t + 1)."""
    clients = tuple(range(n))
    t = k // 2 + 1
    seed = int(rng.integers(2**62))
    for floor in (survivor_floor(n, dropout), 0):
        try:
            params = SecAggParams(
                round=1, clients=clients, threshold=t, degree=k, bits=16, length=1,
                graph_seed=seed, min_survivors=floor,
            )  # fmt: skip
        except ConfigError as exc:
            assert k % 2 == 1 and k < n - 1, f"n={n} k={k} refused: {exc}"
            return
        graph = harary_neighbours(params.clients, k, params.graph_seed)
        for dropped in attacks(params, rng, count):
            declared = set(clients) - dropped
            got = smallest_sum(params, graph, declared)
            assert got is None or got >= params.survivor_floor, (n, k, floor, len(dropped), got)
            # and the survivors' sum is never split at all
            assert got is None or got == len(declared), (n, k, floor, len(dropped), got)


def _degrees(n: int) -> list[int]:
    plan = [
        plan_secagg(range(n), length=1, bits=16, round_num=0, seed=0, dropout_fraction=d).degree
        for d in (0.1, 0.2, 0.3)
    ]
    ks = {k + e for k in plan for e in (-1, 0, 1)}
    return sorted(k for k in ks if 2 <= k <= n - 1)


@pytest.mark.parametrize("n", [16, 40, 128, 500])
def test_a_lying_coordinator_never_sums_fewer_than_the_floor(n: int) -> None:
    """For the planner's degrees at tolerance 0.1 / 0.2 / 0.3 and one either side (odd and
    even), every degree a client accepts resists every attack: no sum over fewer than the
    floor, no split of the survivors. Mutation caught: accepting an odd degree below the
    complete graph in ``SecAggParams`` (the antipodal split below then passes the check)."""
    rng = np.random.default_rng(n)
    for k in _degrees(n):
        check_no_small_sum(n, k, 0.1, rng, count=6)


@pytest.mark.slow
@pytest.mark.parametrize("n", [*range(16, 200, 7), 256, 333, 512, 777, 1000])
def test_a_lying_coordinator_never_sums_fewer_than_the_floor_sweep(n: int) -> None:
    rng = np.random.default_rng(n + 1)
    for k in _degrees(n):
        check_no_small_sum(n, k, 0.3, rng, count=20)


def test_the_odd_degree_split_of_the_issue_is_real() -> None:
    """n = 128, k = 31 (t = 16), the four-gap attack with 60 declared dropped: the
    coordinator would rebuild sums of 32- and 36-client groups — which is why odd degrees
    are refused. The analysis here is what the test above relies on to find splits."""
    n, k = 128, 31
    params = types.SimpleNamespace(
        clients=tuple(range(n)), threshold=k // 2 + 1, degree=k, graph_seed=5, survivor_floor=17
    )
    graph = harary_neighbours(params.clients, k, params.graph_seed)
    ring = ring_of(params)
    starts = (0, 31, 64, 95)  # gaps of 15; arcs of 16 and 18, each with its antipode
    dropped = {ring[(s + i) % n] for s in starts for i in range(15)}
    assert len(dropped) == 60
    got = smallest_sum(params, graph, set(params.clients) - dropped)
    assert got == 32
    with pytest.raises(ConfigError, match="odd"):
        SecAggParams(
            round=1, clients=params.clients, threshold=16, degree=31, bits=8, length=1,
            graph_seed=5,
        )  # fmt: skip


def test_planned_sparse_degrees_are_even() -> None:
    plan = [
        plan_secagg(range(n), length=1, bits=16, round_num=0, seed=0, dropout_fraction=d)
        for n in (128, 500, 1000)
        for d in (0.1, 0.2, 0.3)
    ]
    assert all(p.degree % 2 == 0 or p.degree == len(p.clients) - 1 for p in plan)


# ---- who draws the cohorts -----------------------------------------------------------


def test_central_dp_draws_cohorts_from_os_entropy_and_says_so(tmp_path: Path) -> None:
    """Central DP claims amplification by sampling: the run's sampler must not be a
    function of train.seed. Two engines with the same seed draw different cohorts, and
    each metrics line says ``os_entropy`` / amplification. Mutation caught:
    ``CentralDp.cohort_sampler`` returning the seeded sampler."""
    cfg = dp_cfg(
        tmp_path,
        **{"secagg.enabled": False, "dp.epsilon": 8.0, "federation.clients": 200,
           "federation.clients_per_round": 20},
    )  # fmt: skip
    engine, _ = dp_engine(cfg, NumpyClientApp(cfg))
    engine.run()
    engine.privacy.close()
    line = engine.run_dir.read_metrics()[-1]
    assert line["dp_cohort_sampling"] == "os_entropy" and line["dp_amplification"] is True
    assert not engine.sampler.seeded
    assert engine.sampler.sample(1) != engine.sampler.sample(1)
    # the exact clipped fraction and norms are not released
    assert not {"dp_clipped_fraction", "update_norm", "clip_factor", "dp_clipped"} & set(line)


def test_distributed_dp_keeps_the_seeded_cohort_and_says_unamplified(tmp_path: Path) -> None:
    cfg = dp_cfg(tmp_path, **{"dp.noise_multiplier": 1.0})
    engine, _ = dp_engine(cfg, NumpyClientApp(cfg))
    engine.run()
    engine.privacy.close()
    line = engine.run_dir.read_metrics()[-1]
    assert line["dp_cohort_sampling"] == "seeded" and line["dp_amplification"] is False
    assert ledger_rounds(cfg)[-1].mechanism == "discrete_gaussian"


# ---- the smallest cohort ---------------------------------------------------------------


def test_secagg_refuses_a_cohort_of_two(tmp_path: Path) -> None:
    """Mutation caught: ``MIN_COHORT`` back to 2 (two clients each learn the other's
    update from the sum)."""
    from fedpeft.coordinator.job import check_secagg_plan

    cfg = dp_cfg(tmp_path, **{"federation.clients_per_round": 2, "secagg.tolerated_dropout": 0.0})
    with pytest.raises(ConfigError, match=r"federation\.clients_per_round.*at least 3"):
        check_secagg_plan(cfg)
    check_secagg_plan(cfg.replace({"federation.clients_per_round": 3}))
    assert math.isfinite(survivor_floor(3, 0.0))
