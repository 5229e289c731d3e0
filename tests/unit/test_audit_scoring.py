"""The audit's scores and chance references (fedpeft.audit.scoring), and the label attack
on synthetic head updates (fedpeft.audit.labels): no model, milliseconds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedpeft.audit.labels import ABSENT_FRACTION, head_keys, infer_labels, true_labels
from fedpeft.audit.scoring import (
    best_common_accuracy,
    best_common_l1,
    best_common_set,
    histogram_l1,
    jaccard,
    score_cohorts,
)
from fedpeft.errors import ConfigError

SETS = np.array(
    [
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 0],
        [1, 0, 0, 1],
    ],
    bool,
)


def test_jaccard_by_hand() -> None:
    guess = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], bool)
    assert jaccard(SETS, guess).tolist() == [1.0, 1 / 3, 0.0, 0.0]
    empty = np.zeros((1, 4), bool)
    assert jaccard(empty, empty).tolist() == [1.0]  # nothing to find, nothing claimed


def test_best_common_set_beats_every_constant_guess() -> None:
    """The chance reference is an upper bound for any guess common to the cohort: checked
    against all 16 constant guesses (a sum-only attack is one of them)."""
    best, score = best_common_set(SETS)
    for bits in itertools.product([False, True], repeat=4):
        guess = np.broadcast_to(np.array(bits), SETS.shape)
        assert jaccard(SETS, guess).mean() <= score + 1e-12
    assert jaccard(SETS, np.broadcast_to(best, SETS.shape)).mean() == pytest.approx(score)


def test_best_common_accuracy_and_l1_are_lower_bounds_of_error() -> None:
    rng = np.random.default_rng(0)
    hist = rng.dirichlet(np.ones(4), size=7)
    chance = best_common_l1(hist)
    for _ in range(200):  # no constant histogram does better than the median
        guess = np.broadcast_to(rng.dirichlet(np.ones(4)), hist.shape)
        assert histogram_l1(hist, guess).mean() >= chance - 1e-12
    assert best_common_accuracy(SETS) == pytest.approx(np.mean([0.75, 0.75, 0.5, 0.75]))


def test_score_cohorts_perfect_and_common_guess() -> None:
    hist = SETS / SETS.sum(axis=1, keepdims=True)
    perfect = score_cohorts([SETS], [SETS], [hist], [hist])
    assert perfect["label_set_recovery"] == 1.0
    assert perfect["label_histogram_l1"] == 0.0
    assert perfect["label_set_exact"] == 1.0
    # the guess a sum-only attacker makes: one set for everyone — never above chance
    union = np.broadcast_to(SETS.any(axis=0), SETS.shape)
    flat = np.broadcast_to(hist.mean(axis=0), hist.shape)
    common = score_cohorts([SETS], [union], [hist], [flat])
    assert common["label_set_recovery"] <= common["chance_label_set_recovery"] + 1e-12
    assert common["label_histogram_l1"] >= common["chance_label_histogram_l1"] - 1e-12


# ---------------------------------------------------------------- the attack itself


def adam_like_update(
    counts: np.ndarray, drift: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A head update with the shape AdamW gives it (as measured on TREC): an absent
    class's bias falls by most of the drift, a present one's by at most a third of it; a
    weight row moves less the more examples its class has."""
    present = counts > 0
    bias = np.where(present, rng.uniform(-0.3, 0.3, counts.shape), rng.uniform(-1, -0.6))
    share = counts / counts.sum()
    moved = drift / np.sqrt(np.where(present, share, 0.05) + 0.01)
    weight = moved[:, None] * rng.choice([-1.0, 1.0], size=(counts.size, 8))
    return drift * bias, weight


def test_infer_labels_recovers_sets_from_adam_shaped_updates() -> None:
    rng = np.random.default_rng(1)
    drift = 0.05
    for _ in range(50):
        counts = rng.integers(0, 4, size=6) * rng.integers(0, 30, size=6)
        if counts.sum() == 0:
            continue
        bias, weight = adam_like_update(counts, drift, rng)
        guess = infer_labels(bias, weight, drift)
        assert guess.present.tolist() == (counts > 0).tolist()
        assert guess.histogram.sum() == pytest.approx(1.0)
        assert np.all(guess.histogram[counts == 0] == 0)
        # the histogram ranks the present classes by their counts
        shown = counts > 0
        order = np.argsort(guess.histogram[shown], kind="stable")
        assert np.all(np.diff(counts[shown][order]) >= 0)


def test_infer_labels_threshold_is_the_absent_fraction() -> None:
    drift = 1.0
    below = -ABSENT_FRACTION - 1e-3
    above = -ABSENT_FRACTION + 1e-3
    guess = infer_labels(np.array([below, above, -1.0, 0.5]), np.ones((4, 2)), drift)
    assert guess.present.tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="absent_drift"):
        infer_labels(np.zeros(3), np.ones((3, 2)), 0.0)


def test_head_keys_finds_the_one_output_layer() -> None:
    tensors = {
        "base.pooler.dense.bias": np.zeros(8),
        "base.pooler.dense.weight": np.zeros((8, 8)),
        "base.classifier.modules_to_save.default.weight": np.zeros((3, 8)),
        "base.classifier.modules_to_save.default.bias": np.zeros(3),
        "base.layer.0.lora_A.weight": np.zeros((4, 8)),
    }
    assert head_keys(tensors, 3) == (
        "base.classifier.modules_to_save.default.weight",
        "base.classifier.modules_to_save.default.bias",
    )
    with pytest.raises(ConfigError, match="modules_to_save"):
        head_keys(tensors, 5)


def test_true_labels() -> None:
    labels = np.array([0, 2, 2, 1, 2])
    present, hist = true_labels(labels, np.array([1, 2, 4]), 3)
    assert present.tolist() == [False, False, True]
    assert hist.tolist() == [0.0, 0.0, 1.0]
