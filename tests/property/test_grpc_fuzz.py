"""Every handler of the live coordinator fuzzed with random and mutated protobufs.

A refused call must come back as a deliberate status (INVALID_ARGUMENT, UNAUTHENTICATED,
...), never UNKNOWN/INTERNAL (an unhandled exception), and the coordinator keeps serving
an honest client afterwards. serde itself turns any bytes into a message or a
MalformedMessage, nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpeft.client.daemon import Connection, DaemonOptions
from fedpeft.coordinator.handlers import Fleet, FleetSettings
from fedpeft.coordinator.server import CoordinatorServer
from fedpeft.coordinator.store import Store
from fedpeft.protocol import serde, wire
from fedpeft.protocol.messages import TASK_KINDS, ClientState, TrainTask
from fedpeft.protocol.serde import MalformedMessage
from fedpeft.protocol.version import CLIENT_KEY, METHODS, PROTOCOL_VERSION, TOKEN_KEY, method_path

DELIBERATE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
}
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Live:
    fleet: Fleet
    channel: grpc.Channel
    honest: Connection
    client_id: int
    metadata: tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    fleet = Fleet(
        Store(tmp / "state.db"),
        FleetSettings(
            open_enrollment=True,
            max_pull_wait=0.05,
            inline_downlink_bytes=64,
            registration_burst=10_000,
        ),
        {"job": {}},
        tmp / "artifacts",
    )
    server = CoordinatorServer(fleet, "127.0.0.1", 0, insecure_localhost=True)
    port = server.start()
    opts = DaemonOptions(f"127.0.0.1:{port}", "unused", tmp, insecure_localhost=True)
    honest = Connection(opts)
    reg = honest.register("", "honest")
    honest.authenticate(reg.client_id, reg.credential)
    # an outstanding task (its downlink an artifact) so pushes and fetches reach deep checks
    task = TrainTask(1, reg.client_id, 0, b"x" * 200, False, 0, ClientState())
    fleet.post(task, time.monotonic() + 3600, time.monotonic())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Live(fleet, channel, honest, reg.client_id, honest.metadata)
    channel.close()
    server.stop()
    fleet.store.close()


def call(live: Live, method: str, messages: list[bytes], metadata: Any) -> None:
    """One raw call; a refusal must be deliberate."""
    path = method_path(method)
    ident = bytes
    try:
        if method == "PushResult":
            live.channel.stream_unary(path, ident, ident)(
                iter(messages), timeout=10, metadata=metadata
            )
        elif method == "FetchArtifact":
            for _ in live.channel.unary_stream(path, ident, ident)(
                messages[0], timeout=10, metadata=metadata
            ):
                pass
        else:
            live.channel.unary_unary(path, ident, ident)(messages[0], timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        assert exc.code() in DELIBERATE, f"{method}: {exc.code()} {exc.details()}"


def still_serving(live: Live) -> None:
    assert live.honest.heartbeat().heartbeat_seconds > 0


def valid_messages(live: Live) -> dict[str, list[bytes]]:
    task = next(iter(live.fleet.pending.values())).wire
    payload = b"p" * 300
    head = wire.ResultHeader(
        task.task_id, 1, "train", 5, len(payload), hashlib.sha256(payload).hexdigest()
    )
    ref = task.artifact
    assert ref is not None
    return {
        "Register": [serde.register_request_to_bytes(wire.RegisterRequest("", PROTOCOL_VERSION))],
        "Heartbeat": [serde.heartbeat_request_to_bytes(wire.HeartbeatRequest(task.task_id))],
        "PullTask": [serde.pull_request_to_bytes(wire.PullRequest(0.01))],
        "PushResult": [
            serde.result_chunk_to_bytes(wire.ResultChunk(header=head)),
            serde.result_chunk_to_bytes(wire.ResultChunk(data=payload)),
        ],
        "FetchArtifact": [serde.fetch_request_to_bytes(wire.FetchRequest(ref.sha256, 0))],
    }


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, cut, inserted or repeated."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if op == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and out:
            out = out[: draw(st.integers(0, len(out) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(out)))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            out = out + out[: draw(st.integers(0, len(out)))]
    return bytes(out)


# gRPC metadata values are printable ASCII (the client library refuses others itself)
_printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)
metadata_strategy = st.one_of(
    st.just("honest"),
    st.none(),
    st.tuples(_printable, _printable).map(lambda kv: ((CLIENT_KEY, kv[0]), (TOKEN_KEY, kv[1]))),
)


def _meta(live: Live, choice: Any) -> Any:
    return live.metadata if choice == "honest" else choice


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    meta=metadata_strategy,
)
def test_random_bytes(live: Live, method: str, messages: list[bytes], meta: Any) -> None:
    call(live, method, messages, _meta(live, meta))
    still_serving(live)


@FUZZ
@given(method=st.sampled_from(METHODS), data=st.data(), meta=metadata_strategy)
def test_mutated_messages(live: Live, method: str, data: st.DataObject, meta: Any) -> None:
    valid = valid_messages(live)[method]
    messages = [data.draw(mutated(m)) for m in valid]
    call(live, method, messages, _meta(live, meta))
    still_serving(live)


@FUZZ
@given(
    round_num=st.integers(0, 2**32 - 1),
    kind=st.sampled_from([*TASK_KINDS, "", "bogus"]),
    num_examples=st.integers(0, 2**64 - 1),
    size=st.integers(0, 2**64 - 1),
    sha=st.text(alphabet="0123456789abcdefg", max_size=70),
    metrics=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=True), max_size=3),
    error=st.text(max_size=20),
    chunks=st.lists(st.binary(max_size=64), max_size=3),
    own_task=st.booleans(),
)
def test_structured_results(
    live: Live,
    round_num: int,
    kind: str,
    num_examples: int,
    size: int,
    sha: str,
    metrics: dict[str, float],
    error: str,
    chunks: list[bytes],
    own_task: bool,
) -> None:
    task_id = next(iter(live.fleet.pending)) if own_task else "f" * 32
    head = wire.ResultHeader(task_id, round_num, kind, num_examples, size, sha, metrics, error)
    messages = [serde.result_chunk_to_bytes(wire.ResultChunk(header=head))]
    messages += [serde.result_chunk_to_bytes(wire.ResultChunk(data=c)) for c in chunks]
    call(live, "PushResult", messages, live.metadata)
    still_serving(live)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_serde_turns_any_bytes_into_a_message_or_malformed(data: bytes) -> None:
    for parse in (
        serde.register_request_from_bytes,
        serde.registration_from_bytes,
        serde.heartbeat_request_from_bytes,
        serde.heartbeat_reply_from_bytes,
        serde.pull_request_from_bytes,
        serde.pull_reply_from_bytes,
        serde.result_chunk_from_bytes,
        serde.push_reply_from_bytes,
        serde.fetch_request_from_bytes,
        serde.artifact_piece_from_bytes,
    ):
        with contextlib.suppress(MalformedMessage):  # anything else fails the test
            parse(data)


@settings(max_examples=100, deadline=None)
@given(
    task_id=st.text(min_size=1, max_size=40),
    round_num=st.integers(0, 2**32 - 1),
    config=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False) | st.integers(-9, 9)),
    downlink=st.binary(max_size=100),
    artifact=st.booleans(),
    version=st.integers(-1, 2**31 - 1),
    seed=st.integers(0, 2**64 - 1),
)
def test_task_roundtrip(
    task_id: str,
    round_num: int,
    config: dict[str, Any],
    downlink: bytes,
    artifact: bool,
    version: int,
    seed: int,
) -> None:
    ref = wire.ArtifactRef("ab" * 32, len(downlink)) if artifact else None
    task = wire.WireTask(
        task_id,
        round_num,
        "train",
        config,
        None if artifact else downlink,
        ref,
        True,
        version - 1 if version > -1 else -1,
        version,
        seed,
        b"sa",
        1.5,
    )
    reply = serde.pull_reply_from_bytes(
        serde.pull_reply_to_bytes(wire.PullReply(wire.PullStatus.TASK, task))
    )
    assert reply.task == task
