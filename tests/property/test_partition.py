"""Property and example tests for fedpeft.data.partition."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedpeft.data.partition import PARTITIONERS, describe, kmeans_groups, partition
from fedpeft.errors import ConfigError, DataError

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def problems(draw: st.DrawFn) -> dict[str, Any]:
    """Labels plus feasible arguments (a Dirichlet draw may still leave a client short)."""
    num_classes = draw(st.integers(1, 6))
    labels = draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=300))
    num_clients = draw(st.integers(1, min(len(labels), 25)))
    per_client_max = len(labels) // num_clients
    scheme = draw(st.sampled_from(list(PARTITIONERS)))
    shards_per_client = draw(st.integers(1, min(3, per_client_max)))
    # shards: array_split makes shards of floor(n/S) or one more, dealt at random, so a
    # client is only sure of shards_per_client * floor(n/S) examples
    guaranteed = per_client_max
    if scheme == "shards":
        guaranteed = shards_per_client * (len(labels) // (num_clients * shards_per_client))
    return {
        "labels": labels,
        "num_clients": num_clients,
        "scheme": scheme,
        "alpha": draw(st.floats(0.05, 20.0)),
        "shards_per_client": shards_per_client,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "min_size": draw(st.integers(0, min(3, guaranteed))),
    }


def run(problem: dict[str, Any]) -> list[np.ndarray]:
    """Partition; a Dirichlet draw that leaves clients short is discarded (it raises by design)."""
    args = dict(problem)
    labels = args.pop("labels")
    try:
        return partition(labels, **args)
    except DataError as e:
        # cluster is dirichlet over k-means groups: it may fall short the same way
        assert args["scheme"] in ("dirichlet", "cluster") and args["min_size"] > 0, str(e)
        assert "min_size" in str(e)
        assume(False)
        raise  # unreachable: assume(False) aborts the example


@PROPERTY_SETTINGS
@given(problems())
def test_parts_are_disjoint_complete_sorted_int64(problem: dict[str, Any]) -> None:
    parts = run(problem)

    assert len(parts) == problem["num_clients"]
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, hence no repeats inside
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(len(problem["labels"])))  # disjoint+complete


@PROPERTY_SETTINGS
@given(problems())
def test_every_client_has_at_least_min_size(problem: dict[str, Any]) -> None:
    parts = run(problem)

    assert min(len(p) for p in parts) >= problem["min_size"]


@PROPERTY_SETTINGS
@given(problems())
def test_same_seed_same_partition(problem: dict[str, Any]) -> None:
    first = run(problem)
    second = run(problem)

    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@PROPERTY_SETTINGS
@given(st.integers(1, 500), st.data())
def test_iid_sizes_differ_by_at_most_one(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 2**31))

    sizes = [len(p) for p in partition([0] * n, k, "iid", seed=seed)]

    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


@PROPERTY_SETTINGS
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.data())
def test_shard_clients_hold_near_equal_sizes(labels: list[int], data: st.DataObject) -> None:
    n = len(labels)
    per_client = data.draw(st.integers(1, min(4, n)))
    k = data.draw(st.integers(1, n // per_client))
    num_shards = k * per_client

    sizes = [
        len(p) for p in partition(labels, k, "shards", shards_per_client=per_client, min_size=0)
    ]

    assert sum(sizes) == n
    assert all(
        per_client * (n // num_shards) <= s <= per_client * -(-n // num_shards) for s in sizes
    )


# --------------------------------------------------------------------------- examples


def test_different_seeds_differ() -> None:
    labels = np.repeat(np.arange(5), 40)

    a = partition(labels, 10, seed=1)
    b = partition(labels, 10, seed=2)

    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_small_alpha_skews_labels_large_alpha_does_not() -> None:
    labels = np.repeat(np.arange(10), 200)

    def mean_classes(alpha: float) -> float:
        parts = partition(labels, 20, "dirichlet", alpha=alpha, seed=0)
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes(0.05) < 3.5
    assert mean_classes(100.0) == 10.0


def test_shards_follow_mcmahan_two_labels_per_client() -> None:
    labels = np.repeat(np.arange(10), 100)  # 10 classes x 100

    parts = partition(labels, 50, "shards", shards_per_client=2, seed=3)

    assert all(len(p) == 20 for p in parts)  # 100 shards of 10
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_dirichlet_failure_names_clients_and_suggests_fixes() -> None:
    labels = [0] * 30 + [1] * 30

    with pytest.raises(DataError) as info:
        partition(labels, 30, "dirichlet", alpha=0.01, min_size=2, seed=0)

    message = str(info.value)
    assert "of 30 clients below min_size=2" in message
    assert re.search(r"clients \d+(, \d+)*", message)
    assert "fewer clients" in message and "larger alpha" in message


def test_registry_names_the_schemes_and_imports_neither_torch_nor_config() -> None:
    code = (
        "import sys; from fedpeft.data.partition import PARTITIONERS; "
        "print(list(PARTITIONERS), 'torch' in sys.modules, 'fedpeft.config' in sys.modules)"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert out.stdout.split() == [
        "['iid',",
        "'dirichlet',",
        "'shards',",
        "'cluster']",
        "False",
        "False",
    ]


def test_string_labels_and_scheme_strings() -> None:
    labels = ["b", "a", "b", "c", "a", "c"]

    parts = partition(labels, 3, "IID", seed=0)

    assert sorted(np.concatenate(parts).tolist()) == list(range(6))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"num_clients": 11}, "num_clients"),
        ({"num_clients": 2.0}, "num_clients"),
        ({"num_clients": True}, "num_clients"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"shards_per_client": 0}, "shards_per_client"),
        ({"scheme": "shards", "shards_per_client": 6}, "shards_per_client"),
        ({"seed": -1}, "seed"),
        ({"min_size": -1}, "min_size"),
        ({"min_size": 6}, "min_size"),
        ({"scheme": "pathological"}, "scheme"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"num_clients": 2, **kwargs}

    with pytest.raises(ConfigError) as info:
        partition(list(range(10)), **args)

    assert info.value.field == field


def test_empty_and_2d_labels() -> None:
    with pytest.raises(DataError, match="empty"):
        partition([], 1)
    with pytest.raises(ConfigError, match="one-dimensional"):
        partition(np.zeros((3, 2)), 1)


def test_describe_reports_sizes_and_histograms() -> None:
    labels = [0, 0, 1, 2, 2, 2]
    parts = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5])]

    info = describe(parts, labels)

    assert info["num_clients"] == 3 and info["num_examples"] == 6
    assert info["sizes"] == {"min": 1, "median": 2.0, "max": 3, "mean": 2.0}
    assert info["classes"] == [0, 1, 2]
    assert info["label_histograms"] == [[2, 1, 0], [0, 0, 2], [0, 0, 1]]
    with pytest.raises(ConfigError):
        describe([np.array([7])], labels)


def test_describe_with_num_classes_counts_absent_classes() -> None:
    labels = [0, 2, 2]

    info = describe([np.array([0, 1]), np.array([2])], labels, num_classes=4)

    assert info["classes"] == [0, 1, 2, 3]
    assert info["label_histograms"] == [[1, 0, 1, 0], [0, 0, 1, 0]]
    with pytest.raises(ConfigError):
        describe([np.array([0])], labels, num_classes=2)


@st.composite
def embedded(draw: st.DrawFn) -> dict[str, Any]:
    """Random sentence-embedding-like rows, a cluster count, clients and a seed."""
    n = draw(st.integers(2, 60))
    dim = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**16))
    rows = np.random.default_rng(seed).normal(size=(n, dim))
    return {
        "rows": rows,
        "clusters": draw(st.integers(1, 8)),
        "num_clients": draw(st.integers(1, min(n, 10))),
        "alpha": draw(st.sampled_from([0.1, 0.5, 5.0])),
        "seed": draw(st.integers(0, 1000)),
    }


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(embedded())
def test_cluster_partition_assigns_every_example_once_deterministically(
    problem: dict[str, Any],
) -> None:
    """k-means groups, then Dirichlet over them: every example lands on exactly one
    client, the same inputs give the same shards, and every shard is non-empty (or the
    draw is refused, naming the clients)."""
    rows, seed = problem["rows"], problem["seed"]
    groups = kmeans_groups(rows, problem["clusters"], seed=seed)
    assert groups.shape == (rows.shape[0],)
    assert set(groups.tolist()) == set(range(min(problem["clusters"], rows.shape[0]))) or (
        len(set(groups.tolist())) <= problem["clusters"]  # duplicate rows may merge
    )
    args = (groups, problem["num_clients"], "cluster")
    try:
        parts = partition(*args, alpha=problem["alpha"], seed=seed, min_size=1)
    except DataError as exc:
        assert "below min_size=1" in str(exc)
        return
    assert sorted(np.concatenate(parts).tolist()) == list(range(rows.shape[0]))
    assert all(len(p) >= 1 for p in parts) and len(parts) == problem["num_clients"]
    again = partition(*args, alpha=problem["alpha"], seed=seed, min_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert np.array_equal(groups, kmeans_groups(rows, problem["clusters"], seed=seed))
