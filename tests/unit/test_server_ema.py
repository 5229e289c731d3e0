"""Server EMA of the global adapter: what is evaluated, exported and checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_records, small_job
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.protocol.codecs import apply_downlink
from fedpeft.protocol.messages import TrainResult, TrainTask


class _PlusOne:
    """Every client returns the update +1; evaluation reports the first weight."""

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(3, np.float32)}

    def train(self, task: TrainTask) -> TrainResult:
        held = apply_downlink(FULL_WEIGHTS_CODEC, task)
        delta = {k: np.ones_like(v) for k, v in held.items()}
        return TrainResult(
            task.round, task.client_id, num_examples=1, payload=FULL_WEIGHTS_CODEC.encode(delta)
        )

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        return {"eval_accuracy": float(params["w"][0])}


def _job(data: Path, out: Path, rounds: int, ema: float) -> JobConfig:
    return small_job(data, out, rounds, server_ema=ema)


def _run(cfg: JobConfig, resume: bool = False) -> list[dict[str, Any]]:
    return run_records(cfg, lambda name: _PlusOne(), resume=resume)


def test_ema_is_evaluated_and_exported(tmp_path: Path, tiny_text_file: Path) -> None:
    # global adapter after round r is r; EMA(0.5): 1, 1.5, 2.25
    records = _run(_job(tiny_text_file, tmp_path / "ema", 3, 0.5))
    assert [r["eval_accuracy"] for r in records] == pytest.approx([1.0, 1.5, 2.25])
    exported = load_file(str(tmp_path / "ema" / "adapter_state.safetensors"))
    np.testing.assert_allclose(exported["w"], 2.25)
    plain = _run(_job(tiny_text_file, tmp_path / "plain", 3, 0.0))
    assert [r["eval_accuracy"] for r in plain] == pytest.approx([1.0, 2.0, 3.0])


def test_ema_survives_resume(tmp_path: Path, tiny_text_file: Path) -> None:
    _run(_job(tiny_text_file, tmp_path / "run", 2, 0.5))
    records = _run(_job(tiny_text_file, tmp_path / "run", 3, 0.5), resume=True)
    assert [r["eval_accuracy"] for r in records] == pytest.approx([1.0, 1.5, 2.25])


def test_ema_decay_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"federation\.server_ema"):
        JobConfig().replace({"federation.server_ema": 1.0})
