"""Secure aggregation on the Ray backend: each client's protocol stages of a round run on
the worker that holds its secrets, dropouts included, and the aggregate equals the
in-process backend's (both equal the plain weighted mean up to quantisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import NumpyClientApp
from fedpeft.config import JobConfig
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation

ray = pytest.importorskip("ray", reason="the `sim` extra (ray) is not installed")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    tests_dir = str(Path(__file__).resolve().parents[1])  # workers import conftest
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    yield
    ray.shutdown()


def _job(out: Path, backend: str) -> JobConfig:
    settings: dict[str, Any] = {
        "output": str(out),
        "federation.clients": 12,
        "federation.clients_per_round": 6,
        "federation.rounds": 2,
        "federation.partition": "iid",
        "federation.backend": backend,
        "federation.workers": 2,
        "data.max_train_examples": 120,
        "secagg.enabled": True,
        "secagg.tolerated_dropout": 0.34,
        "secagg.dropout_rate": 0.34,
        "secagg.clip_range": 0.1,
        "secagg.bits": 40,
    }
    return JobConfig().replace(settings)


def _params(cfg: JobConfig) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(Path(cfg.output) / "checkpoint" / "global.safetensors")))


def test_secure_rounds_on_ray_match_inprocess(tmp_path: Path) -> None:
    local = _job(tmp_path / "local", "inprocess")
    remote = _job(tmp_path / "ray", "ray")
    run_simulation(local, app_factory=lambda _n: NumpyClientApp(local), export=False)
    run_simulation(remote, app_factory=lambda _n: NumpyClientApp(remote), export=False)
    records = RunDir(remote.output).read_metrics()
    assert [r["round"] for r in records] == [1, 2]
    assert all(len(r["secagg_dropped"]) == 2 and "round_failed" not in r for r in records)
    assert all(r["secagg_survivors"] == 6 for r in records)  # vanished after masking
    a, b = _params(local), _params(remote)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
