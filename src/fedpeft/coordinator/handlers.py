"""Pure handlers of the fedpeft.v1 service, and the fleet state they act on.

No gRPC here: each handler takes the :class:`Fleet`, the caller's identity and a
:mod:`fedpeft.protocol.wire` request, and returns a wire reply or raises a
:class:`FleetError` whose ``status`` names the gRPC status code the servicer
(:mod:`fedpeft.coordinator.servicer`) aborts with. The round engine's side
(:class:`~fedpeft.coordinator.grpc_backend.GrpcBackend`) posts tasks into the fleet and
waits for their results; both sides meet under one lock.

Rules enforced here: a client speaks only as itself (credential per client), pushes only
into a task it was given (the task id is a nonce), for that task's round and kind, once,
before the deadline; payloads have a size limit and must match their SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeft.coordinator.metrics import FleetMetrics
from fedpeft.coordinator.store import Artifact, Store, StoredResult, hash_token
from fedpeft.errors import ProtocolError
from fedpeft.protocol import wire
from fedpeft.protocol.messages import TASK_KINDS, TrainResult, TrainTask
from fedpeft.protocol.version import CHUNK_BYTES, PROTOCOL_VERSION

log = logging.getLogger(__name__)


# ---- errors (mapped to gRPC status codes at the servicer, nowhere else) -------------------
class FleetError(ProtocolError):
    """A refused call; ``status`` is the name of a ``grpc.StatusCode``."""

    status = "INVALID_ARGUMENT"


class InvalidArgument(FleetError):
    status = "INVALID_ARGUMENT"


class Unauthenticated(FleetError):
    status = "UNAUTHENTICATED"


class PermissionDenied(FleetError):
    status = "PERMISSION_DENIED"


class NotFound(FleetError):
    status = "NOT_FOUND"


class FailedPrecondition(FleetError):
    status = "FAILED_PRECONDITION"


class AlreadyExists(FleetError):
    status = "ALREADY_EXISTS"


class ResourceExhausted(FleetError):
    status = "RESOURCE_EXHAUSTED"


class DataLoss(FleetError):
    status = "DATA_LOSS"


# ---- settings and state ---------------------------------------------------------------
@dataclass(frozen=True)
class FleetSettings:
    enrollment_token: str | None = None  # None: open enrollment
    heartbeat_seconds: float = 5.0
    liveness_seconds: float = 20.0  # unseen this long: not connected (a task is dropped)
    max_pull_wait: float = 30.0
    max_clients: int = 1000
    max_update_bytes: int = 256 << 20
    registrations_per_minute: float = 600.0
    registration_burst: int = 100
    inline_downlink_bytes: int = 1 << 20  # larger downlinks travel as artifacts

    def __post_init__(self) -> None:
        for name in ("heartbeat_seconds", "liveness_seconds", "max_pull_wait"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if self.liveness_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"`liveness_seconds` ({self.liveness_seconds}) must exceed "
                f"`heartbeat_seconds` ({self.heartbeat_seconds})"
            )


@dataclass
class PendingTask:
    """A task handed to the fleet, waiting for (or holding) its client's result."""

    task: TrainTask
    wire: wire.WireTask
    deadline: float  # time.monotonic()
    delivered: int = 0  # how many times a PullTask returned it
    result: TrainResult | None = None
    uploading: bool = False


class TokenBucket:
    """Registration rate limit: ``rate`` per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Fleet:
    """Who is registered and connected, which tasks are out, which results came back."""

    store: Store
    settings: FleetSettings
    job_config: dict[str, Any]
    artifact_dir: Path
    metrics: FleetMetrics = field(default_factory=FleetMetrics)
    # called (from any thread) whenever a task is posted or the run ends: wakes pullers
    on_change: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.run_over = False
        self.round = 0
        self.last_seen: dict[int, float] = {}  # monotonic; connected within liveness
        self.pulled: set[int] = set()  # asked for work since this process started
        self.told_over: set[int] = set()  # heard that the run is over
        self.pending: dict[str, PendingTask] = {}
        self.by_client: dict[int, str] = {}
        self._bucket = TokenBucket(
            self.settings.registrations_per_minute / 60.0, self.settings.registration_burst
        )
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.metrics.clients_registered.set(self.store.count_clients())

    # ---- liveness ---------------------------------------------------------------------
    def seen(self, client_id: int, now: float) -> None:
        with self.lock:
            self.last_seen[client_id] = now

    def connected(self, now: float) -> list[int]:
        with self.lock:
            limit = self.settings.liveness_seconds
            return sorted(c for c, t in self.last_seen.items() if now - t <= limit)

    def ready(self, now: float) -> list[int]:
        """Connected clients that have asked for work (their app is loaded)."""
        with self.lock:
            return [c for c in self.connected(now) if c in self.pulled]

    def wait_ready(self, count: int, timeout: float | None) -> list[int]:
        """Block until ``count`` clients are ready (or ``timeout`` s passed); return them."""
        end = None if timeout is None else time.monotonic() + timeout
        last_log = 0.0
        with self.changed:
            while True:
                now = time.monotonic()
                ready = self.ready(now)
                self.metrics.clients_connected.set(len(self.connected(now)))
                if len(ready) >= count or (end is not None and now >= end):
                    return ready
                if now - last_log > 30.0:
                    log.info("waiting for clients: %d of %d ready", len(ready), count)
                    last_log = now
                wait = 1.0 if end is None else max(0.0, min(1.0, end - now))
                self.changed.wait(wait)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()

    # ---- the engine's side ------------------------------------------------------------
    def post(self, task: TrainTask, deadline: float, now: float) -> PendingTask:
        """Hand a task to its client (the next PullTask returns it)."""
        if task.kind not in TASK_KINDS:
            raise ValueError(f"task kind {task.kind!r} is not one of {TASK_KINDS}")
        task_id = task_identity(self.store.run_id, task)
        downlink: bytes | None = task.downlink
        artifact = None
        if len(task.downlink) > self.settings.inline_downlink_bytes:
            artifact = self.add_artifact(task.downlink, f"downlink-r{task.round}", now)
            downlink = None
        wt = wire.WireTask(
            task_id=task_id,
            round=task.round,
            kind=task.kind,
            config=task.settings.to_dict(),
            downlink=downlink,
            artifact=artifact,
            downlink_is_delta=task.downlink_is_delta,
            base_version=task.state.version,
            version=task.version,
            seed=task.seed,
            secagg=task.secagg,
        )
        pending = PendingTask(task, wt, deadline)
        with self.lock:
            old = self.by_client.pop(task.client_id, None)
            if old is not None:
                self.pending.pop(old, None)
            self.pending[task_id] = pending
            self.by_client[task.client_id] = task_id
            self.round = max(self.round, task.round)
        self.metrics.bytes.labels("down").inc(len(task.downlink))
        self.notify()
        return pending

    def withdraw(self, task_id: str) -> None:
        """The engine stopped waiting: a later result for this task is rejected."""
        with self.lock:
            pending = self.pending.pop(task_id, None)
            if pending is not None and self.by_client.get(pending.task.client_id) == task_id:
                del self.by_client[pending.task.client_id]

    def add_artifact(self, data: bytes, name: str, now: float) -> wire.ArtifactRef:
        digest = hashlib.sha256(data).hexdigest()
        path = self.artifact_dir / digest
        if not path.is_file():
            from fedpeft.rundir import atomic_write_bytes  # (rundir brings torch: only here)

            atomic_write_bytes(path, data)
        self.store.add_artifact(Artifact(digest, name, len(data), path), now)
        return wire.ArtifactRef(digest, len(data))

    def collect_artifacts(self) -> None:
        """Delete artifacts no outstanding task refers to (after a round)."""
        with self.lock:
            live = {p.wire.artifact.sha256 for p in self.pending.values() if p.wire.artifact}
        for artifact in self.store.artifacts():
            if artifact.sha256 not in live and artifact.name.startswith("downlink-"):
                self.store.remove_artifact(artifact.sha256)
                artifact.path.unlink(missing_ok=True)

    def finish(self) -> None:
        """The run is over: every PullTask and Heartbeat now says so."""
        with self.lock:
            self.run_over = True
            for task_id in list(self.pending):
                self.withdraw(task_id)
        self.store.set_meta("status", "finished")
        self.notify()

    # ---- the clients' side (under the lock) --------------------------------------------
    def take_task(self, client_id: int) -> wire.PullReply | None:
        """The client's outstanding task, RUN_OVER, or None (nothing yet)."""
        with self.lock:
            self.pulled.add(client_id)
            if self.run_over:
                self.told_over.add(client_id)
                return wire.PullReply(wire.PullStatus.RUN_OVER)
            task_id = self.by_client.get(client_id)
            if task_id is None:
                return None
            pending = self.pending[task_id]
            if pending.result is not None or pending.uploading:
                return None
            # handed out again if asked again (a restarted daemon lost it): same nonce
            pending.delivered += 1
            left = max(0.0, pending.deadline - time.monotonic())
            return wire.PullReply(
                wire.PullStatus.TASK,
                _with_deadline(pending.wire, left),
            )


def task_identity(run_id: str, task: TrainTask) -> str:
    """The task id: a digest of everything the client is asked (run, round, kind, client,
    versions, seed, settings, downlink, SecAgg message). A restarted coordinator that poses
    the very same task again gets the same id, so a result computed for it before the
    crash is still taken; anything different (another base adapter, a fresh SecAgg
    instance) is a new task and the old result is stale. Replays are stopped by the
    store's one-result-per-(round, kind, client) rule, not by the id being secret."""
    h = hashlib.sha256()
    fields = (run_id, task.round, task.kind, task.client_id, task.state.version, task.version)
    h.update(json.dumps([*fields, task.seed, task.downlink_is_delta]).encode())
    h.update(json.dumps(task.settings.to_dict(), sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(task.downlink).digest())
    h.update(hashlib.sha256(task.secagg).digest())
    return h.hexdigest()[:32]


def _with_deadline(task: wire.WireTask, seconds: float) -> wire.WireTask:
    from dataclasses import replace

    return replace(task, deadline_seconds=seconds)


# ---- handlers -------------------------------------------------------------------------
def register(fleet: Fleet, req: wire.RegisterRequest, now: float) -> wire.Registration:
    if req.protocol_version != PROTOCOL_VERSION:
        raise FailedPrecondition(
            f"protocol version {req.protocol_version} is not supported; "
            f"this coordinator speaks {PROTOCOL_VERSION}"
        )
    expected = fleet.settings.enrollment_token
    if expected is not None and not hmac.compare_digest(
        req.enrollment_token.encode(), expected.encode()
    ):
        raise Unauthenticated("enrollment token is wrong or missing")
    with fleet.lock:
        if not fleet._bucket.take(now):
            raise ResourceExhausted("too many registrations; retry later")
        if fleet.store.count_clients() >= fleet.settings.max_clients:
            raise ResourceExhausted(
                f"the federation is full ({fleet.settings.max_clients} clients registered)"
            )
        credential = secrets.token_urlsafe(32)
        client_id = fleet.store.add_client(hash_token(credential), req.name[:100], time.time())
        fleet.last_seen[client_id] = now
    fleet.metrics.clients_registered.set(fleet.store.count_clients())
    log.info("registered client %d (%s)", client_id, req.name[:100] or "unnamed")
    return wire.Registration(
        client_id=client_id,
        credential=credential,
        run_id=fleet.store.run_id,
        job_config=fleet.job_config,
        protocol_version=PROTOCOL_VERSION,
        heartbeat_seconds=fleet.settings.heartbeat_seconds,
    )


def authenticate(fleet: Fleet, client: str | None, token: str | None, now: float) -> int:
    """The caller's client id, from the metadata; raises unless the credential matches."""
    if not client or not token:
        raise Unauthenticated("missing client id or token (metadata x-fedpeft-client/-token)")
    try:
        client_id = int(client)
    except ValueError as exc:
        raise Unauthenticated(f"client id {client[:40]!r} is not an integer") from exc
    stored = fleet.store.client_token_hash(client_id)
    if stored is None:
        raise NotFound(f"client {client_id} is not registered here; register again")
    if not hmac.compare_digest(stored, hash_token(token)):
        raise Unauthenticated(f"wrong credential for client {client_id}")
    fleet.seen(client_id, now)
    return client_id


def heartbeat(fleet: Fleet, client_id: int, req: wire.HeartbeatRequest) -> wire.HeartbeatReply:
    with fleet.lock:
        if fleet.run_over:
            fleet.told_over.add(client_id)
        # a client still training a task this process never issued (it restarted), or one
        # withdrawn at its deadline, hears so now rather than when its push is refused
        pending = fleet.pending.get(req.task_id) if req.task_id else None
        stale = bool(req.task_id) and (
            pending is None or pending.task.client_id != client_id or pending.result is not None
        )
        return wire.HeartbeatReply(
            fleet.run_over, fleet.round, fleet.settings.heartbeat_seconds, task_stale=stale
        )


def pull_task(fleet: Fleet, client_id: int) -> wire.PullReply | None:
    return fleet.take_task(client_id)


class Upload:
    """One PushResult stream being received: header checked, bytes counted and hashed."""

    def __init__(self, fleet: Fleet, client_id: int, header: wire.ResultHeader) -> None:
        self.fleet, self.client_id, self.header = fleet, client_id, header
        self.parts: list[bytes] = []
        self.received = 0
        self.hasher = hashlib.sha256()
        with fleet.lock:
            self.pending = self._check()
            self.pending.uploading = True

    def _check(self) -> PendingTask:
        h, cid, fleet = self.header, self.client_id, self.fleet
        pending = fleet.pending.get(h.task_id)
        if pending is None:
            if fleet.store.has_result(h.round, h.kind, cid):
                raise AlreadyExists(f"round {h.round} {h.kind}: client {cid} already answered")
            raise FailedPrecondition(
                f"task {h.task_id[:16]!r} is not outstanding (stale round, past its deadline, "
                "or never issued)"
            )
        task = pending.task
        if task.client_id != cid:
            raise PermissionDenied(f"client {cid} pushed into client {task.client_id}'s task")
        if h.round != task.round or h.kind != task.kind:
            raise FailedPrecondition(
                f"result for round {h.round} {h.kind!r} but the task is round {task.round} "
                f"{task.kind!r}"
            )
        if pending.result is not None or pending.uploading:
            raise AlreadyExists(f"round {h.round} {h.kind}: client {cid} already answered")
        if time.monotonic() > pending.deadline:
            raise FailedPrecondition(f"round {h.round}: the deadline has passed")
        limit = fleet.settings.max_update_bytes
        if h.payload_size > limit:
            raise ResourceExhausted(f"payload of {h.payload_size} bytes exceeds {limit}")
        if len(h.payload_sha256) != 64:
            raise InvalidArgument("ResultHeader.payload_sha256 must be 64 hex digits")
        return pending

    def add(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.header.payload_size:
            raise InvalidArgument(
                f"payload longer than the {self.header.payload_size} bytes announced"
            )
        self.parts.append(data)
        self.hasher.update(data)

    def abandon(self) -> None:
        with self.fleet.lock:
            self.pending.uploading = False

    def finish(self, now: float) -> None:
        h = self.header
        if self.received != h.payload_size:
            raise DataLoss(f"payload truncated: {self.received} of {h.payload_size} bytes")
        if not hmac.compare_digest(self.hasher.hexdigest(), h.payload_sha256.lower()):
            raise DataLoss("payload does not match its SHA-256")
        payload = b"".join(self.parts)
        stored = StoredResult(
            round=h.round,
            kind=h.kind,
            client_id=self.client_id,
            task_id=h.task_id,
            num_examples=h.num_examples,
            metrics=dict(h.metrics),
            error=h.error or None,
            payload=payload,
            payload_sha256=h.payload_sha256,
        )
        fleet = self.fleet
        with fleet.lock:
            if fleet.pending.get(h.task_id) is not self.pending:  # withdrawn meanwhile
                raise FailedPrecondition(f"round {h.round}: the deadline has passed")
            # a failure report carries nothing to count: only updates are kept (once)
            if not h.error and not fleet.store.add_result(stored, time.time()):
                raise AlreadyExists(f"round {h.round} {h.kind}: client {self.client_id} answered")
            self.pending.result = result_of(stored)
            self.pending.uploading = False
        fleet.metrics.results.labels("accepted").inc()
        fleet.metrics.bytes.labels("up").inc(len(payload))
        fleet.notify()


def result_of(stored: StoredResult) -> TrainResult:
    return TrainResult(
        round=stored.round,
        client_id=stored.client_id,
        num_examples=stored.num_examples,
        payload=stored.payload,
        metrics=dict(stored.metrics),
        error=stored.error,
        worker=f"client-{stored.client_id}",
    )


def begin_push(fleet: Fleet, client_id: int, first: wire.ResultChunk) -> Upload:
    if first.header is None:
        raise InvalidArgument("PushResult must start with a ResultHeader chunk")
    return Upload(fleet, client_id, first.header)


def fetch_artifact(fleet: Fleet, client_id: int, req: wire.FetchRequest) -> Iterator[bytes]:
    """Check the request; return an iterator over the artifact's bytes from ``offset``."""
    artifact = fleet.store.get_artifact(req.sha256)
    if artifact is None or not artifact.path.is_file():
        raise NotFound(f"no artifact {req.sha256[:64]!r}")
    if req.offset > artifact.size:
        raise InvalidArgument(f"offset {req.offset} is past the artifact's {artifact.size} bytes")

    def chunks() -> Iterator[bytes]:
        with artifact.path.open("rb") as f:
            f.seek(req.offset)
            while data := f.read(CHUNK_BYTES):
                yield data

    return chunks()
