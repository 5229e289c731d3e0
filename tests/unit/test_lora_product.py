"""Product aggregation of LoRA factors: the new B·A is the best rank-r approximation of the
exact example-weighted mean of the clients' products (Eckart–Young), A keeps FedAvg's norm,
and it reduces to FedAvg where FedAvg is already exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.aggregation import ClientUpdate, FedAvg, make_strategy
from fedpeft.aggregation.lora_product import lora_pairs, truncated_svd
from fedpeft.config import FederationConfig
from fedpeft.errors import ConfigError

A, B = "layer.q.lora_A.default.weight", "layer.q.lora_B.default.weight"


def _job(
    rng: np.random.Generator,
    rank: int,
    out: int,
    inp: int,
    sizes: list[int],
    scale: float = 0.1,
    move_a: bool = True,
) -> tuple[dict, list[ClientUpdate]]:
    current = {
        A: rng.normal(0, 0.05, (rank, inp)).astype(np.float32),
        B: rng.normal(0, 0.05, (out, rank)).astype(np.float32),
        "classifier.weight": rng.normal(size=(2, out)).astype(np.float32),
    }
    updates = []
    for i, n in enumerate(sizes):
        delta = {
            k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in current.items()
        }
        if not move_a:
            delta[A] = np.zeros_like(current[A])
        updates.append(ClientUpdate(i, n, delta))
    return current, updates


def _exact_product(current: dict, updates: list[ClientUpdate], eta: float) -> np.ndarray:
    a0, b0 = current[A].astype(np.float64), current[B].astype(np.float64)
    p = np.array([u.num_examples for u in updates], np.float64)
    p /= p.sum()
    mean = sum(
        pi * ((b0 + u.delta[B]) @ (a0 + u.delta[A])) for pi, u in zip(p, updates, strict=True)
    )
    return b0 @ a0 + eta * (mean - b0 @ a0)


def _best_rank(m: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(m)
    return (u[:, :rank] * s[:rank]) @ vt[:rank]


def test_pairs_need_both_factors() -> None:
    names = [A, B, "x.lora_A.default.weight", "classifier.weight"]
    assert lora_pairs(names) == [(A, B)]


@pytest.mark.parametrize("eta", [1.0, 0.5, 2.0])
def test_product_is_best_rank_r_of_exact_mean(eta: float) -> None:
    rng = np.random.default_rng(0)
    current, updates = _job(rng, rank=4, out=20, inp=30, sizes=[3, 5, 7])
    new = FedAvg(server_lr=eta, lora_aggregation="product").aggregate_train(1, current, updates)
    got = new[B].astype(np.float64) @ new[A]
    np.testing.assert_allclose(got, _best_rank(_exact_product(current, updates, eta), 4), atol=1e-5)
    # the head is averaged as FedAvg does, and A keeps the Frobenius norm of FedAvg's A
    plain = FedAvg(server_lr=eta).aggregate_train(1, current, updates)
    np.testing.assert_array_equal(new["classifier.weight"], plain["classifier.weight"])
    np.testing.assert_allclose(np.linalg.norm(new[A]), np.linalg.norm(plain[A]), rtol=1e-5)
    # rows of A are orthogonal and equally long: A = c Vᵣᵀ
    gram = new[A].astype(np.float64) @ new[A].T
    np.testing.assert_allclose(gram, np.eye(4) * gram[0, 0], atol=1e-6)


def test_equals_fedavg_when_fedavg_is_exact() -> None:
    # A does not move (FFA-LoRA-like clients): Σ p_i B_i A₀ = B̄ A₀, so both give one product.
    rng = np.random.default_rng(1)
    current, updates = _job(rng, rank=3, out=12, inp=10, sizes=[2, 9], move_a=False)
    new = FedAvg(lora_aggregation="product").aggregate_train(1, current, updates)
    plain = FedAvg().aggregate_train(1, current, updates)
    np.testing.assert_allclose(
        new[B].astype(np.float64) @ new[A], plain[B].astype(np.float64) @ plain[A], atol=1e-6
    )


def test_zero_product_keeps_fedavg_factors() -> None:
    rng = np.random.default_rng(2)
    current, updates = _job(rng, rank=2, out=6, inp=5, sizes=[1, 1])
    current[B] = np.zeros_like(current[B])
    updates = [
        ClientUpdate(u.client_id, u.num_examples, {**u.delta, B: np.zeros_like(current[B])})
        for u in updates
    ]
    new = FedAvg(lora_aggregation="product").aggregate_train(1, current, updates)
    plain = FedAvg().aggregate_train(1, current, updates)
    for k in (A, B):
        np.testing.assert_array_equal(new[k], plain[k])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(2, 24),
    st.integers(2, 24),
    st.lists(st.integers(1, 50), min_size=1, max_size=6),
    st.floats(0.25, 2.0),
    st.integers(0, 2**32 - 1),
)
def test_never_further_from_exact_than_fedavg(
    rank: int, out: int, inp: int, sizes: list[int], eta: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    current, updates = _job(rng, rank=rank, out=out, inp=inp, sizes=sizes)
    exact = _exact_product(current, updates, eta)
    new = FedAvg(server_lr=eta, lora_aggregation="product").aggregate_train(1, current, updates)
    plain = FedAvg(server_lr=eta).aggregate_train(1, current, updates)
    err_product = np.linalg.norm(new[B].astype(np.float64) @ new[A] - exact)
    err_fedavg = np.linalg.norm(plain[B].astype(np.float64) @ plain[A] - exact)
    assert err_product <= err_fedavg + 1e-5
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in new.values())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_truncated_svd_paths_agree_with_numpy(out: int, inp: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    left, right = rng.normal(size=(out, k)), rng.normal(size=(k, inp))
    rank = min(3, out, inp)
    u, s, vt = truncated_svd(left, right, rank)
    np.testing.assert_allclose((u * s) @ vt, _best_rank(left @ right, rank), atol=1e-8)
    np.testing.assert_allclose(s, np.linalg.svd(left @ right, compute_uv=False)[:rank], atol=1e-8)


@pytest.mark.parametrize(
    "overrides",
    [
        {"lora_aggregation": "mean"},
        {"lora_aggregation": "product", "strategy": "fedadam"},
        {"lora_aggregation": "product", "server_momentum": 0.9},
        {"lora_aggregation": "product", "server_ema": 0.5},
    ],
)
def test_config_errors_name_the_field(overrides: dict) -> None:
    with pytest.raises(ConfigError, match=r"federation\.lora_aggregation"):
        FederationConfig(**overrides)


def test_make_strategy_passes_the_option() -> None:
    strategy = make_strategy(FederationConfig(lora_aggregation="product"))
    assert isinstance(strategy, FedAvg) and strategy.lora_aggregation == "product"
    with pytest.raises(ConfigError, match=r"federation\.lora_aggregation"):
        FedAvg(server_momentum=0.5, lora_aggregation="product")
