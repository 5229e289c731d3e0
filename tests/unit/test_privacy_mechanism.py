"""The engine reaches privacy only through the PrivacyMechanism interface: a mechanism's
settings reach every client's task, its aggregate is what the strategy steps from, its
record lands in the round's line before that line is written, its stop reason ends the
run, and a mechanism that cannot work with the collection is refused up front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import NumpyClientApp, engine_for, secure_round
from conftest import engine_job as job
from fedpeft.aggregation import Strategy
from fedpeft.coordinator.collect import Collected
from fedpeft.coordinator.privacy import CentralDp, DistributedDp, PrivacyMechanism
from fedpeft.errors import ConfigError
from fedpeft.protocol.messages import TaskSettings, Tensors


class Recorder(PrivacyMechanism):
    """A mechanism that asks for a clip, zeroes the aggregate and records each call."""

    name = "recorder"

    def __init__(self, stop_before: int) -> None:
        self.calls: list[tuple[str, int]] = []
        self.stop_before = stop_before

    def stop_reason(self, round_num: int) -> str | None:
        self.calls.append(("stop_reason", round_num))
        return "spent" if round_num >= self.stop_before else None

    def configure(self, settings: TaskSettings) -> TaskSettings:
        return settings.replace(dp_clip=123.0)

    def aggregate(
        self, round_num: int, strategy: Strategy, current: Tensors, collected: Collected
    ) -> tuple[Tensors, dict[str, Any]]:
        self.calls.append(("aggregate", round_num))
        return {k: np.zeros_like(v) for k, v in current.items()}, {"recorder_clients": 1}

    def record_round(self, round_num: int, *, released: bool) -> dict[str, Any]:
        self.calls.append(("record_round", round_num))
        return {"recorder_released": released}


def test_the_engine_calls_the_mechanism_at_each_point(tmp_path: Path) -> None:
    cfg = job(tmp_path, **{"federation.rounds": 3})
    app = NumpyClientApp(cfg)
    mechanism = Recorder(stop_before=3)
    engine, spy = engine_for(cfg, app, secure=None, privacy=mechanism)
    engine.run()
    assert engine.stopped == "spent"
    assert all(t.settings.dp_clip == 123.0 for t in spy.tasks)
    assert mechanism.calls == [
        ("stop_reason", 1),
        ("aggregate", 1),
        ("record_round", 1),
        ("stop_reason", 2),
        ("aggregate", 2),
        ("record_round", 2),
        ("stop_reason", 3),
    ]
    lines = engine.run_dir.read_metrics()
    assert [line["recorder_released"] for line in lines] == [True, True]
    assert all(line["recorder_clients"] == 1 for line in lines)
    for value in engine.state.params.values():  # the mechanism's aggregate was taken
        assert not np.any(value)


@pytest.mark.parametrize(("mechanism", "secure"), [(CentralDp, True), (DistributedDp, False)])
def test_a_mechanism_refuses_a_collection_it_cannot_work_with(
    mechanism: type[PrivacyMechanism], secure: bool
) -> None:
    with pytest.raises(ConfigError, match=r"dp\.mode"):
        mechanism.check_collection(secure)


def test_no_privacy_works_with_either_collection(tmp_path: Path) -> None:
    PrivacyMechanism.check_collection(True)
    PrivacyMechanism.check_collection(False)
    cfg = job(tmp_path)
    engine, _ = engine_for(cfg, NumpyClientApp(cfg), secure=secure_round())
    assert "round_failed" not in engine.run_round(1)
