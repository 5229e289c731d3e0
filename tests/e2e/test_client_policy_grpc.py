"""The client policy over the real transport on 127.0.0.1: a daemon whose policy refuses a
task answers with the reason, and the coordinator's gRPC service, backend and collection
log it and record it in the round; bad policy or TLS flags stop ``fedpeft client run``
with one line, exit 2, and no state folder."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpeft.client.daemon import ClientDaemon, DaemonOptions
from fedpeft.compression import FULL_WEIGHTS_CODEC, make_codec
from fedpeft.config.client import ClientPolicy
from fedpeft.coordinator.collect import Collected, PlainCollection, RoundContext
from fedpeft.coordinator.grpc_backend import GrpcBackend
from fedpeft.coordinator.handlers import Fleet, FleetSettings
from fedpeft.coordinator.privacy import NoPrivacy
from fedpeft.coordinator.server import CoordinatorServer
from fedpeft.coordinator.store import Store
from fedpeft.errors import ConfigError
from fedpeft.protocol.messages import ClientState, TaskSettings, TrainTask

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]
SLOW = pytest.mark.slow  # field checks also covered in-process (tests/unit/test_client_policy.py)
SETTINGS = FleetSettings(
    open_enrollment=True,
    heartbeat_seconds=0.5,
    liveness_seconds=20.0,
    max_pull_wait=5.0,
    inline_downlink_bytes=1 << 16,
    max_update_bytes=1 << 20,
    registrations_per_minute=60,
    registration_burst=6,
)


@pytest.fixture
def coordinator(tmp_path: Path) -> Any:
    store = Store(tmp_path / "state.db")
    job = {"job": {"train": {"lr": 0.01}}, "task": "classification", "label_names": ["0", "1"]}
    fleet = Fleet(store, SETTINGS, job, tmp_path / "artifacts")
    server = CoordinatorServer(fleet, "127.0.0.1", 0, insecure_localhost=True)
    port = server.start()
    yield fleet, port
    server.stop()
    store.close()


def one_round(fleet: Fleet, daemon: ClientDaemon, settings: TaskSettings) -> Collected:
    """The coordinator collects one plain round from ``daemon`` over gRPC: its backend
    posts the task, the daemon pulls and answers it."""
    weights = {"w": np.zeros(4, np.float32)}
    task = TrainTask(
        round=1,
        client_id=daemon.client_id,
        seed=0,
        downlink=FULL_WEIGHTS_CODEC.encode(weights),
        downlink_is_delta=False,
        version=1,
        state=ClientState(),
        settings=settings,
    )
    backend = GrpcBackend(fleet, app=None, downlink=make_codec("dense"), round_timeout=30)  # type: ignore[arg-type]
    ctx = RoundContext(
        round_num=1,
        backend=backend,
        uplink=make_codec("dense"),
        shapes={"w": (4,)},
        min_fit_clients=1,
        needs_sq_norm=False,
        plan_encoding=NoPrivacy().secure_plan,
    )
    out: list[Collected] = []
    runner = threading.Thread(target=lambda: out.append(PlainCollection().collect(ctx, [task])))
    daemon.conn.heartbeat()  # live: the backend drops a client silent for too long
    runner.start()
    end = time.monotonic() + 10
    while not fleet.pending and time.monotonic() < end:  # the task is posted
        time.sleep(0.05)
    reply = daemon.conn.pull(5.0)
    assert reply.task is not None, reply
    daemon.handle(reply.task)
    runner.join(30)
    assert out, "the coordinator's round did not finish"
    return out[0]


@pytest.mark.parametrize(
    ("policy", "settings", "needle"),
    [
        (ClientPolicy(require_secagg=True), TaskSettings(lr=0.01), "client.policy.require_secagg"),
        (
            ClientPolicy(max_epsilon=8.0),
            TaskSettings(lr=0.01),
            "declares no differential privacy",
        ),
    ],
    ids=["no secagg", "no dp"],
)
def test_a_refused_task_is_logged_and_recorded_by_the_coordinator(
    coordinator: Any,
    tiny_text_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    policy: ClientPolicy,
    settings: TaskSettings,
    needle: str,
) -> None:
    """Prepare: a real gRPC coordinator and a daemon registered with it (real enrolment,
    its data checked against the job). Execute: one plain round. Assert: the daemon
    refused before training (no model was ever loaded) and the coordinator's log line and
    round record carry the reason. Mutation tried: the daemon's ``_train`` without the
    guard — the daemon then tries to train, and the refusal never reaches the record."""
    fleet, port = coordinator
    opts = DaemonOptions(
        coordinator=f"127.0.0.1:{port}",
        data=str(tiny_text_file),
        state=tmp_path / "client",
        insecure_localhost=True,
        policy=policy,
    )
    daemon = ClientDaemon(opts)
    daemon.identify()
    with caplog.at_level(logging.WARNING, logger="fedpeft.coordinator"):
        collected = one_round(fleet, daemon, settings)
    reason = collected.record["rejected"][str(daemon.client_id)]
    assert reason.startswith("client policy:") and needle in reason
    assert collected.record["clients_ok"] == 0
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("fedpeft.coordinator")]
    assert any("client policy" in m and needle in m for m in logged), logged
    assert daemon.app is None  # refused before any model or data was touched
    daemon.conn.close()


# ---- bad flags: one line, exit 2, nothing created ---------------------------------------------
def fedpeft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDPEFT, *args], capture_output=True, text=True, timeout=120)


def one_line_exit_2(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--tls-ca", "{tmp}/no-such-ca.pem"], ["--tls-ca", "no-such-ca.pem"]),
        pytest.param(
            ["--tls-cert", "{tmp}/no-cert.pem", "--tls-key", "{tmp}/no-key.pem"],
            ["--tls-cert", "no-cert.pem"],
            marks=pytest.mark.slow,  # ~7 s a process; the CA case covers the order
        ),
        (["--policy", "{tmp}/no-policy.toml"], ["--policy", "no-policy.toml"]),
        pytest.param(["--max-epsilon", "-1"], ["client.policy.max_epsilon"], marks=SLOW),
        pytest.param(
            ["--allowed-codecs", "dense,zip"], ["client.policy.allowed_codecs", "zip"], marks=SLOW
        ),
    ],
    ids=["missing ca", "missing cert", "missing policy", "bad epsilon", "unknown codec"],
)
def test_bad_flags_stop_the_daemon_before_it_creates_its_state(
    tiny_text_file: Path, tmp_path: Path, extra: list[str], needles: list[str]
) -> None:
    """Issue 27's leftover: a missing TLS file used to leave ``--state`` behind.
    Mutation tried: the daemon creating its state folder before its connection checks
    the TLS files (the old order) — the state folder then exists."""
    state = tmp_path / "client-state"
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    proc = fedpeft(
        "client", "run", "--coordinator", "example.org:443", "--data", str(tiny_text_file),
        "--state", str(state), *args,
    )  # fmt: skip
    one_line_exit_2(proc, *needles)
    assert not state.exists()


def test_a_missing_tls_file_leaves_no_state_in_process(tmp_path: Path) -> None:
    state = tmp_path / "client-state"
    opts = DaemonOptions(
        coordinator="example.org:443",
        data="unused",
        state=state,
        tls_ca=tmp_path / "missing-ca.pem",
    )
    with pytest.raises(ConfigError, match="--tls-ca"):
        ClientDaemon(opts)
    assert not state.exists()
