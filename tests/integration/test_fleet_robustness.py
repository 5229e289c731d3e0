"""The fleet against clients that squat, stall, lie about their data or speak the wrong
TLS, on 127.0.0.1 with real gRPC and a real SQLite state database. Each hostile client is
written into its test; the guarantee it checks fails when the guard is removed."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedpeft.client.daemon import (
    ClientDaemon,
    Connection,
    DaemonError,
    DaemonOptions,
    check_local_data,
)
from fedpeft.compression import make_codec
from fedpeft.coordinator.grpc_backend import GrpcBackend
from fedpeft.coordinator.handlers import UNKNOWN_CLIENT, Fleet, FleetSettings
from fedpeft.coordinator.server import CoordinatorServer, TlsFiles
from fedpeft.coordinator.store import Store
from fedpeft.errors import ConfigError
from fedpeft.protocol import wire
from integration.test_grpc_server import _certs, code_of, connect, header, task_for

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]
JOB = {
    "job": {"data": {"max_length": 32}, "federation": {"min_fit_clients": 1}},
    "task": "classification",
    "label_names": ["0", "1"],
}
BASE = FleetSettings(
    open_enrollment=True,
    heartbeat_seconds=0.3,
    liveness_seconds=2.0,
    max_pull_wait=2.0,
    round_grace_min_seconds=0.5,
)


class Coordinator:
    """A fleet behind a started server; ``restart`` keeps the state database."""

    def __init__(self, root: Path, settings: FleetSettings, tls: TlsFiles | None = None) -> None:
        self.root, self.settings, self.tls = root, settings, tls
        self.port = 0
        self._start()

    def _start(self) -> None:
        self.fleet = Fleet(Store(self.root / "state.db"), self.settings, JOB, self.root / "art")
        self.server = CoordinatorServer(
            self.fleet, "127.0.0.1", self.port, tls=self.tls, insecure_localhost=not self.tls
        )
        self.port = self.server.start()

    def restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        self.server.stop()
        self.fleet.store.close()

    def connect(self, tmp: Path, **kw: Any) -> Connection:
        return connect(self.port, tmp, **kw)

    def enrolled(self, tmp: Path, name: str = "") -> tuple[Connection, int]:
        conn = self.connect(tmp)
        reg = conn.register(self.settings.enrollment_token or "", name)
        conn.authenticate(reg.client_id, reg.credential)
        return conn, reg.client_id


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    made: list[Coordinator] = []

    def start(settings: FleetSettings = BASE, tls: TlsFiles | None = None) -> Coordinator:
        made.append(Coordinator(tmp_path / f"c{len(made)}", settings, tls))
        return made[-1]

    yield start
    for c in made:
        c.stop()


class Squatter:
    """Registers and keeps heartbeating, never asks for work: holds a slot if it can."""

    def __init__(self, coord: Coordinator, tmp: Path) -> None:
        self.conn, self.client_id = coord.enrolled(tmp, "squatter")
        self.refused: list[grpc.StatusCode] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.conn.heartbeat()
            except grpc.RpcError as exc:
                self.refused.append(exc.code())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def daemon_options(coord: Coordinator, tmp: Path, data: str = "unused", **kw: Any) -> Any:
    base: dict[str, Any] = {
        "coordinator": f"127.0.0.1:{coord.port}",
        "data": data,
        "state": tmp / "daemon",
        "insecure_localhost": True,
        "backoff_base": 0.05,
        "backoff_cap": 0.2,
    }
    return DaemonOptions(**{**base, **kw})


def run_in_thread(daemon: ClientDaemon, timeout: float) -> BaseException | None:
    """``daemon.run()`` with a limit: what it raised, or a failure if it never stops."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # the test inspects it
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        daemon.stop.set()
        daemon.conn.cancel_pull()
        pytest.fail(f"the daemon was still retrying after {timeout}s")
    return caught[0] if caught else None


# ---- enrolment ------------------------------------------------------------------------
def test_enrolment_needs_a_secret_unless_opened_explicitly(tmp_path: Path) -> None:
    # mutation caught: dropping `check_enrollment()` from Fleet.__post_init__
    with pytest.raises(ConfigError, match=r"--enrollment-token.*--open-enrollment"):
        Fleet(Store(tmp_path / "s.db"), FleetSettings(), JOB, tmp_path / "art")
    with pytest.raises(ConfigError, match="either"):
        FleetSettings(enrollment_token="s3cret", open_enrollment=True)
    Fleet(Store(tmp_path / "t.db"), FleetSettings(enrollment_token="s3cret"), JOB, tmp_path / "a")


def test_squatters_expire_and_free_their_slots(make: Any, tmp_path: Path) -> None:
    """Two registrations that never ask for work fill a federation of two; once they
    expire the real client gets in, and the squatters' credentials are void."""
    coord = make(replace(BASE, max_clients=2, ready_within_seconds=2.0))
    squatters = [Squatter(coord, tmp_path) for _ in range(2)]
    real = coord.connect(tmp_path)
    with pytest.raises(grpc.RpcError) as full:
        real.register("", "real")
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.value.details() == "the federation is full: 2 of 2 clients live"
    # mutation caught: not calling Fleet.expire (the squatters hold their slots forever)
    time.sleep(2.5)
    reg = real.register("", "real")
    real.authenticate(reg.client_id, reg.credential)
    assert real.pull(0).status is wire.PullStatus.NO_TASK
    for squatter in squatters:
        squatter.close()
        assert grpc.StatusCode.UNAUTHENTICATED in squatter.refused
    assert code_of(lambda: squatters[0].conn.pull(0)) == grpc.StatusCode.UNAUTHENTICATED
    # the real client asked for work: it never expires
    time.sleep(2.5)
    real.heartbeat()


def test_the_cap_counts_live_clients(make: Any, tmp_path: Path) -> None:
    """A registration that goes silent stops counting after liveness_seconds."""
    coord = make(replace(BASE, max_clients=1))
    coord.enrolled(tmp_path, "gone")  # registers, never calls again
    late = coord.connect(tmp_path)
    assert code_of(lambda: late.register("", "")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # mutation caught: counting registered clients (store.count_clients) instead of live
    time.sleep(2.3)
    assert late.register("", "late").client_id > 0


def test_a_refused_daemon_logs_the_reason_and_stops(
    make: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    coord = make(replace(BASE, max_clients=1, ready_within_seconds=600))
    squatter = Squatter(coord, tmp_path)
    try:
        daemon = ClientDaemon(daemon_options(coord, tmp_path, max_refusals=3))
        with caplog.at_level(logging.WARNING, logger="fedpeft.client.daemon"):
            # mutation caught: retrying RESOURCE_EXHAUSTED without a bound (never stops)
            error = run_in_thread(daemon, timeout=20)
        assert isinstance(error, DaemonError)
        assert "refused register 3 times: the federation is full: 1 of 1 clients live" in str(error)
        assert "refused (1 of 3): the federation is full: 1 of 1 clients live" in caplog.text
        assert coord.fleet.store.count_clients() == 1  # the probe registered nothing
        # the command line: one line naming the reason, a non-zero exit
        proc = subprocess.run(
            [*FEDPEFT, "client", "run", "--coordinator", f"127.0.0.1:{coord.port}",
             "--insecure-localhost", "--data", "unused", "--state", str(tmp_path / "cli"),
             "--max-refusals", "2"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "the federation is full: 1 of 1 clients live" in last and "giving up" in last
    finally:
        squatter.close()


def test_unknown_and_unauthorised_ids_get_the_same_answer(make: Any, tmp_path: Path) -> None:
    """An attacker probing ids learns nothing: unknown id, wrong credential and an
    expired registration are refused alike."""
    coord = make(replace(BASE, ready_within_seconds=1.0))
    _, real = coord.enrolled(tmp_path)
    expired, gone = coord.enrolled(tmp_path)
    time.sleep(1.3)
    coord.fleet.connected(time.monotonic())  # the sweep runs on any look at the fleet
    prober = coord.connect(tmp_path)
    answers = set()
    for client_id, token in ((real, "guess"), (real + 1000, "guess"), (gone, "guess")):
        prober.authenticate(client_id, token)
        with pytest.raises(grpc.RpcError) as info:
            prober.heartbeat()
        answers.add((info.value.code(), info.value.details()))
    with pytest.raises(grpc.RpcError) as info:
        expired.heartbeat()  # its own, once valid, credential
    answers.add((info.value.code(), info.value.details()))
    # mutation caught: answering NOT_FOUND (or naming the id) for an unknown id
    assert answers == {(grpc.StatusCode.UNAUTHENTICATED, UNKNOWN_CLIENT)}


# ---- rounds close on time ----------------------------------------------------------------
def test_a_round_closes_after_the_grace_period_and_refuses_late_results(
    make: Any, tmp_path: Path
) -> None:
    """A client that takes its task and never answers does not hold the round: once
    min_fit_clients results are in, the others get a multiple of the median time."""
    settings = replace(BASE, liveness_seconds=10.0, round_grace_factor=4.0)
    coord = make(replace(settings, round_grace_min_seconds=0.2))
    fleet = coord.fleet
    (fast, a), (slow, b), (staller, c) = (coord.enrolled(tmp_path) for _ in range(3))
    backend = GrpcBackend(fleet, app=None, downlink=make_codec("dense"), round_timeout=60)  # type: ignore[arg-type]
    tasks = [task_for(a), task_for(b), task_for(c)]
    out: list[Any] = []
    start = time.monotonic()
    runner = threading.Thread(target=lambda: out.extend(backend.run(tasks)))
    runner.start()
    pulled = {cid: conn.pull(2).task for conn, cid in ((fast, a), (slow, b), (staller, c))}
    stalling = threading.Event()  # the staller heartbeats all along: it looks alive

    def beat() -> None:
        while not stalling.wait(0.2):
            try:
                staller.heartbeat(pulled[c].task_id)
            except grpc.RpcError:
                return

    threading.Thread(target=beat, daemon=True).start()
    time.sleep(1.0)
    fast.push(header(pulled[a], b"fast"), b"fast")  # ~1 s: the grace is then ~4 s
    time.sleep(1.0)
    # mutation caught: a grace of the floor only (0.2 s) drops this one
    slow.push(header(pulled[b], b"slow"), b"slow")
    runner.join(30)
    stalling.set()
    took = time.monotonic() - start
    # mutation caught: no grace period (the round waits round_timeout = 60 s)
    assert took < 20, f"the round took {took:.1f}s"
    ra, rb, rc = out
    assert ra.ok and rb.ok and not rc.ok
    assert "grace period" in (rc.error or "")
    late = header(pulled[c], b"late")
    with pytest.raises(grpc.RpcError) as info:
        staller.push(late, b"late")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale result" in (info.value.details() or "")
    assert staller.heartbeat(pulled[c].task_id).task_stale  # and told to stop
    samples = {
        s.labels["outcome"]: s.value
        for metric in fleet.metrics.registry.collect()
        if metric.name == "fedpeft_results"
        for s in metric.samples
        if s.name == "fedpeft_results_total"
    }
    assert samples["late"] == 1 and samples["dropped"] == 1 and samples["accepted"] == 2


def test_the_quorum_is_min_fit_clients(make: Any, tmp_path: Path) -> None:
    """With min_fit_clients = 2 the grace starts only at the second result."""
    coord = make(replace(BASE, round_grace_min_seconds=0.2, round_grace_factor=0.1))
    fleet = coord.fleet
    (one, a), (two, b) = (coord.enrolled(tmp_path) for _ in range(2))
    backend = GrpcBackend(fleet, None, make_codec("dense"), round_timeout=30, min_fit_clients=2)  # type: ignore[arg-type]
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.extend(backend.run([task_for(a), task_for(b)])))
    runner.start()
    ta, tb = one.pull(2).task, two.pull(2).task
    assert ta is not None and tb is not None
    one.push(header(ta, b"one"), b"one")
    time.sleep(1.5)  # mutation caught: a quorum of 1 closes the round before this push
    two.heartbeat()
    two.push(header(tb, b"two"), b"two")
    runner.join(10)
    assert [r.ok for r in out] == [True, True]


# ---- a restarted coordinator takes finished work ------------------------------------------
def test_a_restarted_coordinator_takes_work_finished_before_it_reposted(
    make: Any, tmp_path: Path
) -> None:
    """The race of issue 27: the daemon finishes the dead coordinator's task just after the
    new one starts listening but before it posts the round again. The result is held and
    counts when the very same task is posted; no retraining."""
    coord = make()
    conn, cid = coord.enrolled(tmp_path)
    coord.fleet.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    old = conn.pull(1).task
    assert old is not None
    coord.restart()  # kill -9 while the daemon trains; the same state database
    payload = b"trained before the crash"
    # mutation caught: refusing a push for a task not posted yet (FAILED_PRECONDITION)
    assert conn.push(header(old, payload), payload)
    same = coord.fleet.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    assert same.wire.task_id == old.task_id
    assert same.result is not None and same.result.payload == payload
    assert coord.fleet.store.has_result(1, "train", cid)
    assert conn.pull(0.2).status is wire.PullStatus.NO_TASK  # nothing to train again
    # a second push of the same result is a replay
    assert code_of(lambda: conn.push(header(old, payload), payload)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )


def test_a_held_result_for_another_task_is_dropped(make: Any, tmp_path: Path) -> None:
    coord = make()
    conn, cid = coord.enrolled(tmp_path)
    coord.fleet.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    old = conn.pull(1).task
    assert old is not None
    coord.restart()
    # a hostile client cannot park results for rounds the coordinator is not about to run
    ahead = header(old, b"x", round=5, task_id="f" * 32)
    assert code_of(lambda: conn.push(ahead, b"x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert conn.push(header(old, b"old"), b"old")
    # the restarted coordinator asks something else (another global adapter)
    other = coord.fleet.post(task_for(cid, downlink=b"new"), time.monotonic() + 60, 0.0)
    assert other.result is None and not coord.fleet.store.has_result(1, "train", cid)
    assert conn.pull(1).task is not None  # it trains the new task


# ---- data checked before registration ------------------------------------------------
def test_unusable_data_never_registers(make: Any, tmp_path: Path) -> None:
    coord = make()
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("0 good\n7 a label the job does not have\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for data, needle in ((foreign, "not among|not one of"), (empty, "empty|no examples")):
        daemon = ClientDaemon(daemon_options(coord, tmp_path, str(data), state=tmp_path / "d"))
        error = run_in_thread(daemon, timeout=20)
        assert isinstance(error, DaemonError), error
        assert str(data) in str(error)
        # mutation caught: registering before the data is checked
        assert coord.fleet.store.count_clients() == 0, needle


def test_a_subset_of_the_jobs_labels_is_usable(tmp_path: Path) -> None:
    one_class = tmp_path / "pos.txt"
    one_class.write_text("".join(f"1 a fine example {i}\n" for i in range(6)))
    # mutation caught: requiring the local labels to equal the job's
    assert check_local_data(JOB, str(one_class), (0, 1)) == ["1"]
    two = tmp_path / "two.txt"
    two.write_text("1 only\n0 two\n")
    with pytest.raises(DaemonError, match="shard 2/3"):
        check_local_data(JOB, str(two), (2, 3))


def test_a_one_class_daemon_joins_with_the_jobs_head(make: Any, tmp_path: Path) -> None:
    """Label skew: a daemon holding only class "1" registers, builds the job's two-label
    head (label ids as the job's), and trains a task whose update has the job's shapes."""
    from fedpeft.client.app import LoraClientApp
    from fedpeft.config import JobConfig

    data = tmp_path / "pos.txt"
    data.write_text("".join(f"1 a fine example number {i}\n" for i in range(8)))
    job = JobConfig.from_dict({"model": {"name": "minilm"}}).to_dict()
    job.pop("output", None)
    coord = make()
    coord.fleet.job_config = {"job": job, "task": "classification", "label_names": ["0", "1"]}
    daemon = ClientDaemon(daemon_options(coord, tmp_path, str(data)))
    daemon.identify()
    daemon.load_app()
    assert coord.fleet.store.count_clients() == 1
    assert isinstance(daemon.app, LoraClientApp)
    assert daemon.app.adapted.label_names == ["0", "1"]
    assert set(daemon.app.train_data.labels.tolist()) == {1}  # "1" keeps the job's id


# ---- TLS and plaintext on the daemon's side --------------------------------------------
def test_a_tls_handshake_failure_stops_the_daemon_with_one_line(make: Any, tmp_path: Path) -> None:
    certs = _certs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca = _certs(other)["ca.pem"]
    coord = make(tls=TlsFiles(certs["server.pem"], certs["server.key"]))
    opts = daemon_options(coord, tmp_path, insecure_localhost=False, tls_ca=wrong_ca)
    # mutation caught: treating the handshake failure as UNAVAILABLE (retried forever)
    error = run_in_thread(ClientDaemon(opts), timeout=20)
    assert isinstance(error, DaemonError)
    message = str(error)
    assert "\n" not in message
    assert f"TLS handshake with the coordinator 127.0.0.1:{coord.port} failed" in message
    assert "--tls-ca" in message


def test_plaintext_to_a_remote_host_names_tls_ca(tmp_path: Path) -> None:
    opts = DaemonOptions("10.1.2.3:50051", "x", tmp_path, insecure_localhost=True)
    with pytest.raises(ConfigError, match="--tls-ca") as info:
        Connection(opts)
    assert "--tls-cert" not in str(info.value)
    missing = DaemonOptions("example.org:50051", "x", tmp_path, tls_ca=tmp_path / "no-ca.pem")
    with pytest.raises(ConfigError, match=r"--tls-ca.*no-ca\.pem"):
        Connection(missing)


# ---- expiry and the live cap survive a coordinator restart -----------------------------
def served(call: Any, within: float = 5.0) -> Any:
    """``call()``, retried while the restarted server is not reachable yet (UNAVAILABLE),
    as a daemon's backoff would."""
    end = time.monotonic() + within
    while True:
        try:
            result = call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                raise
            time.sleep(0.1)
            continue
        if result != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
            return result
        time.sleep(0.1)


def test_an_expired_registration_stays_expired_after_a_restart(make: Any, tmp_path: Path) -> None:
    """A squatter whose registration expired cannot come back by waiting for a restart:
    its credential stays void and its row is gone from the state database."""
    coord = make(replace(BASE, ready_within_seconds=1.0))
    squatter, cid = coord.enrolled(tmp_path, "squatter")
    squatter.heartbeat()
    time.sleep(1.3)
    assert code_of(squatter.heartbeat) == grpc.StatusCode.UNAUTHENTICATED
    coord.restart()  # the same --state
    # mutation caught: expiry kept in memory only (Fleet.expire not calling remove_client)
    assert served(lambda: code_of(squatter.heartbeat)) == grpc.StatusCode.UNAUTHENTICATED
    assert cid not in coord.fleet.store.client_ids()
    assert coord.fleet.store.count_clients() == 0


def test_registrations_expire_on_their_original_schedule_across_a_restart(
    make: Any, tmp_path: Path
) -> None:
    """A restart does not give a squatter a fresh ``ready_within_seconds``: it expires when
    it would have without the restart, and the real client then gets its slot."""
    coord = make(replace(BASE, max_clients=1, ready_within_seconds=3.0))
    squatter = Squatter(coord, tmp_path)  # keeps heart-beating through the restart
    registered = time.monotonic()
    try:
        time.sleep(1.8)
        coord.restart()
        real = coord.connect(tmp_path)
        # the squatter is live (it still heart-beats) and not yet expired: the cap holds
        refused = served(lambda: code_of(lambda: real.register("", "real")))
        assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
        time.sleep(max(0.0, registered + 3.5 - time.monotonic()))
        # mutation caught: counting expiry from the first call after the restart (the
        # squatter would hold its slot until ~4.8 s)
        reg = real.register("", "real")
        assert reg.client_id > 0 and reg.client_id != squatter.client_id
    finally:
        squatter.close()
    assert grpc.StatusCode.UNAUTHENTICATED in squatter.refused
    assert squatter.client_id not in coord.fleet.store.client_ids()


def test_a_client_ready_before_a_restart_never_expires(make: Any, tmp_path: Path) -> None:
    """A daemon that asked for work before the crash and then trains a long task (it only
    heart-beats, it does not pull) keeps its registration after the restart."""
    coord = make(replace(BASE, ready_within_seconds=1.0))
    daemon, cid = coord.enrolled(tmp_path, "trainer")
    assert daemon.pull(0).status is wire.PullStatus.NO_TASK  # ready
    coord.restart()
    served(daemon.heartbeat)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # training: heartbeats only, twice ready_within
        # mutation caught: readiness kept in memory only (take_task not calling
        # mark_ready): the restarted coordinator expires the trainer mid-task
        daemon.heartbeat()
        time.sleep(0.2)
    assert cid in coord.fleet.store.client_ids()
    assert daemon.pull(0).status is wire.PullStatus.NO_TASK


def test_the_cap_counts_clients_live_before_a_restart(make: Any, tmp_path: Path) -> None:
    """Right after a restart the clients that were live a moment before still hold their
    slots (they reconnect within seconds); a newcomer cannot take one meanwhile. Once a
    silent one is past ``liveness_seconds`` its slot is free."""
    coord = make(replace(BASE, max_clients=1))
    daemon, _ = coord.enrolled(tmp_path, "live")
    daemon.pull(0)
    time.sleep(BASE.heartbeat_seconds + 0.1)
    daemon.heartbeat()  # its last call before the crash reaches the store
    coord.restart()
    newcomer = coord.connect(tmp_path)
    # mutation caught: a restarted fleet that does not read last_seen back (live = 0)
    with pytest.raises(grpc.RpcError) as full:
        served(lambda: newcomer.register("", "newcomer"))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.value.details() == "the federation is full: 1 of 1 clients live"
    time.sleep(BASE.liveness_seconds + 0.3)  # the old client never came back
    assert newcomer.register("", "newcomer").client_id > 0


def test_a_round_run_again_after_a_restart_keeps_the_clients_it_accepted(
    make: Any, tmp_path: Path
) -> None:
    """The coordinator dies mid-round after accepting client A's update. Run again, the
    round must count A's stored update, not draw a new cohort that leaves it out (its
    work acknowledged, stored and never aggregated)."""
    from fedpeft.coordinator.grpc_backend import LiveClientSampler

    coord = make()
    done, a = coord.enrolled(tmp_path, "answered")
    others = [coord.enrolled(tmp_path, f"other{i}") for i in range(3)]
    coord.fleet.post(task_for(a), time.monotonic() + 60, time.monotonic())
    task = done.pull(1).task
    assert task is not None and done.push(header(task, b"done"), b"done")
    coord.restart()
    for conn, _ in others:  # ready after the restart; A is not (it has nothing to do)
        served(lambda conn=conn: conn.pull(0))
    sampler = LiveClientSampler(coord.fleet, 1, seed=0, wait_timeout=2)
    assert coord.fleet.store.held_results(1) == [a]
    assert sampler.sample(1) == [a]
