"""Client-level DP through the round engine (model-free client app): epsilon on every
metrics line equals dp-accounting's answer for the recorded rounds, the budget stops a
fixed-noise run at the issue's reference round, central noise has the right scale, the
clip bounds what is sent with error feedback on, and a run killed at random points never
reports less epsilon than it spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ROOT, NumpyClientApp
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.privacy.accountant import RoundPrivacy, epsilon
from fedpeft.privacy.clipping import clip_l2
from fedpeft.privacy.ledger import PrivacyLedger
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation


def dp_job(tmp_path: Path, **settings: Any) -> JobConfig:
    base: dict[str, Any] = {
        "output": str(tmp_path / "run"),
        "federation.clients": 200,
        "federation.clients_per_round": 20,
        "federation.rounds": 3,
        "federation.partition": "iid",
        "data.max_train_examples": 400,
    }
    base.update(settings)
    return JobConfig().replace(base)


def run(cfg: JobConfig, resume: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    summary = run_simulation(
        cfg, resume=resume, app_factory=lambda _n: NumpyClientApp(cfg), export=False
    )
    return summary, RunDir(cfg.output).read_metrics()


def test_central_dp_reports_epsilon_every_round(tmp_path: Path) -> None:
    cfg = dp_job(tmp_path, **{"dp.epsilon": 8.0, "dp.delta": 1e-5})
    summary, records = run(cfg)
    assert [r["round"] for r in records] == [1, 2, 3]
    # dp_noise_multiplier is dp-accounting's (std / the sum's sensitivity, 2C for fixed-size
    # cohorts); RoundPrivacy takes std / C
    z = records[0]["dp_noise_multiplier"]
    assert records[0]["dp_noise_std"] == pytest.approx(2 * z * cfg.dp.clip)
    one = RoundPrivacy(2 * z, "fixed", 200, 20)
    for i, r in enumerate(records, start=1):
        assert r["epsilon"] == pytest.approx(epsilon([one] * i, 1e-5))
        assert r["dp_clip"] == cfg.dp.clip
    assert 0 < records[-1]["epsilon"] <= 8.0
    assert summary["epsilon"] == records[-1]["epsilon"]
    assert len(PrivacyLedger(tmp_path / "run" / "privacy.db").entries()) == 3


def test_distributed_dp_through_secure_aggregation(tmp_path: Path) -> None:
    """With --secagg the clients add discrete Gaussian noise; the ledger holds the
    Kairouz–Liu–Steinke events and epsilon stays within the target."""
    cfg = dp_job(
        tmp_path,
        **{"federation.rounds": 2, "dp.epsilon": 8.0, "dp.delta": 1e-5, "secagg.enabled": True},
    )
    summary, records = run(cfg)
    assert [r["round"] for r in records] == [1, 2]
    assert all(0 < r["epsilon"] <= 8.0 for r in records)
    assert records[1]["epsilon"] > records[0]["epsilon"]
    assert all(r["secagg_survivors"] == 20 for r in records)
    ledger = PrivacyLedger(tmp_path / "run" / "privacy.db")
    events = ledger.rounds()
    ledger.close()
    assert {e.mechanism for e in events} == {"discrete_gaussian"}
    assert summary["epsilon"] == pytest.approx(epsilon(events, 1e-5))


def test_fixed_noise_stops_when_the_budget_is_spent(tmp_path: Path) -> None:
    # issue 16's reference: 20 of 200, z = 1 (std / sensitivity), delta 1e-5 -> 2.28 / 2.77 /
    # 3.02: stop after 2
    cfg = dp_job(
        tmp_path,
        **{
            "federation.rounds": 50,
            "dp.epsilon": 3.0,
            "dp.delta": 1e-5,
            "dp.noise_multiplier": 1.0,
        },
    )
    summary, records = run(cfg)
    assert [r["round"] for r in records] == [1, 2]
    assert records[-1]["epsilon"] == pytest.approx(2.77, abs=0.01)
    assert "budget" in summary["stopped"] and "3" in summary["stopped"]


def test_unreachable_target_is_refused_before_training(tmp_path: Path) -> None:
    cfg = dp_job(
        tmp_path,
        **{"federation.rounds": 100000, "dp.epsilon": 0.01, "dp.delta": 1e-6},
    )
    with pytest.raises(ConfigError, match=r"dp\.epsilon"):
        run(cfg)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"dp.epsilon": 0.0}, "dp.epsilon"),
        ({"dp.epsilon": 1.0, "dp.delta": 0.01}, "dp.delta"),
        ({"dp.noise_multiplier": -1.0}, "dp.noise_multiplier"),
        ({"dp.epsilon": 1.0, "dp.clip": 0.0}, "dp.clip"),
        ({"dp.epsilon": 1.0, "federation.strategy": "fedexp"}, "federation.strategy"),
        ({"dp.epsilon": 1.0, "federation.calibration": "ccvr"}, "federation.calibration"),
        ({"dp.mode": "distributed"}, "dp.mode"),
    ],
)
def test_bad_dp_settings_name_the_field(
    tmp_path: Path, settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        dp_job(tmp_path, **settings)


def test_central_noise_has_the_calibrated_scale(tmp_path: Path) -> None:
    from fedpeft.coordinator.dp import DpController

    ctl = DpController(
        noise_multiplier=2.0,
        clip=0.5,
        delta=1e-5,
        distributed=False,
        sampling="fixed",
        population=100,
        sample_size=10,
        accountant="rdp",
        ledger_path=tmp_path / "l.db",
    )
    zero = [{"w": np.zeros(200_000, np.float32)} for _ in range(10)]
    mean, _ = ctl.noisy_mean(zero, 1)
    # noise on the sum is N(0, (z C)^2); the mean divides by k = 10
    assert np.std(mean["w"]) == pytest.approx(2.0 * 0.5 / 10, rel=0.02)
    assert abs(float(np.mean(mean["w"]))) < 5 * 0.1 / np.sqrt(200_000)


def test_clip_bounds_what_is_sent_with_error_feedback(tmp_path: Path) -> None:
    """Error feedback adds the carried residual before the clip: the decoded update a
    client sends never exceeds C, round after round."""
    from fedpeft.client.mods import ModContext, reject_nonfinite
    from fedpeft.client.update import UpdateSender
    from fedpeft.protocol.codecs import uplink_codec
    from fedpeft.protocol.messages import ClientState, TaskSettings, TrainTask

    cfg = dp_job(
        tmp_path,
        **{"codec.name": "compeft", "codec.density": 0.2, "codec.error_feedback": True},
    )
    codec = uplink_codec(cfg.codec)
    sender = UpdateSender(codec, [reject_nonfinite], cfg.codec)
    state = ClientState()
    rng = np.random.default_rng(0)
    for round_num in range(1, 6):
        delta = {"w": rng.standard_normal(500).astype(np.float32)}  # norm ~22 >> C
        task = TrainTask(round_num, 1, 0, b"", False, 0, state, settings=TaskSettings(dp_clip=0.3))
        ctx = ModContext(1, round_num, 10, state)
        payload = sender.encode(task, delta, ctx)
        sent = codec.decode(payload)
        assert float(np.linalg.norm(sent["w"])) <= 0.3 * (1 + 1e-5)
        assert state.residual is not None


def test_clip_l2_scales_the_whole_update() -> None:
    d = {"a": np.full(4, 3.0, np.float32), "b": np.full(9, 4.0 / 3.0, np.float32)}
    clipped, norm, factor = clip_l2(d, 1.0)
    assert factor < 1.0 and norm == pytest.approx(np.sqrt(52.0))
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in clipped.values()))
    assert norm == pytest.approx(1.0, rel=1e-6)


CRASHER = """
import os, random, sys
sys.path.insert(0, {tests!r})
from conftest import NumpyClientApp
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import EngineHooks
from fedpeft.simulation import run_simulation
cfg = JobConfig().replace({settings!r})
calls = [0]
limit = int(sys.argv[1])
def bump(*_a):
    calls[0] += 1
    if calls[0] >= limit:
        os._exit(9)
hooks = EngineHooks(on_round_start=bump, on_client_done=bump, on_round_end=bump)
run_simulation(cfg, resume=sys.argv[2] == "1", hooks=hooks,
               app_factory=lambda _n: NumpyClientApp(cfg), export=False)
"""


def test_killed_runs_never_under_count_epsilon(tmp_path: Path) -> None:
    """Kill the process at random points (os._exit: no cleanup), resume, repeat; at the
    end the reported epsilon covers every round whose adapter was ever checkpointed, and
    equals the accountant's answer for the ledger's events."""
    settings = {
        "output": str(tmp_path / "run"),
        "federation.clients": 200,
        "federation.clients_per_round": 20,
        "federation.rounds": 4,
        "federation.partition": "iid",
        "data.max_train_examples": 400,
        "dp.epsilon": 8.0,
        "dp.delta": 1e-5,
    }
    script = tmp_path / "crash.py"
    script.write_text(CRASHER.format(tests=str(ROOT / "tests"), settings=settings))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rng = np.random.default_rng(1)
    resume = "0"
    for _ in range(4):
        limit = int(rng.integers(3, 40))
        proc = subprocess.run(
            [sys.executable, str(script), str(limit), resume], env=env, capture_output=True
        )
        assert proc.returncode in (0, 9), proc.stderr.decode()[-2000:]
        if (tmp_path / "run" / "checkpoint" / "engine.json").is_file():
            resume = "1"
        if proc.returncode == 0:
            break
    cfg = JobConfig().replace(settings)
    summary, records = run(cfg, resume=resume == "1")
    ledger = PrivacyLedger(tmp_path / "run" / "privacy.db")
    events = ledger.rounds()
    ledger.close()
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert len(events) >= 4  # a round re-run after a crash is counted again
    assert summary["epsilon"] == pytest.approx(epsilon(events, 1e-5))
    assert summary["epsilon"] >= epsilon(events[:4], 1e-5)
    engine_json = json.loads((tmp_path / "run" / "checkpoint" / "engine.json").read_text())
    assert engine_json["round"] == 4
