"""Ray backend: a smoke test on real Ray, equality with the in-process backend for the
same seed, and a worker that dies mid-round."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedpeft.client.app import LoraClientApp
from fedpeft.protocol.messages import TrainResult, TrainTask
from fedpeft.simulation import run_simulation
from integration.test_simulation import final_state, tiny_job

ray = pytest.importorskip("ray", reason="the `sim` extra (ray) is not installed")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    # workers import this test module (the dying app) by reference: put tests/ on their path
    tests_dir = str(Path(__file__).resolve().parents[1])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    yield
    ray.shutdown()


def test_ray_matches_inprocess(tmp_path: Path, tiny_text_file: Path) -> None:
    # with classifier calibration: the feature-statistics tasks run on the workers too
    common = {
        "federation.clients": 8,
        "federation.clients_per_round": 4,
        "federation.workers": 2,
        "federation.calibration": "ccvr",
    }
    local = tiny_job(tiny_text_file, tmp_path / "local", **common)
    remote = tiny_job(tiny_text_file, tmp_path / "ray", **common, **{"federation.backend": "ray"})
    run_simulation(local, export=False)
    summary = run_simulation(remote, export=False)
    a, b = final_state(tmp_path / "local"), final_state(tmp_path / "ray")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    assert all(r["clients_ok"] == 4 for r in lines)
    assert lines[-1]["calibration_clients"] == 8
    assert summary["final_eval_loss"] == pytest.approx(
        json.loads((tmp_path / "local" / "summary.json").read_text())["final_eval_loss"], rel=1e-4
    )


class _DyingApp(LoraClientApp):
    """Kills its own worker process the first time it serves client 0."""

    def train(self, task: TrainTask) -> TrainResult:
        marker = Path(self.cfg.output) / "died-once"
        if task.client_id == 0 and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("x")
            os._exit(1)
        return super().train(task)


def _dying_factory(cfg):  # module level: Ray pickles it by reference
    return lambda name: _DyingApp(cfg, name=name)


def test_worker_death_is_retried(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = tiny_job(
        tiny_text_file,
        tmp_path / "run",
        **{
            "federation.backend": "ray",
            "federation.clients": 4,
            "federation.clients_per_round": 4,
            "federation.rounds": 1,
            "federation.workers": 2,
            "federation.worker_retries": 1,
        },
    )
    run_simulation(cfg, app_factory=_dying_factory(cfg), export=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "run" / "died-once").exists()
    assert record["clients_ok"] == 4  # client 0 retried on a fresh worker
