"""CCVR: validation of client statistics, virtual features, refitting the output layer,
and the engine's calibration step (what is evaluated, exported, checkpointed, resumed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_records, small_job
from fedpeft.aggregation.calibration import (
    check_feature_stats,
    feature_stats,
    fit_output_layer,
    merge_feature_stats,
    sample_virtual_features,
)
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError, UpdateRejected
from fedpeft.protocol.codecs import apply_downlink
from fedpeft.protocol.messages import TrainResult, TrainTask

SHAPES = {"clf.weight": (2, 3), "clf.bias": (2,)}


def _stats(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return feature_stats("clf", rng.normal(size=(n, 3)), rng.integers(0, 2, n), 2)


def test_feature_stats_names_and_shapes() -> None:
    stats = _stats()
    assert {k: v.shape for k, v in stats.items()} == {
        "clf.class_count": (2,),
        "clf.class_mean": (2, 3),
        "clf.class_scatter": (2, 6),
    }
    assert check_feature_stats(stats, SHAPES, client_id=1) == "clf"
    with pytest.raises(ValueError, match="labels must be in"):
        feature_stats("clf", np.zeros((2, 3)), np.array([0, 2]), 2)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.pop("clf.class_mean"), "expected"),
        (lambda s: s.update({"clf.class_mean": np.zeros((2, 4), np.float32)}), "shape"),
        (lambda s: s["clf.class_scatter"].__setitem__((0, 0), np.nan), "NaN/Inf"),
        (lambda s: s.update({"clf.class_count": np.array([-1.0, 3.0], np.float32)}), "whole"),
        (lambda s: s.update({"clf.class_count": np.array([1.5, 3.0], np.float32)}), "whole"),
    ],
)
def test_bad_statistics_are_rejected_with_the_client_id(mutate: Any, reason: str) -> None:
    stats = _stats()
    mutate(stats)
    with pytest.raises(UpdateRejected, match=reason) as info:
        check_feature_stats(stats, SHAPES, client_id=7)
    assert info.value.client_id == 7


def test_statistics_for_a_layer_the_adapter_lacks_are_rejected() -> None:
    stats = feature_stats("other", np.zeros((2, 3)), np.array([0, 1]), 2)
    with pytest.raises(UpdateRejected, match="not a linear layer"):
        check_feature_stats(stats, SHAPES, client_id=3)


def test_virtual_features_follow_the_class_gaussians() -> None:
    count = np.array([4000.0, 0.0, 3000.0])
    mean = np.array([[1.0, -2.0], [0.0, 0.0], [-3.0, 0.5]])
    cov = np.array([[[1.0, 0.5], [0.5, 2.0]], np.eye(2), [[0.2, 0.0], [0.0, 0.1]]])
    x, y = sample_virtual_features(count, mean, cov, seed=0)
    assert np.bincount(y, minlength=3).tolist() == [4000, 0, 3000]  # an empty class: none
    for c in (0, 2):
        np.testing.assert_allclose(x[y == c].mean(axis=0), mean[c], atol=0.06)
        np.testing.assert_allclose(np.cov(x[y == c].T), cov[c], atol=0.1)
    again, _ = sample_virtual_features(count, mean, cov, seed=0)
    np.testing.assert_array_equal(x, again)


def test_refit_repairs_a_drifted_threshold() -> None:
    """Two 1-d classes at ±1; a head whose bias always says class 1 is refitted to ~Bayes."""
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(-1, 0.5, 500), rng.normal(1, 0.5, 500)])[:, None]
    labels = np.repeat([0, 1], 500)
    stats = [feature_stats("clf", feats[i::3], labels[i::3], 2) for i in range(3)]
    count, mean, cov = merge_feature_stats(stats, "clf")
    virtual, vlabels = sample_virtual_features(count, mean, cov, seed=1)
    weight = np.array([[-1.0], [1.0]], np.float32)
    bias = np.array([0.0, 6.0], np.float32)  # margin 2x + 6 > 0: everything is class 1

    def accuracy(w: np.ndarray, b: np.ndarray) -> float:
        return float(((feats @ w.T + b).argmax(axis=1) == labels).mean())

    assert accuracy(weight, bias) < 0.55
    new_w, new_b = fit_output_layer(weight, bias, virtual, vlabels, seed=0)
    assert new_b is not None
    assert accuracy(new_w, new_b) > 0.95  # Bayes accuracy here is ~0.977


# ---- the engine's calibration step, with a synthetic client app -------------------------


class _Drifted:
    """A 1-d two-class problem; the head starts (and stays) biased toward class 1.

    Training returns a zero update; ``feature_stats`` tasks report the client's slice of
    the features; evaluation is accuracy on held-out features with the given head.
    """

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = np.concatenate([rng.normal(-1, 0.5, 200), rng.normal(1, 0.5, 200)])[:, None]
        self.y = np.repeat([0, 1], 200)

    def initial_state(self) -> dict[str, np.ndarray]:
        return {
            "clf.weight": np.array([[-1.0], [1.0]], np.float32),
            "clf.bias": np.array([0.0, 6.0], np.float32),
        }

    def train(self, task: TrainTask) -> TrainResult:
        held = apply_downlink(FULL_WEIGHTS_CODEC, task)
        if task.kind == "feature_stats":
            idx = np.arange(task.client_id, len(self.y), 4)
            stats = feature_stats("clf", self.x[idx], self.y[idx], 2)
            if task.client_id == 3:  # one client sends garbage: rejected, not merged
                stats["clf.class_mean"] = np.zeros((2, 5), np.float32)
            return TrainResult(
                task.round,
                task.client_id,
                num_examples=len(idx),
                payload=FULL_WEIGHTS_CODEC.encode(stats),
            )
        delta = {k: np.zeros_like(v) for k, v in held.items()}
        return TrainResult(
            task.round, task.client_id, num_examples=1, payload=FULL_WEIGHTS_CODEC.encode(delta)
        )

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        logits = self.x @ params["clf.weight"].T + params["clf.bias"]
        return {"eval_accuracy": float((logits.argmax(axis=1) == self.y).mean())}


def _job(data: Path, out: Path, rounds: int, calibration: str = "ccvr") -> JobConfig:
    return small_job(data, out, rounds, calibration=calibration)


def _run(cfg: JobConfig, resume: bool = False) -> list[dict[str, Any]]:
    return run_records(cfg, lambda name: _Drifted(), resume=resume)


def test_engine_calibrates_the_last_round_only(tmp_path: Path, tiny_text_file: Path) -> None:
    records = _run(_job(tiny_text_file, tmp_path / "run", rounds=2))
    first, last = records
    assert "calibration_clients" not in first and first["eval_accuracy"] == 0.5
    assert last["calibration_clients"] == 3  # client 3's statistics were rejected
    assert "shape" in last["calibration_rejected"]["3"]
    assert last["uncalibrated_eval_accuracy"] == 0.5
    assert last["eval_accuracy"] > 0.95
    assert last["calibration_bytes_up"] > 0 and last["calibration_bytes_down"] > 0
    assert (
        last["bytes_up_total"]
        == first["bytes_up"] + last["bytes_up"] + last["calibration_bytes_up"]
    )
    run = tmp_path / "run"
    exported = load_file(str(run / "adapter_state.safetensors"))
    trained = load_file(str(run / "checkpoint" / "global.safetensors"))
    assert exported["clf.bias"][1] < 6.0 - 1.0  # the calibrated head is what is exported
    np.testing.assert_array_equal(trained["clf.bias"], [0.0, 6.0])  # training state: untouched


def test_calibration_is_redone_after_a_resume(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = _job(tiny_text_file, tmp_path / "run", rounds=1)
    _run(cfg)
    records = _run(cfg.replace({"federation.rounds": 2}), resume=True)
    assert [r["round"] for r in records] == [1, 2]
    # round 2 trained from the plain global (uncalibrated 0.5) and was calibrated again
    assert records[1]["uncalibrated_eval_accuracy"] == 0.5
    assert records[1]["eval_accuracy"] > 0.95


def test_calibration_config_is_validated(tmp_path: Path, tiny_text_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"federation\.calibration"):
        _job(tiny_text_file, tmp_path / "x", 1, calibration="temperature")
    with pytest.raises(ConfigError, match=r"federation\.calibration_clients"):
        _job(tiny_text_file, tmp_path / "x", 1).replace({"federation.calibration_clients": 5})
