"""Split a dataset's examples among federated clients (seeded; numpy, scikit-learn's k-means).

Four schemes, registered by name in :data:`PARTITIONERS` (what ``federation.partition``
is checked against) and chosen with :func:`partition`'s ``scheme``:

* ``iid`` -- a random permutation cut into ``num_clients`` near-equal parts (sizes differ
  by at most one);
* ``dirichlet`` -- label skew after Hsu et al. 2019 ("Measuring the effects of
  non-identical data distribution"), as in FedLab and Flower Datasets'
  ``DirichletPartitioner``: for every class, proportions over clients are drawn from
  ``Dir(alpha * 1)`` and the class's examples are cut accordingly. Small ``alpha`` gives
  clients few classes; large ``alpha`` approaches IID. Draws are repeated (a bounded
  number of times, each from a seed derived from ``seed``) until every client holds at
  least ``min_size`` examples;
* ``shards`` -- McMahan et al. 2017: sort by label, cut into
  ``num_clients * shards_per_client`` equal shards and deal ``shards_per_client`` random
  shards to each client;
* ``cluster`` -- label-free skew for any text data (instructions, chats): the caller
  groups the examples by k-means over their sentence embeddings (:func:`kmeans_groups`,
  the embedding itself is computed above this layer) and the groups are dealt as
  ``dirichlet`` deals classes, ``Dir(alpha)`` over clients per cluster.

What each scheme groups examples by is declared in :data:`PARTITION_GROUPS`: ``iid``
reads nothing, ``dirichlet`` and ``shards`` the labels, ``cluster`` the k-means groups.

Every scheme returns ``num_clients`` sorted int64 index arrays that are disjoint and
together cover every example; the same arguments always give the same partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from fedpeft.errors import ConfigError, DataError

__all__ = [
    "DIRICHLET_MAX_TRIES",
    "PARTITIONERS",
    "PARTITION_GROUPS",
    "PartitionOptions",
    "Partitioner",
    "describe",
    "kmeans_groups",
    "partition",
]

DIRICHLET_MAX_TRIES = 10  # Flower Datasets' DirichletPartitioner also gives up after 10


@dataclass(frozen=True)
class PartitionOptions:
    """The knobs of :func:`partition`, checked there; each partitioner reads its own."""

    alpha: float
    shards_per_client: int
    seed: int
    min_size: int


#: A partitioner: dense label codes (``0..C-1``, one per example), the number of clients
#: and the options -> one index array per client.
Partitioner = Callable[[np.ndarray, int, PartitionOptions], list[np.ndarray]]


def partition(
    labels: Sequence[Any] | npt.ArrayLike,
    num_clients: int,
    scheme: str = "dirichlet",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Return ``num_clients`` sorted int64 arrays of example indices, one per client.

    ``labels`` holds one class label per example (ints, or any sortable values);
    ``scheme`` names one of :data:`PARTITIONERS` (in any case). The arrays are disjoint
    and cover ``range(len(labels))``; each has at least ``min_size`` elements. Raises
    :class:`ConfigError` for invalid arguments and :class:`DataError` when a Dirichlet
    draw keeps leaving clients below ``min_size``.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError("labels", f"must be one-dimensional, got shape {y.shape}")
    n = int(y.shape[0])
    if n == 0:
        raise DataError("cannot partition an empty dataset (0 labels)")
    scheme = _coerce_scheme(scheme)
    _check_int("num_clients", num_clients, low=1)
    if num_clients > n:
        raise ConfigError(
            "num_clients", f"{num_clients} clients but only {n} examples; use at most {n}"
        )
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not (math.isfinite(alpha) and alpha > 0)
    ):
        raise ConfigError("alpha", f"must be a finite number > 0, got {alpha!r}")
    _check_int("shards_per_client", shards_per_client, low=1)
    _check_int("seed", seed, low=0)
    _check_int("min_size", min_size, low=0)
    if min_size * num_clients > n:
        raise ConfigError(
            "min_size",
            f"{num_clients} clients x min_size {min_size} exceeds the {n} examples available",
        )
    _, codes = np.unique(y, return_inverse=True)
    codes = codes.reshape(-1)

    options = PartitionOptions(float(alpha), shards_per_client, seed, min_size)
    parts = PARTITIONERS[scheme](codes, num_clients, options)
    return [np.sort(p).astype(np.int64, copy=False) for p in parts]


def _coerce_scheme(scheme: str) -> str:
    name = str(scheme).lower()
    if name not in PARTITIONERS:
        known = ", ".join(PARTITIONERS)
        raise ConfigError("scheme", f"unknown scheme {scheme!r}; known: {known}")
    return name


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")


def _iid(codes: np.ndarray, k: int, options: PartitionOptions) -> list[np.ndarray]:
    rng = np.random.default_rng(options.seed)
    return list(np.array_split(rng.permutation(codes.shape[0]), k))


def _shards(codes: np.ndarray, k: int, options: PartitionOptions) -> list[np.ndarray]:
    per_client, min_size, seed = options.shards_per_client, options.min_size, options.seed
    n = codes.shape[0]
    num_shards = k * per_client
    if num_shards > n:
        raise ConfigError(
            "shards_per_client",
            f"{k} clients x {per_client} shards = {num_shards} shards, more than the "
            f"{n} examples; use fewer clients or fewer shards per client",
        )
    rng = np.random.default_rng(seed)
    # Shuffle first so that, within one label, which examples share a shard is random
    # rather than decided by file order; the stable sort then groups by label.
    perm = rng.permutation(n)
    order = perm[np.argsort(codes[perm], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards).reshape(k, per_client)
    parts = [np.concatenate([shards[s] for s in row]) for row in deal]
    if any(p.shape[0] < min_size for p in parts):
        hint = "use fewer clients or fewer shards per client"
        raise DataError(_too_small(parts, min_size, "shards", hint))
    return parts


def _dirichlet(codes: np.ndarray, k: int, options: PartitionOptions) -> list[np.ndarray]:
    alpha, min_size, seed = options.alpha, options.min_size, options.seed
    by_class = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
    best: list[np.ndarray] = []
    best_short = k + 1
    for attempt in range(DIRICHLET_MAX_TRIES):
        rng = np.random.default_rng([seed, attempt])
        buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
        for members in by_class:
            shuffled = rng.permutation(members)
            share = rng.dirichlet(np.full(k, alpha))
            if not np.all(np.isfinite(share)) or share.sum() <= 0:
                # Tiny alpha can underflow every gamma draw; all mass to one client is
                # the limit the distribution tends to.
                share = np.zeros(k)
                share[rng.integers(k)] = 1.0
            cuts = (np.cumsum(share / share.sum())[:-1] * shuffled.shape[0]).astype(np.int64)
            for client, chunk in enumerate(np.split(shuffled, cuts)):
                buckets[client].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        short = sum(1 for p in parts if p.shape[0] < min_size)
        if short == 0:
            return parts
        if short < best_short:
            best, best_short = parts, short
    raise DataError(
        _too_small(
            best,
            min_size,
            f"dirichlet (alpha={alpha:g}) after {DIRICHLET_MAX_TRIES} draws",
            "use fewer clients or a larger alpha (or a smaller min_size)",
        )
    )


#: Every partitioner, by the name ``federation.partition`` and :func:`partition` use.
#: ``cluster`` is ``dirichlet`` over k-means groups instead of classes: the same
#: algorithm, fed what :data:`PARTITION_GROUPS` says.
PARTITIONERS: Mapping[str, Partitioner] = MappingProxyType(
    {"iid": _iid, "dirichlet": _dirichlet, "shards": _shards, "cluster": _dirichlet}
)

#: What each scheme's ``labels`` argument must hold: ``None`` (ignored: any constant),
#: ``"labels"`` (the class labels) or ``"clusters"`` (:func:`kmeans_groups` of the
#: examples' embeddings). A caller picks the input from here, never from the name.
PARTITION_GROUPS: Mapping[str, str | None] = MappingProxyType(
    {"iid": None, "dirichlet": "labels", "shards": "labels", "cluster": "clusters"}
)


def kmeans_groups(embeddings: npt.ArrayLike, clusters: int = 8, *, seed: int = 0) -> np.ndarray:
    """One k-means cluster id (``0..k-1``) per row of ``embeddings`` (``n x d``).

    scikit-learn's ``KMeans`` (k-means++ init, Lloyd iterations, 4 restarts), seeded: the
    same embeddings and seed give the same ids. ``k`` is ``min(clusters, n)``; clusters are
    renumbered by their smallest member so the ids do not depend on the initialisation's
    order. Rows are L2-normalised first (sentence embeddings compare by cosine).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ConfigError("embeddings", f"must be a non-empty n x d array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("embeddings hold NaN or infinite values; cannot cluster them")
    _check_int("clusters", clusters, low=1)
    _check_int("seed", seed, low=0)
    from sklearn.cluster import KMeans  # a dependency of sentence-transformers (MiniLM)

    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    k = min(int(clusters), x.shape[0])
    ids = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    # canonical numbering: cluster of example 0 is 0, the next new one 1, ...
    _, first = np.unique(ids, return_index=True)
    rank = np.empty(int(ids.max()) + 1, dtype=np.int64)
    rank[ids[np.sort(first)]] = np.arange(first.shape[0])
    return rank[ids]


def _too_small(parts: list[np.ndarray], min_size: int, what: str, hint: str) -> str:
    small = [i for i, p in enumerate(parts) if p.shape[0] < min_size]
    empty = sum(1 for i in small if parts[i].shape[0] == 0)
    ids = ", ".join(str(i) for i in small[:8]) + (", ..." if len(small) > 8 else "")
    return (
        f"{what} partition leaves {len(small)} of {len(parts)} clients below "
        f"min_size={min_size} ({empty} empty; clients {ids}); {hint}"
    )


def describe(
    parts: Sequence[np.ndarray],
    labels: Sequence[Any] | npt.ArrayLike,
    *,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Summary of a partition for logging: sizes and per-client label histograms.

    Returns plain Python values (JSON-serialisable): ``num_clients``, ``num_examples``,
    ``sizes`` (``min``/``median``/``max``/``mean``), ``classes`` (the labels each histogram
    entry counts, in order) and ``label_histograms`` (one list of counts per client).
    ``classes`` are the distinct labels present, or ``0..num_classes-1`` when
    ``num_classes`` is given for integer labels (so absent classes show as zeros).
    """
    y = np.asarray(labels).reshape(-1)
    if num_classes is not None:
        _check_int("num_classes", num_classes, low=1)
        if y.size and (
            not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes
        ):
            raise ConfigError("num_classes", f"labels must be integers in 0..{num_classes - 1}")
        classes, codes = np.arange(num_classes), y.astype(np.int64)
    else:
        classes, codes = np.unique(y, return_inverse=True)
        codes = codes.reshape(-1)
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    hists: list[list[int]] = []
    for i, p in enumerate(parts):
        idx = np.asarray(p, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= y.shape[0]):
            raise ConfigError("parts", f"client {i} has indices outside 0..{y.shape[0] - 1}")
        hists.append(np.bincount(codes[idx], minlength=classes.shape[0]).tolist())
    return {
        "num_clients": len(parts),
        "num_examples": int(sizes.sum()),
        "sizes": {
            "min": int(sizes.min()) if sizes.size else 0,
            "median": float(np.median(sizes)) if sizes.size else 0.0,
            "max": int(sizes.max()) if sizes.size else 0,
            "mean": float(sizes.mean()) if sizes.size else 0.0,
        },
        "classes": classes.tolist(),
        "label_histograms": hists,
    }
