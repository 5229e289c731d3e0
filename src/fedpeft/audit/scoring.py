"""How an attack on clients' labels is scored, and what chance would score.

Everything here is a pure function of boolean label sets ``(clients, classes)`` and label
histograms (rows summing to 1), so the metrics are tested without a model.

* **label-set recovery** (``label_set_recovery``): the mean over clients of the Jaccard
  index ``|S ∩ Ŝ| / |S ∪ Ŝ|`` between a client's true label set ``S`` (the labels it
  holds at least one example of) and the recovered set ``Ŝ`` (1 when both are empty).
  Exact-set matches and per-label accuracy (present/absent decided right, over all
  labels) are reported beside it.
* **histogram error** (``label_histogram_l1``): the mean L1 distance between a client's
  label proportions and the recovered ones (0: exact, 2: disjoint).
* **chance**: the best score of a guess that is the *same for every client of a cohort*
  — it may know the clients' label sets as a population (marginals, set sizes, their
  joint distribution), but not which client holds which. It is computed over the clients
  scored, so it is an upper bound for every such guesser. Anything computed from a
  cohort's sum alone is one such guess, so an attack on SecAgg sums cannot exceed it; a
  per-client attack is worth something only as far as it rises above it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

#: Beyond this many classes the best common label set is searched among the nested sets
#: "the k most frequent labels" instead of all 2^C sets.
EXHAUSTIVE_CLASSES = 12


def jaccard(true: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Per-row Jaccard index of two boolean arrays ``(clients, classes)``."""
    true, guess = _sets(true), _sets(guess)
    union = (true | guess).sum(axis=1)
    inter = (true & guess).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def label_accuracy(true: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Per-row fraction of labels whose presence is decided right."""
    true, guess = _sets(true), _sets(guess)
    return np.asarray((true == guess).mean(axis=1), dtype=np.float64)


def histogram_l1(true: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Per-row L1 distance of two arrays of label proportions."""
    true = np.asarray(true, np.float64)
    guess = np.asarray(guess, np.float64)
    if true.shape != guess.shape:
        raise ValueError(f"histograms differ in shape: {true.shape} vs {guess.shape}")
    return np.asarray(np.abs(true - guess).sum(axis=1), dtype=np.float64)


def best_common_set(true: np.ndarray) -> tuple[np.ndarray, float]:
    """The label set that, guessed for every row, scores the highest mean Jaccard index,
    and that score (the chance reference of :func:`jaccard`)."""
    true = _sets(true)
    classes = true.shape[1]
    if classes <= EXHAUSTIVE_CLASSES:
        candidates = np.array(list(itertools.product([False, True], repeat=classes)), bool)
    else:  # nested sets of the most frequent labels
        order = np.argsort(-true.mean(axis=0), kind="stable")
        candidates = np.zeros((classes + 1, classes), bool)
        for k in range(1, classes + 1):
            candidates[k, order[:k]] = True
    scores = [float(jaccard(true, np.broadcast_to(c, true.shape)).mean()) for c in candidates]
    best = int(np.argmax(scores))
    return candidates[best], scores[best]


def best_common_accuracy(true: np.ndarray) -> float:
    """The best mean per-label accuracy of one guess for every row: each label guessed
    present iff most rows hold it."""
    freq = _sets(true).mean(axis=0)
    return float(np.maximum(freq, 1.0 - freq).mean()) if freq.size else 1.0


def best_common_exact(true: np.ndarray) -> float:
    """The best exact-match rate of one guess for every row: the most common set's share."""
    rows = [tuple(r) for r in _sets(true)]
    if not rows:
        return 0.0
    return max(rows.count(r) for r in set(rows)) / len(rows)


def best_common_l1(true: np.ndarray) -> float:
    """The lowest mean L1 error of one histogram guessed for every row: the coordinate-wise
    median minimises each coordinate's mean absolute error (it need not sum to 1, which
    only makes it a stronger reference)."""
    true = np.asarray(true, np.float64)
    median = np.median(true, axis=0)
    return float(histogram_l1(true, np.broadcast_to(median, true.shape)).mean())


def score_cohorts(
    true_sets: Sequence[np.ndarray],
    guess_sets: Sequence[np.ndarray],
    true_hist: Sequence[np.ndarray],
    guess_hist: Sequence[np.ndarray],
) -> dict[str, float]:
    """The attack's scores and the chance references over several cohorts (one array of
    rows per cohort; chance is the best common guess per cohort, averaged over clients)."""
    if not true_sets:
        raise ValueError("no cohort to score")
    n = [len(t) for t in true_sets]
    total = float(sum(n))

    def mean(values: Sequence[float]) -> float:
        return float(sum(v * k for v, k in zip(values, n, strict=True)) / total)

    return {
        "label_set_recovery": mean(
            [float(jaccard(t, g).mean()) for t, g in zip(true_sets, guess_sets, strict=True)]
        ),
        "chance_label_set_recovery": mean([best_common_set(t)[1] for t in true_sets]),
        "label_set_exact": mean(
            [
                float(np.all(_sets(t) == _sets(g), axis=1).mean())
                for t, g in zip(true_sets, guess_sets, strict=True)
            ]
        ),
        "chance_label_set_exact": mean([best_common_exact(t) for t in true_sets]),
        "label_accuracy": mean(
            [float(label_accuracy(t, g).mean()) for t, g in zip(true_sets, guess_sets, strict=True)]
        ),
        "chance_label_accuracy": mean([best_common_accuracy(t) for t in true_sets]),
        "label_histogram_l1": mean(
            [float(histogram_l1(t, g).mean()) for t, g in zip(true_hist, guess_hist, strict=True)]
        ),
        "chance_label_histogram_l1": mean([best_common_l1(t) for t in true_hist]),
        "clients_scored": int(total),
    }


def _sets(a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"label sets must be (clients, classes), got shape {arr.shape}")
    return arr.astype(bool)
