"""FedAvg is the example-weighted mean; FedExP, FedAdam and FedYogi match hand-computed steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.aggregation import (
    STRATEGIES,
    ClientUpdate,
    FedAdam,
    FedAvg,
    FedExP,
    FedYogi,
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
    assert list(STRATEGIES) == ["fedavg", "fedexp", "fedadam", "fedyogi"]
    for name, cls in STRATEGIES.items():
        strategy = make_strategy(FederationConfig(strategy=name))
        assert type(strategy) is cls and strategy.name == name


def test_strategies_declare_what_aggregation_needs() -> None:
    # FedExP's step reads the spread Σ p_i ‖Δ_i‖²; the others only the mean
    needs = {s: make_strategy(FederationConfig(strategy=s)).needs_sq_norm for s in STRATEGIES}
    assert needs == {"fedavg": False, "fedexp": True, "fedadam": False, "fedyogi": False}
    assert make_strategy(FederationConfig(lora_aggregation="product")).needs_individual_updates
    assert not make_strategy(FederationConfig()).needs_individual_updates


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
