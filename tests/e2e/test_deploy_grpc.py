"""The deployment with real processes on 127.0.0.1: ``fedpeft coordinator serve`` and
``fedpeft client run`` daemons on tiny data. kill -9 of the coordinator mid-run (it resumes,
the daemons reconnect by themselves), kill -9 of a daemon mid-round (the round completes
without it) and its restart (it rejoins as the same client)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedpeft.rundir import RunDir

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Deployment:
    """Starts and stops the processes of one test; kills leftovers at the end."""

    def __init__(self, root: Path, data: Path, rounds: int, per_round: int, *extra: str) -> None:
        self.root, self.data = root, data
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.coordinator_args = [
            "coordinator", "serve", "--model", "minilm", "--eval-data", str(data),
            "--port", str(self.port), "--clients-per-round", str(per_round),
            "--rounds", str(rounds), "--insecure-localhost",
            "--state", str(root / "state.db"), "--output", str(root / "run"),
            "--threads", "1", "--heartbeat-seconds", "1", "--liveness-seconds", "4",
            "--shutdown-grace", "10", *extra,
        ]  # fmt: skip
        # enrolment needs a secret by default; both sides read it from the environment
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "FEDPEFT_ENROLLMENT_TOKEN": "e2e-secret",
        }

    def _start(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = (self.root / log).open("ab")
        proc = subprocess.Popen([*FEDPEFT, *args], stdout=out, stderr=out, env=self.env)
        self.procs.append(proc)
        return proc

    def coordinator(self) -> subprocess.Popen[bytes]:
        return self._start(self.coordinator_args, "coordinator.log")

    def daemon(self, i: int, n: int) -> subprocess.Popen[bytes]:
        args = [
            "client", "run", "--coordinator", f"127.0.0.1:{self.port}",
            "--insecure-localhost", "--data", str(self.data), "--shard", f"{i}/{n}",
            "--state", str(self.root / f"client{i}"), "--threads", "1",
        ]  # fmt: skip
        return self._start(args, f"client{i}.log")

    def client_id(self, i: int) -> int:
        return int(
            json.loads((self.root / f"client{i}" / "identity.json").read_text())["client_id"]
        )

    def records(self) -> list[dict]:
        return RunDir(self.root / "run").read_metrics()

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if check():
                return
            time.sleep(0.2)
        logs = {p.name: p.read_text(errors="replace")[-1500:] for p in self.root.glob("*.log")}
        raise AssertionError(f"timed out waiting for {what}; logs: {logs}")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def deployment_factory(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []

    def make(data: Path, rounds: int, per_round: int, *extra: str) -> Deployment:
        made.append(Deployment(tmp_path, data, rounds, per_round, *extra))
        return made[-1]

    yield make
    for d in made:
        d.close()


# Four processes each load MiniLM: ~1.5 min on two idle cores, several under load.
@pytest.mark.slow
def test_coordinator_killed_mid_run_resumes_and_daemons_reconnect(
    tiny_text_file: Path, deployment_factory: Callable[..., Deployment]
) -> None:
    dep = deployment_factory(tiny_text_file, 3, 2)
    first = dep.coordinator()
    daemons = [dep.daemon(i, 2) for i in range(2)]
    dep.wait_for("round 1's metrics line", lambda: len(dep.records()) >= 1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    ids = [dep.client_id(i) for i in range(2)]
    second = dep.coordinator()  # the same command
    assert second.wait(timeout=300) == 0, dep.log("coordinator.log")[-3000:]
    for i, daemon in enumerate(daemons):
        assert daemon.wait(timeout=60) == 0, dep.log(f"client{i}.log")[-3000:]
    records = dep.records()
    assert [r["round"] for r in records] == [1, 2, 3]
    assert all(r["clients_ok"] == 2 and "eval_accuracy" in r and r["bytes_up"] > 0 for r in records)
    assert (dep.root / "run" / "adapter" / "adapter_config.json").is_file()
    assert [dep.client_id(i) for i in range(2)] == ids  # the daemons never re-registered
    assert "resuming after round" in dep.log("coordinator.log")
    status = subprocess.run(
        [*FEDPEFT, "coordinator", "status", "--state", str(dep.root / "state.db"), "--json"],
        capture_output=True, text=True, timeout=120, env=dep.env,
    )  # fmt: skip
    info = json.loads(status.stdout)
    assert info["status"] == "finished" and info["rounds_committed"] == 3
    assert info["clients_registered"] == 2


@pytest.mark.slow
def test_daemons_abandon_the_killed_coordinators_task(
    tiny_text_file: Path, deployment_factory: Callable[..., Deployment]
) -> None:
    # long local training: without the heartbeat's task_stale the daemons would finish the
    # dead coordinator's task before pulling the restarted one's
    dep = deployment_factory(tiny_text_file, 1, 2, "--local-steps", "3000")
    first = dep.coordinator()
    daemons = [dep.daemon(i, 2) for i in range(2)]
    for i in range(2):
        dep.wait_for(
            f"daemon {i} training", lambda i=i: "round 1 train" in dep.log(f"client{i}.log")
        )
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = dep.coordinator()
    for i in range(2):
        dep.wait_for(f"daemon {i} abandoning", lambda i=i: "abandoned" in dep.log(f"client{i}.log"))
    assert "not outstanding" not in dep.log("coordinator.log")  # nothing stale was pushed
    second.kill()  # the re-issued round's 3000 steps are not this test's business
    for daemon in daemons:
        daemon.kill()


@pytest.mark.slow
def test_daemon_killed_mid_round_is_dropped_and_rejoins_as_itself(
    tiny_text_file: Path, deployment_factory: Callable[..., Deployment]
) -> None:
    # 30 local steps keep a daemon busy long enough to be killed while training
    dep = deployment_factory(tiny_text_file, 2, 3, "--min-fit-clients", "2", "--local-steps", "30")
    coordinator = dep.coordinator()
    daemons = [dep.daemon(i, 3) for i in range(3)]
    dep.wait_for("daemon 2 training round 1", lambda: "round 1 train" in dep.log("client2.log"))
    victim_id = dep.client_id(2)
    daemons[2].send_signal(signal.SIGKILL)
    daemons[2].wait()
    dep.wait_for("round 1 without daemon 2", lambda: len(dep.records()) >= 1)
    first = dep.records()[0]
    assert first["clients_ok"] == 2 and first["clients_rejected"] == 1
    assert "disconnected" in first["rejected"][str(victim_id)]
    daemons[2] = dep.daemon(2, 3)  # the same --state: the same client
    assert coordinator.wait(timeout=300) == 0, dep.log("coordinator.log")[-3000:]
    for i, daemon in enumerate(daemons):
        assert daemon.wait(timeout=60) == 0, dep.log(f"client{i}.log")[-3000:]
    assert dep.client_id(2) == victim_id
    assert dep.log("client2.log").count("registered as client") == 1
    second = dep.records()[1]
    assert second["round"] == 2 and second["clients_ok"] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job", "check"),
    [
        ("[secagg]\nenabled = true\n", "secagg_survivors"),
        ('[dp]\nnoise_multiplier = 0.5\nclip = 0.5\nmode = "central"\n', "epsilon"),
    ],
    ids=["secagg", "central-dp"],
)
def test_secagg_and_dp_run_over_grpc(
    tiny_text_file: Path,
    deployment_factory: Callable[..., Deployment],
    tmp_path: Path,
    job: str,
    check: str,
) -> None:
    config = tmp_path / "job.toml"
    config.write_text(job)
    dep = deployment_factory(tiny_text_file, 2, 3, "--config", str(config))
    coordinator = dep.coordinator()
    daemons = [dep.daemon(i, 3) for i in range(3)]
    assert coordinator.wait(timeout=400) == 0, dep.log("coordinator.log")[-3000:]
    assert all(d.wait(timeout=60) == 0 for d in daemons)
    records = dep.records()
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["clients_ok"] == 3 and check in r for r in records)
