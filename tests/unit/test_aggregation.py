"""FedAvg is the example-weighted mean; FedExP, FedAdam and FedYogi match hand-computed
steps; FedMedian, FedTrimmedAvg and Krum ignore one outlier; the per-update bounds clip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.aggregation import (
    DEPLOYMENT_MAX_EXAMPLES,
    STRATEGIES,
    AggregateStats,
    ClientUpdate,
    FedAdam,
    FedAvg,
    FedExP,
    FedYogi,
    Krum,
    UpdateBounds,
    make_strategy,
)
from fedpeft.config import FederationConfig
from fedpeft.errors import ConfigError


def _updates(values: list[tuple[int, float]]) -> list[ClientUpdate]:
    return [
        ClientUpdate(i, n, {"w": np.full((2, 3), v, np.float32)}) for i, (n, v) in enumerate(values)
    ]


def test_fedavg_is_weighted_mean() -> None:
    current = {"w": np.ones((2, 3), np.float32)}
    new = FedAvg().aggregate_train(1, current, _updates([(1, 1.0), (3, 5.0)]))
    np.testing.assert_allclose(new["w"], 1.0 + (1 * 1.0 + 3 * 5.0) / 4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 100), st.floats(-10, 10)), min_size=1, max_size=8))
def test_fedavg_matches_numpy_average(values: list[tuple[int, float]]) -> None:
    current = {"w": np.zeros((2, 3), np.float32)}
    new = FedAvg(server_lr=0.5).aggregate_train(1, current, _updates(values))
    expected = 0.5 * np.average([v for _, v in values], weights=[n for n, _ in values])
    np.testing.assert_allclose(new["w"], expected, rtol=1e-5, atol=1e-6)


def test_fedavg_order_independent() -> None:
    ups = _updates([(2, 0.1), (5, -0.3), (1, 0.7)])
    current = {"w": np.zeros((2, 3), np.float32)}
    a = FedAvg().aggregate_train(1, current, ups)
    b = FedAvg().aggregate_train(1, current, list(reversed(ups)))
    assert np.array_equal(a["w"], b["w"])


def test_fedavgm_hand_computed_steps_and_state_round_trip() -> None:
    eta, beta = 0.5, 0.9
    opt = FedAvg(server_lr=eta, server_momentum=beta)
    x0 = {"w": np.zeros((2, 3), np.float32)}
    x1 = opt.aggregate_train(1, x0, _updates([(1, 1.0), (3, 5.0)]))
    np.testing.assert_allclose(x1["w"], eta * 4.0)  # v1 = Δ̄1 = 4
    clone = FedAvg(server_lr=eta, server_momentum=beta)
    clone.load_state_dict(opt.state_dict())
    x2 = opt.aggregate_train(2, x1, _updates([(1, -2.0)]))
    np.testing.assert_allclose(x2["w"], eta * 4.0 + eta * (beta * 4.0 - 2.0), rtol=1e-6)
    assert np.array_equal(clone.aggregate_train(2, x1, _updates([(1, -2.0)]))["w"], x2["w"])
    # β = 0 keeps no state and is plain FedAvg
    assert FedAvg().state_dict() == {}
    with pytest.raises(ConfigError, match=r"federation\.server_momentum"):
        FedAvg(server_momentum=1.0)
    with pytest.raises(ConfigError, match=r"federation\.server_momentum"):
        FederationConfig(server_momentum=-0.1)
    assert make_strategy(FederationConfig(server_momentum=0.9)).server_momentum == 0.9  # type: ignore[attr-defined]


def test_fedadam_hand_computed_step() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = FedAdam(server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    x = {"w": np.array([1.0, -2.0], np.float32)}
    ups = [
        ClientUpdate(0, 1, {"w": np.array([0.2, -0.4], np.float32)}),
        ClientUpdate(1, 3, {"w": np.array([0.6, 0.0], np.float32)}),
    ]
    g = np.array([(0.2 + 3 * 0.6) / 4, (-0.4 + 0) / 4])
    m = (1 - b1) * g
    v = b2 * tau**2 + (1 - b2) * g**2
    expected = x["w"] + eta * m / (np.sqrt(v) + tau)
    out = opt.aggregate_train(1, x, ups)
    np.testing.assert_allclose(out["w"], expected, rtol=1e-6)
    # second step uses the stored moments
    m2 = b1 * m + (1 - b1) * g
    v2 = b2 * v + (1 - b2) * g**2
    out2 = opt.aggregate_train(2, out, ups)
    np.testing.assert_allclose(out2["w"], out["w"] + eta * m2 / (np.sqrt(v2) + tau), rtol=1e-6)


def test_fedyogi_second_moment_and_state_round_trip() -> None:
    opt = FedYogi(server_lr=0.1, beta2=0.9, tau=1e-2)
    x = {"w": np.zeros(3, np.float32)}
    ups = [ClientUpdate(0, 1, {"w": np.array([1.0, -1.0, 0.0], np.float32)})]
    opt.aggregate_train(1, x, ups)
    g2 = np.array([1.0, 1.0, 0.0])
    v0 = np.full(3, 1e-4)
    np.testing.assert_allclose(opt.v["w"], v0 - 0.1 * g2 * np.sign(v0 - g2))
    clone = FedYogi(server_lr=0.1, beta2=0.9, tau=1e-2)
    clone.load_state_dict(opt.state_dict())
    a = opt.aggregate_train(2, x, ups)
    b = clone.aggregate_train(2, x, ups)
    assert np.array_equal(a["w"], b["w"])


def test_make_strategy_and_validation() -> None:
    assert isinstance(make_strategy(FederationConfig(strategy="fedadam")), FedAdam)
    with pytest.raises(ConfigError, match=r"federation\.server_lr"):
        FedAvg(server_lr=0)
    with pytest.raises(ConfigError, match=r"federation\.beta1"):
        FedAdam(beta1=1.0)


def test_fedexp_hand_computed_step() -> None:
    # three orthogonal unit updates, equal weights: Σ p_i‖Δ_i‖² = 1, Δ̄ = (1/3, 1/3, 1/3),
    # ‖Δ̄‖² = 1/3, so η_g = 1 / (2 (1/3 + ε))
    eps = 1e-3
    ups = [ClientUpdate(i, 7, {"w": np.eye(3, dtype=np.float32)[i]}) for i in range(3)]
    opt = FedExP(eps=eps)
    new = opt.aggregate_train(1, {"w": np.ones(3, np.float32)}, ups)
    step = 1 / (2 * (1 / 3 + eps))
    assert opt.train_metrics() == {"server_step": pytest.approx(step)}
    np.testing.assert_allclose(new["w"], 1 + step / 3, rtol=1e-6)
    # server_lr scales the extrapolated step
    scaled = FedExP(server_lr=0.5, eps=eps).aggregate_train(1, {"w": np.zeros(3, np.float32)}, ups)
    np.testing.assert_allclose(scaled["w"], 0.5 * step / 3, rtol=1e-6)


def test_fedexp_weighted_and_never_below_fedavg() -> None:
    # weights 1 and 3 on updates (2, 0) and (0, 2): Σ p‖Δ‖² = 4, Δ̄ = (0.5, 1.5), ‖Δ̄‖² = 2.5
    ups = [
        ClientUpdate(0, 1, {"w": np.array([2.0, 0.0], np.float32)}),
        ClientUpdate(1, 3, {"w": np.array([0.0, 2.0], np.float32)}),
    ]
    opt = FedExP(eps=0.5)
    new = opt.aggregate_train(1, {"w": np.zeros(2, np.float32)}, ups)
    assert opt.train_metrics()["server_step"] == 1.0  # 4 / (2·3) < 1: plain FedAvg
    np.testing.assert_allclose(new["w"], [0.5, 1.5])
    # clients that agree exactly: the ratio is 1/2, so FedExP is FedAvg
    same = _updates([(2, 0.3), (5, 0.3)])
    current = {"w": np.zeros((2, 3), np.float32)}
    assert np.array_equal(
        FedExP().aggregate_train(1, current, same)["w"],
        FedAvg().aggregate_train(1, current, same)["w"],
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 100), st.floats(-10, 10)), min_size=1, max_size=8),
    st.floats(1e-6, 1.0),
)
def test_fedexp_step_is_formula(values: list[tuple[int, float]], eps: float) -> None:
    ups = [
        ClientUpdate(i, n, {"w": np.array([v, -v / 2], np.float32)})
        for i, (n, v) in enumerate(values)
    ]
    opt = FedExP(eps=eps)
    opt.aggregate_train(1, {"w": np.zeros(2, np.float32)}, ups)
    vecs = np.array([[np.float32(v), np.float32(-v / 2)] for _, v in values], np.float64)
    p = np.array([n for n, _ in values], np.float64)
    p /= p.sum()
    mean = p @ vecs
    ratio = float(p @ (vecs**2).sum(1)) / (2 * (float(mean @ mean) + eps))
    assert opt.train_metrics()["server_step"] == pytest.approx(max(1.0, ratio), rel=1e-6)


def test_every_registered_strategy_is_configurable_and_built() -> None:
    assert list(STRATEGIES) == [
        "fedavg",
        "fedexp",
        "fedadam",
        "fedyogi",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
    ]
    for name, cls in STRATEGIES.items():
        strategy = make_strategy(FederationConfig(strategy=name))
        assert type(strategy) is cls and strategy.name == name


def test_strategies_declare_what_aggregation_needs() -> None:
    # FedExP's step reads the spread Σ p_i ‖Δ_i‖²; the others only the mean
    needs = {s: make_strategy(FederationConfig(strategy=s)).needs_sq_norm for s in STRATEGIES}
    assert needs == {
        "fedavg": False,
        "fedexp": True,
        "fedadam": False,
        "fedyogi": False,
        "fedmedian": False,
        "fedtrimmedavg": False,
        "krum": False,
    }
    assert make_strategy(FederationConfig(lora_aggregation="product")).needs_individual_updates
    assert not make_strategy(FederationConfig()).needs_individual_updates
    # the robust strategies read each update: refused under secure aggregation
    for name in ("fedmedian", "fedtrimmedavg", "krum"):
        assert make_strategy(FederationConfig(strategy=name)).needs_individual_updates


def test_a_registered_strategy_needs_no_edit_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    class HalfStep(FedAvg):
        name = "halfstep"

        @classmethod
        def from_config(cls, fed: FederationConfig) -> HalfStep:
            return cls(server_lr=fed.server_lr / 2)

    with pytest.raises(ConfigError, match=r"federation\.strategy"):
        FederationConfig(strategy="halfstep")
    monkeypatch.setitem(STRATEGIES, "halfstep", HalfStep)
    strategy = make_strategy(FederationConfig(strategy="halfstep", server_lr=0.5))
    assert isinstance(strategy, HalfStep) and strategy.server_lr == 0.25


def test_fedexp_config() -> None:
    opt = make_strategy(FederationConfig(strategy="fedexp", fedexp_eps=0.01, server_lr=2.0))
    assert isinstance(opt, FedExP) and opt.eps == 0.01 and opt.server_lr == 2.0
    assert opt.state_dict() == {}  # stateless between rounds: resume needs nothing
    with pytest.raises(ConfigError, match=r"federation\.fedexp_eps"):
        FederationConfig(strategy="fedexp", fedexp_eps=0.0)
    with pytest.raises(ConfigError, match=r"federation\.server_momentum"):
        make_strategy(FederationConfig(strategy="fedexp", server_momentum=0.9))
    with pytest.raises(ConfigError, match=r"federation\.strategy"):
        FederationConfig(strategy="fedexq")


# ---- robust strategies and the per-update bounds (issue 27) -----------------------------
def _vec_updates(rows: list[list[float]], examples: list[int] | None = None) -> list[ClientUpdate]:
    ns = examples or [1] * len(rows)
    return [
        ClientUpdate(i, n, {"w": np.array(r, np.float32)})
        for i, (r, n) in enumerate(zip(rows, ns, strict=True))
    ]


ROBUST_CASES = [
    # (strategy, settings, rows, expected step): one outlier of five, claiming 1e9 examples
    ("fedmedian", {}, [[1, -1], [2, -2], [3, -3], [4, -4], [1e6, 1e6]], [3.0, -2.0]),
    (
        "fedtrimmedavg",
        {"trim_fraction": 0.2},
        [[1, 0], [2, 0], [3, 0], [4, 0], [1e6, 0]],
        [3.0, 0.0],
    ),
    (
        "fedtrimmedavg",
        {"trim_fraction": 0.0},
        [[1, 0], [2, 0], [3, 0], [4, 0], [10, 0]],
        [4.0, 0.0],
    ),
    (
        "krum",
        {"krum_byzantine": 1},
        [[1, 1], [1.1, 1], [0.9, 1], [1, 0.9], [1e6, -1e6]],
        [1.0, 1.0],
    ),
]


@pytest.mark.parametrize(("name", "settings", "rows", "expected"), ROBUST_CASES)
def test_robust_strategies_ignore_one_outlier_and_its_weight(
    name: str, settings: dict[str, float], rows: list[list[float]], expected: list[float]
) -> None:
    strategy = make_strategy(
        FederationConfig(strategy=name, server_lr=0.5, update_norm_multiple=0.0, **settings)
    )
    current = {"w": np.array([10.0, 10.0], np.float32)}
    new = strategy.aggregate_train(1, current, _vec_updates(rows, [1, 1, 1, 1, 10**9]))
    np.testing.assert_allclose(new["w"], 10.0 + 0.5 * np.array(expected), rtol=1e-6)


def test_krum_keeps_one_clients_factors_together() -> None:
    strategy = Krum(byzantine=1)
    ups = _vec_updates([[1, 1], [1.1, 1], [0.9, 1], [1, 0.9], [50, -50]])
    new = strategy.aggregate_train(1, {"w": np.zeros(2, np.float32)}, ups)
    chosen = int(strategy.train_metrics()["krum_chosen"])
    assert chosen != 4 and np.array_equal(new["w"], ups[chosen].delta["w"])


def test_robust_strategies_need_individual_updates() -> None:
    from fedpeft.coordinator.secure import SecureRound

    secure = SecureRound(
        tolerated_dropout=0.34, bits=40, clip_range=0.1, weight_cap=64, density=1.0, seed=0
    )
    stats = AggregateStats(2, 2.0)
    for name in ("fedmedian", "fedtrimmedavg", "krum"):
        strategy = make_strategy(FederationConfig(strategy=name))
        with pytest.raises(ConfigError):
            secure.check_strategy(strategy)
        # central DP hands strategies only a noised mean: refused, naming the field
        with pytest.raises(ConfigError, match=r"federation\.strategy"):
            strategy.aggregate_mean(1, {"w": np.zeros(2)}, {"w": np.zeros(2)}, stats)
    with pytest.raises(ConfigError, match=r"federation\.trim_fraction"):
        FederationConfig(strategy="fedtrimmedavg", trim_fraction=0.5)
    with pytest.raises(ConfigError, match=r"federation\.krum_byzantine"):
        FederationConfig(strategy="krum", krum_byzantine=-1)
    with pytest.raises(ConfigError, match=r"federation\.server_momentum"):
        make_strategy(FederationConfig(strategy="fedmedian", server_momentum=0.9))


def test_update_bounds_clip_to_a_multiple_of_the_median_norm() -> None:
    ups = _vec_updates([[1, 0], [0, 1], [0.6, 0.8], [300, 400]])
    bounded, info = UpdateBounds(norm_multiple=3.0).apply(ups)
    assert info == {"clients_norm_clipped": 1, "update_norm_bound": pytest.approx(3.0)}
    np.testing.assert_allclose(bounded[3].delta["w"], [1.8, 2.4], rtol=1e-6)
    assert all(b is u for b, u in zip(bounded[:3], ups[:3], strict=True))  # untouched
    # a fixed bound, and the smaller of the two
    _, info = UpdateBounds(norm_multiple=0.0, norm_max=2.0).apply(ups)
    assert info["update_norm_bound"] == 2.0 and info["clients_norm_clipped"] == 1
    _, info = UpdateBounds(norm_multiple=3.0, norm_max=0.5).apply(ups)
    assert info["update_norm_bound"] == 0.5 and info["clients_norm_clipped"] == 4
    # off: nothing bounded, nothing recorded
    same, info = UpdateBounds(norm_multiple=0.0).apply(ups)
    assert info == {} and same == ups


def test_the_bounds_are_on_by_default_and_recorded() -> None:
    ups = _vec_updates([[1, 0], [0, 1], [0.6, 0.8], [300, 400]])
    current = {"w": np.zeros(2, np.float32)}
    strategy = make_strategy(FederationConfig())  # an operator who changes nothing
    new = strategy.aggregate_train(1, current, ups)
    assert float(np.linalg.norm(new["w"])) <= 3.0  # the mean of norms <= 3
    assert strategy.train_metrics()["clients_norm_clipped"] == 1
    fedexp = make_strategy(FederationConfig(strategy="fedexp"))
    fedexp.aggregate_train(1, current, ups)
    assert set(fedexp.train_metrics()) == {
        "server_step",
        "clients_norm_clipped",
        "update_norm_bound",
    }
    # a strategy built by hand is unbounded (its unit tests see the plain rule)
    assert FedAvg().bounds is None
    with pytest.raises(ConfigError, match=r"federation\.update_norm_multiple"):
        FederationConfig(update_norm_multiple=0.5)
    with pytest.raises(ConfigError, match=r"federation\.update_norm_max"):
        FederationConfig(update_norm_max=float("inf"))


def test_the_example_cap() -> None:
    assert UpdateBounds(max_examples=50).examples_cap([10, 900]) == 50
    assert UpdateBounds().examples_cap([10, 900]) == 900  # simulation: the largest shard
    assert UpdateBounds().examples_cap() == DEPLOYMENT_MAX_EXAMPLES
    with pytest.raises(ConfigError, match=r"federation\.max_client_examples"):
        FederationConfig(max_client_examples=-1)
