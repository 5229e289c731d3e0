"""The coordinator's gRPC service on 127.0.0.1, driven by the daemon's own Connection:
registration, auth, long-poll, chunked push, artifacts, the backend's deadlines, TLS."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedpeft.client.daemon import Connection, DaemonError, DaemonOptions
from fedpeft.compression import FULL_WEIGHTS_CODEC, make_codec
from fedpeft.coordinator.grpc_backend import GrpcBackend, LiveClientSampler
from fedpeft.coordinator.handlers import Fleet, FleetSettings
from fedpeft.coordinator.server import CoordinatorServer, TlsFiles
from fedpeft.coordinator.store import Store
from fedpeft.errors import ConfigError
from fedpeft.protocol import wire
from fedpeft.protocol.messages import ClientState, TaskSettings, TrainTask
from fedpeft.protocol.version import PROTOCOL_VERSION

SETTINGS = FleetSettings(
    open_enrollment=True,
    heartbeat_seconds=0.5,
    liveness_seconds=2.0,
    max_pull_wait=5.0,
    inline_downlink_bytes=1000,
    max_update_bytes=3 << 20,
    registrations_per_minute=60,
    registration_burst=6,
)


def make_fleet(tmp_path: Path, settings: FleetSettings = SETTINGS) -> Fleet:
    store = Store(tmp_path / "state.db")
    job = {"job": {"train": {"lr": 0.01}}, "task": "classification", "label_names": ["0", "1"]}
    return Fleet(store, settings, job, tmp_path / "artifacts")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = make_fleet(tmp_path)
    yield f
    f.store.close()


@pytest.fixture
def port(fleet: Fleet) -> Iterator[int]:
    server = CoordinatorServer(fleet, "127.0.0.1", 0, insecure_localhost=True)
    yield server.start()
    server.stop()


def connect(port: int, tmp_path: Path, **kw: Any) -> Connection:
    opts = DaemonOptions(
        coordinator=kw.pop("coordinator", f"127.0.0.1:{port}"),
        data="unused",
        state=tmp_path,
        insecure_localhost=kw.pop("insecure_localhost", True),
        **kw,
    )
    return Connection(opts)


def enrolled(port: int, tmp_path: Path, name: str = "") -> tuple[Connection, int]:
    conn = connect(port, tmp_path)
    reg = conn.register("", name)
    conn.authenticate(reg.client_id, reg.credential)
    return conn, reg.client_id


def task_for(client_id: int, round_num: int = 1, downlink: bytes = b"weights") -> TrainTask:
    return TrainTask(
        round=round_num,
        client_id=client_id,
        seed=7,
        downlink=downlink,
        downlink_is_delta=False,
        version=round_num - 1,
        state=ClientState(),
        settings=TaskSettings(lr=0.5),
    )


def header(pulled: wire.WireTask, payload: bytes, **changes: Any) -> wire.ResultHeader:
    fields: dict[str, Any] = {
        "task_id": pulled.task_id,
        "round": pulled.round,
        "kind": pulled.kind,
        "num_examples": 12,
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "metrics": {"train_loss": 0.5},
    }
    fields.update(changes)
    return wire.ResultHeader(**fields)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_register_pull_push_roundtrip(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conn, cid = enrolled(port, tmp_path, "laptop")
    assert conn.pull(0.1).status is wire.PullStatus.NO_TASK
    fleet.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    reply = conn.pull(1.0)
    assert reply.status is wire.PullStatus.TASK and reply.task is not None
    task = reply.task
    assert (task.round, task.kind, task.seed) == (1, "train", 7)
    assert TaskSettings.from_dict(task.config) == TaskSettings(lr=0.5)
    assert task.downlink == b"weights" and task.deadline_seconds > 50
    payload = np.random.default_rng(0).bytes(int(2.5 * 2**20))  # three 1 MiB chunks
    assert conn.push(header(task, payload), payload)
    pending = fleet.pending[task.task_id]
    assert pending.result is not None and pending.result.payload == payload
    assert pending.result.metrics == {"train_loss": 0.5}
    assert fleet.store.has_result(1, "train", cid)
    # the same result again (a replay) is refused
    assert code_of(lambda: conn.push(header(task, payload), payload)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    assert conn.heartbeat().round == 1


def test_long_poll_wakes_when_a_task_is_posted(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conn, cid = enrolled(port, tmp_path)
    got: list[wire.PullReply] = []
    poller = threading.Thread(target=lambda: got.append(conn.pull(5.0)))
    start = time.monotonic()
    poller.start()
    time.sleep(0.3)
    fleet.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    poller.join()
    assert got[0].status is wire.PullStatus.TASK
    assert time.monotonic() - start < 3.0, "the long-poll waited for its timeout"


def test_authentication(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conn, cid = enrolled(port, tmp_path)
    anonymous = connect(port, tmp_path)
    assert code_of(lambda: anonymous.heartbeat()) == grpc.StatusCode.UNAUTHENTICATED
    anonymous.authenticate(cid, "not-the-credential")
    assert code_of(lambda: anonymous.heartbeat()) == grpc.StatusCode.UNAUTHENTICATED
    # an id that does not exist gets the same answer (tests/integration/
    # test_fleet_robustness.py compares the details too)
    anonymous.authenticate(cid + 100, "whatever")
    assert code_of(lambda: anonymous.pull(0)) == grpc.StatusCode.UNAUTHENTICATED
    conn.heartbeat()  # the real client is unaffected


def test_enrollment_token_protocol_version_and_rate(tmp_path: Path) -> None:
    from dataclasses import replace

    fleet = make_fleet(
        tmp_path,
        replace(SETTINGS, enrollment_token="s3cret", open_enrollment=False, max_clients=4),
    )
    server = CoordinatorServer(fleet, "127.0.0.1", 0, insecure_localhost=True)
    port = server.start()
    try:
        conn = connect(port, tmp_path)
        assert code_of(lambda: conn.register("wrong", "")) == grpc.StatusCode.UNAUTHENTICATED
        raw = conn._register  # an old client speaking protocol 0
        from fedpeft.protocol import serde

        old = serde.register_request_to_bytes(wire.RegisterRequest("s3cret", PROTOCOL_VERSION + 1))
        assert code_of(lambda: raw(old, timeout=5)) == grpc.StatusCode.FAILED_PRECONDITION
        ids = [conn.register("s3cret", f"c{i}").client_id for i in range(4)]
        assert len(set(ids)) == 4
        # the fifth is over max_clients (all four are live); then the burst of 6 is spent
        with pytest.raises(grpc.RpcError) as full:
            conn.register("s3cret", "")
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert full.value.details() == "the federation is full: 4 of 4 clients live"
        assert code_of(lambda: conn.register("s3cret", "")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()
        fleet.store.close()


def alice_and_bob_with_tasks(
    fleet: Fleet, port: int, tmp_path: Path
) -> tuple[Connection, wire.WireTask, Connection, wire.WireTask]:
    """Two enrolled clients, each holding its round-1 task."""
    alice, a = enrolled(port, tmp_path)
    bob, b = enrolled(port, tmp_path)
    now = time.monotonic()
    fleet.post(task_for(a), now + 60, now)
    fleet.post(task_for(b), now + 60, now)
    ta, tb = alice.pull(1).task, bob.pull(1).task
    assert ta is not None and tb is not None
    return alice, ta, bob, tb


def test_push_rules(fleet: Fleet, port: int, tmp_path: Path) -> None:
    alice, ta, bob, tb = alice_and_bob_with_tasks(fleet, port, tmp_path)
    payload = b"\x01" * 5000
    # Bob pushes into Alice's task
    assert code_of(lambda: bob.push(header(ta, payload), payload)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # the right task but another round, or another kind
    bad_round = header(ta, payload, round=2)
    assert code_of(lambda: alice.push(bad_round, payload)) == grpc.StatusCode.FAILED_PRECONDITION
    bad_kind = header(ta, payload, kind="feature_stats")
    assert code_of(lambda: alice.push(bad_kind, payload)) == grpc.StatusCode.FAILED_PRECONDITION
    # announced larger than the limit
    huge = header(ta, payload, payload_size=4 << 20)
    assert code_of(lambda: alice.push(huge, payload)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # truncated, or not matching the SHA-256
    short = header(ta, payload, payload_size=len(payload) + 10)
    assert code_of(lambda: alice.push(short, payload)) == grpc.StatusCode.DATA_LOSS
    flipped = b"\x02" + payload[1:]
    assert code_of(lambda: alice.push(header(ta, payload), flipped)) == grpc.StatusCode.DATA_LOSS
    # none of that used up Alice's one push
    assert alice.push(header(ta, payload), payload)
    # Bob's task is withdrawn (deadline passed): his late result is stale
    fleet.withdraw(tb.task_id)
    assert code_of(lambda: bob.push(header(tb, payload), payload)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    bob.heartbeat()  # and the coordinator keeps serving


def test_heartbeat_tells_a_client_its_task_is_stale(
    fleet: Fleet, port: int, tmp_path: Path
) -> None:
    alice, ta, bob, tb = alice_and_bob_with_tasks(fleet, port, tmp_path)
    assert not alice.heartbeat().task_stale  # idle
    assert not alice.heartbeat(ta.task_id).task_stale  # outstanding and hers
    assert alice.heartbeat(tb.task_id).task_stale  # Bob's task is not hers to work on
    assert alice.heartbeat("d9429bf16ede7199").task_stale  # never issued (a restart)
    fleet.withdraw(tb.task_id)  # the deadline passed
    assert bob.heartbeat(tb.task_id).task_stale
    payload = b"\x01" * 100
    assert alice.push(header(ta, payload), payload)
    assert alice.heartbeat(ta.task_id).task_stale  # answered: nothing left to work on


def test_oversized_message_is_refused(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conn, _ = enrolled(port, tmp_path)
    from fedpeft.protocol import serde

    big = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest("x" * (9 << 20)))
    code = code_of(lambda: conn._heartbeat(big, timeout=10, metadata=conn.metadata))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    conn.heartbeat()


def test_artifacts_resume_and_verify(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conn, cid = enrolled(port, tmp_path)
    weights = np.random.default_rng(1).bytes(int(1.5 * 2**20))
    fleet.post(task_for(cid, downlink=weights), time.monotonic() + 60, time.monotonic())
    task = conn.pull(1).task
    assert task is not None and task.downlink is None and task.artifact is not None
    ref = task.artifact
    assert ref.size == len(weights) and ref.sha256 == hashlib.sha256(weights).hexdigest()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{ref.sha256}.part").write_bytes(weights[:700_000])  # an interrupted fetch
    assert conn.fetch(ref, downloads) == weights
    assert (downloads / ref.sha256).is_file() and not (downloads / f"{ref.sha256}.part").exists()
    # a corrupted partial download is detected, discarded, and the next fetch succeeds
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{ref.sha256}.part").write_bytes(b"\x00" * 1000)
    with pytest.raises(DaemonError, match="SHA-256"):
        conn.fetch(ref, other)
    assert conn.fetch(ref, other) == weights
    missing = wire.ArtifactRef("ab" * 32, 10)
    assert code_of(lambda: conn.fetch(missing, other)) == grpc.StatusCode.NOT_FOUND


def test_backend_drops_silent_clients_and_reuses_accepted_results(
    fleet: Fleet, port: int, tmp_path: Path
) -> None:
    alice, a = enrolled(port, tmp_path)
    _, b = enrolled(port, tmp_path)  # registers, then goes silent
    backend = GrpcBackend(fleet, app=None, downlink=make_codec("dense"), round_timeout=30)  # type: ignore[arg-type]
    params = {"w": np.ones((40, 40), np.float32)}
    full = FULL_WEIGHTS_CODEC.encode(params)
    tasks = [task_for(a, downlink=full), task_for(b, downlink=full)]
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.extend(backend.run(tasks)))
    runner.start()
    pulled = alice.pull(2).task
    assert pulled is not None and pulled.artifact is not None  # > 1000 bytes: an artifact
    payload = b"update"
    alice.push(header(pulled, payload), payload)
    start = time.monotonic()
    while runner.is_alive():
        alice.heartbeat()
        runner.join(0.3)
    assert time.monotonic() - start < 10
    ra, rb = out
    assert ra.ok and ra.payload == payload and ra.num_examples == 12
    assert ra.state is not None and ra.state.version == 0
    assert not rb.ok and "disconnected" in (rb.error or "")
    assert fleet.store.artifacts() == []  # the round's downlink artifact is collected
    # the coordinator restarts mid-round: Alice's accepted result is not asked for again
    again = GrpcBackend(fleet, app=None, downlink=make_codec("dense"), round_timeout=1)  # type: ignore[arg-type]
    ra2, rb2 = again.run(tasks)
    assert ra2.payload == payload and "straggler" in (rb2.error or "")


def test_live_sampler_waits_and_is_seeded(fleet: Fleet, port: int, tmp_path: Path) -> None:
    conns = [enrolled(port, tmp_path) for _ in range(4)]
    sampler = LiveClientSampler(fleet, 2, seed=3, wait_timeout=0.2)
    assert sampler.sample(1) == []  # registered, but none asked for work yet
    for conn, _ in conns:
        conn.pull(0)
    first = sampler.sample(1)
    assert len(first) == 2 and set(first) <= {cid for _, cid in conns}
    assert sampler.sample(1) == first
    assert any(sampler.sample(r) != first for r in range(2, 8))


def test_plaintext_only_on_loopback(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1 only"):
        CoordinatorServer(fleet, "0.0.0.0", 0, insecure_localhost=True)
    with pytest.raises(ConfigError, match="TLS is required"):
        CoordinatorServer(fleet, "127.0.0.1", 0)
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1 only"):
        connect(1, Path("."), coordinator="10.1.2.3:50051")


# ---- TLS -----------------------------------------------------------------------------
def _certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: Any, cert: x509.Certificate) -> None:
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedpeft test CA"))
        .issuer_name(name("fedpeft test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for stem, san in (
        ("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.DNSName("client-1")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(stem, key, cert)
    return {p.stem + p.suffix: p for p in folder.iterdir()}


def test_tls_and_mutual_tls(fleet: Fleet, tmp_path: Path) -> None:
    certs = _certs(tmp_path)
    tls = TlsFiles(certs["server.pem"], certs["server.key"], ca=certs["ca.pem"])
    server = CoordinatorServer(fleet, "127.0.0.1", 0, tls=tls)
    port = server.start()
    try:
        common = {"insecure_localhost": False, "tls_ca": certs["ca.pem"]}
        mutual = connect(
            port, tmp_path, tls_cert=certs["client.pem"], tls_key=certs["client.key"], **common
        )
        assert mutual.register("", "mtls").client_id >= 1
        no_cert = connect(port, tmp_path, **common)
        assert code_of(lambda: no_cert.register("", "")) == grpc.StatusCode.UNAVAILABLE
        plaintext = connect(port, tmp_path)
        assert code_of(lambda: plaintext.register("", "")) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_a_restarted_coordinator_takes_results_for_the_same_task(tmp_path: Path) -> None:
    """kill -9 between handing out a task and receiving its result: the restarted
    coordinator poses the same task (same id) and takes the result; a changed task is new."""
    first = make_fleet(tmp_path)
    server = CoordinatorServer(first, "127.0.0.1", 0, insecure_localhost=True)
    port = server.start()
    conn, cid = enrolled(port, tmp_path)
    first.post(task_for(cid), time.monotonic() + 60, time.monotonic())
    old = conn.pull(1).task
    assert old is not None
    server.stop()  # the coordinator dies while the client trains
    first.store.close()
    second = make_fleet(tmp_path)  # restarted on the same state database
    server = CoordinatorServer(second, "127.0.0.1", port, insecure_localhost=True)
    server.start()
    try:
        changed = second.post(task_for(cid, downlink=b"other"), time.monotonic() + 60, 0.0)
        assert changed.wire.task_id != old.task_id
        same = second.post(task_for(cid), time.monotonic() + 60, time.monotonic())
        assert same.wire.task_id == old.task_id
        payload = b"trained before the crash"
        assert conn.push(header(old, payload), payload)
        assert same.result is not None and same.result.payload == payload
    finally:
        server.stop()
        second.store.close()


def test_prometheus_metrics_endpoint(fleet: Fleet, port: int, tmp_path: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    fleet.metrics.serve(http_port)
    enrolled(port, tmp_path)
    anonymous = connect(port, tmp_path)
    code_of(lambda: anonymous.heartbeat())
    fleet.metrics.set_epsilon(1.5)
    body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read()
    text = body.decode()
    assert "fedpeft_clients_registered 1.0" in text
    assert 'fedpeft_rejected_calls_total{code="UNAUTHENTICATED"} 1.0' in text
    assert "fedpeft_dp_epsilon 1.5" in text


def test_a_client_without_the_base_adapter_gets_full_weights(
    fleet: Fleet, port: int, tmp_path: Path
) -> None:
    from dataclasses import replace

    from fedpeft.coordinator.grpc_backend import STATE_MISMATCH
    from fedpeft.protocol.codecs import apply_downlink

    conn, cid = enrolled(port, tmp_path)
    codec = make_codec("compeft", density=0.5)
    held = {"w": np.ones((8, 8), np.float32)}
    delta = {"w": np.full((8, 8), 0.25, np.float32)}
    task = replace(
        task_for(cid, downlink=codec.encode(delta)),
        downlink_is_delta=True,
        state=ClientState(version=0, held=held),
        version=1,
    )
    backend = GrpcBackend(fleet, app=None, downlink=codec, round_timeout=30)  # type: ignore[arg-type]
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.extend(backend.run([task])))
    runner.start()
    first = conn.pull(2).task
    assert first is not None and first.downlink_is_delta and first.base_version == 0
    lost = header(first, b"", num_examples=0, error=f"{STATE_MISMATCH}: no held adapter v0")
    conn.push(lost, b"")
    second = conn.pull(5).task
    assert second is not None and not second.downlink_is_delta
    expected = apply_downlink(codec, task)
    got = FULL_WEIGHTS_CODEC.decode(second.downlink or b"")
    np.testing.assert_array_equal(got["w"], expected["w"])
    conn.push(header(second, b"update"), b"update")
    runner.join(10)
    (result,) = out
    # the client now holds the task's version; what that is the engine knows from what
    # it sent (Downlink.held_after): nothing of the client's own state comes back
    assert result.ok and result.state is not None
    assert result.state.version == 1 and result.state.held is None
