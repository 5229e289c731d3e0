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

Enrolment: a secret unless the operator opened it explicitly (``open_enrollment``); at
most ``max_clients`` *live* clients (seen within ``liveness_seconds`` and not expired); a
registration that has not asked for work within ``ready_within_seconds`` of registering
expires: its row leaves the state database, so its slot is free and its credential void,
also after a coordinator restart. The store keeps when each client registered, became
ready and was last seen: a restarted coordinator expires the old registrations on their
original schedule, never expires a client that was ready before (it may be training a
long task and only heart-beating), and counts the clients seen within
``liveness_seconds`` before the crash as live until they reconnect or go silent. An
unknown client id and a wrong credential get the very same answer.
A result for a task this process has not posted yet, for the round it is about to run
(a coordinator restart), is held and taken if the very same task is posted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeft.aggregation.bounds import DEPLOYMENT_MAX_EXAMPLES
from fedpeft.coordinator.metrics import FleetMetrics
from fedpeft.coordinator.store import Artifact, Store, StoredResult, hash_token
from fedpeft.errors import ConfigError, ProtocolError
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
#: the one answer to a call whose client id is unknown, expired or whose credential is
#: wrong: a caller learns nothing about which ids exist
UNKNOWN_CLIENT = "unknown client or wrong credential; register again"
_NO_SUCH_TOKEN = hash_token("no client has this credential")  # compared for unknown ids too
KEEP_CLOSED_TASKS = 10_000  # closed task ids remembered to tell a late push why


@dataclass(frozen=True)
class FleetSettings:
    enrollment_token: str | None = None  # the enrolment secret daemons must present
    open_enrollment: bool = False  # True (and no token): anyone reaching the port registers
    heartbeat_seconds: float = 5.0
    liveness_seconds: float = 20.0  # unseen this long: not connected (a task is dropped)
    # registered this long ago (wall clock, across restarts) without ever asking for
    # work: the registration expires and its slot is free again
    ready_within_seconds: float = 300.0
    max_pull_wait: float = 30.0
    max_clients: int = 1000  # live clients (a cap on who may register now)
    max_update_bytes: int = 256 << 20
    # the most training examples one result may claim (federation.max_client_examples):
    # beyond it the push is refused at the edge, before anything is stored
    max_client_examples: int = DEPLOYMENT_MAX_EXAMPLES
    registrations_per_minute: float = 600.0
    registration_burst: int = 100
    inline_downlink_bytes: int = 1 << 20  # larger downlinks travel as artifacts
    # once min_fit_clients results are in, a round waits this many times the median
    # client time (post to result) for the others, but at least round_grace_min_seconds
    round_grace_factor: float = 2.0
    round_grace_min_seconds: float = 15.0

    def __post_init__(self) -> None:
        for name in (
            "heartbeat_seconds",
            "liveness_seconds",
            "max_pull_wait",
            "ready_within_seconds",
            "round_grace_factor",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if not self.round_grace_min_seconds >= 0:
            raise ValueError(
                f"`round_grace_min_seconds` must be >= 0, got {self.round_grace_min_seconds}"
            )
        if self.liveness_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"`liveness_seconds` ({self.liveness_seconds}) must exceed "
                f"`heartbeat_seconds` ({self.heartbeat_seconds})"
            )
        if self.enrollment_token is not None and self.open_enrollment:
            raise ConfigError(
                "--open-enrollment", "give either an enrollment token or open enrollment"
            )

    def check_enrollment(self) -> None:
        """A coordinator needs an enrolment secret unless open enrolment was asked for."""
        if not self.enrollment_token and not self.open_enrollment:
            raise ConfigError(
                "--enrollment-token",
                "clients need an enrolment secret to register: pass --enrollment-token "
                "(or FEDPEFT_ENROLLMENT_TOKEN) on the coordinator and the daemons, or "
                "--open-enrollment to let anyone who reaches the port register",
            )


@dataclass
class PendingTask:
    """A task handed to the fleet, waiting for (or holding) its client's result."""

    task: TrainTask
    wire: wire.WireTask
    deadline: float  # time.monotonic()
    posted_at: float = 0.0  # time.monotonic()
    answered_at: float | None = None  # when its result was accepted
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
        self.settings.check_enrollment()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.run_over = False
        self.round = 0
        self.last_seen: dict[int, float] = {}  # monotonic; connected within liveness
        # registrations that never asked for work -> when they registered (monotonic)
        self.first_seen: dict[int, float] = {}
        self.pulled: set[int] = set()  # asked for work since this process started
        self._seen_wall: dict[int, float] = {}  # last calls not yet written to the store
        self._flushed_at = -float("inf")
        self.told_over: set[int] = set()  # heard that the run is over
        self.pending: dict[str, PendingTask] = {}
        self.by_client: dict[int, str] = {}
        # results for tasks not posted yet (a restart): taken if the same task is posted
        self.parked: dict[int, StoredResult] = {}
        # task id -> why it closed unanswered (a later push is late, and counted)
        self.closed: OrderedDict[str, str] = OrderedDict()
        self._bucket = TokenBucket(
            self.settings.registrations_per_minute / 60.0, self.settings.registration_burst
        )
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self._restore(time.monotonic(), time.time())
        self.metrics.clients_registered.set(self.store.count_clients())

    def _restore(self, now: float, wall: float) -> None:
        """What a restarted coordinator knows of its clients from the store: the
        registrations still waiting to become ready (expiring on their original schedule,
        expired ones at once), and who was live just before (they hold their slots
        until ``liveness_seconds`` after their last call, as if there had been no
        restart)."""
        for cid, registered in self.store.unready_clients().items():
            self.first_seen[cid] = now - max(0.0, wall - registered)
        for cid, seen in self.store.seen_since(wall - self.settings.liveness_seconds).items():
            if cid not in self.last_seen:
                self.last_seen[cid] = now - max(0.0, wall - seen)
        self.expire(now)

    # ---- liveness ---------------------------------------------------------------------
    def seen(self, client_id: int, now: float) -> None:
        with self.lock:
            self.last_seen[client_id] = now
            self._seen_wall[client_id] = time.time()
            # written in one batch at most once a heartbeat interval: a restart then
            # knows who was live (a heartbeat's worth of staleness is within liveness)
            if now - self._flushed_at >= self.settings.heartbeat_seconds:
                self.store.touch_clients(self._seen_wall)
                self._seen_wall = {}
                self._flushed_at = now

    def connected(self, now: float) -> list[int]:
        with self.lock:
            self.expire(now)
            limit = self.settings.liveness_seconds
            return sorted(c for c, t in self.last_seen.items() if now - t <= limit)

    def expire(self, now: float) -> None:
        """Void the registrations that never asked for work within
        ``ready_within_seconds`` of registering (squatters, or daemons whose data or model
        never loaded): removed from the store, so their slots are free and their
        credentials refused from now on, also after a restart."""
        limit = self.settings.ready_within_seconds
        with self.lock:
            gone = [cid for cid, first in self.first_seen.items() if now - first > limit]
            for cid in gone:
                del self.first_seen[cid]
                self.last_seen.pop(cid, None)
                self._seen_wall.pop(cid, None)
                self.store.remove_client(cid)
                log.warning(
                    "client %d never asked for work within %.0fs of registering: "
                    "registration expired, its slot is free",
                    cid,
                    limit,
                )
        if gone:
            self.metrics.clients_registered.set(self.store.count_clients())

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
        pending = PendingTask(task, wt, deadline, posted_at=now)
        with self.lock:
            old = self.by_client.pop(task.client_id, None)
            if old is not None:
                self.pending.pop(old, None)
            self.pending[task_id] = pending
            self.by_client[task.client_id] = task_id
            self.round = max(self.round, task.round)
            self._take_parked(pending, now)
        self.metrics.bytes.labels("down").inc(len(task.downlink))
        self.notify()
        return pending

    def _take_parked(self, pending: PendingTask, now: float) -> None:
        """A result pushed before this task was posted counts if it answers this very
        task (the same id: the same round, kind, client, versions, settings, downlink)."""
        parked = self.parked.pop(pending.task.client_id, None)
        if parked is None:
            return
        if parked.task_id != pending.wire.task_id:
            self.metrics.results.labels("late").inc()
            log.info(
                "round %d: client %d's held result answers another task; dropped",
                parked.round,
                parked.client_id,
            )
            return
        if not self.store.add_result(parked, time.time()):
            return  # one result per (round, kind, client): the stored one is reused
        pending.result = result_of(parked)
        pending.answered_at = now
        self.metrics.results.labels("accepted").inc()
        log.info(
            "round %d: took client %d's result computed before the restart",
            parked.round,
            parked.client_id,
        )

    def parkable(self, client_id: int, header: wire.ResultHeader) -> bool:
        """May a result for a task not (yet) posted be held? Only for the round this
        process is about to run (its first, after a restart), only while the client has
        no task of this process, one per client, within the update size limit."""
        if header.error or header.kind not in ("train", "feature_stats"):
            return False
        with self.lock:
            if self.run_over or client_id in self.by_client or header.round <= self.round:
                return False
            held = sum(len(r.payload) for c, r in self.parked.items() if c != client_id)
            if held + header.payload_size > self.settings.max_update_bytes:
                return False
        done = [r["round"] for r in self.store.rounds() if r["status"] != "running"]
        return header.round == max(done, default=0) + 1

    def park(self, result: StoredResult) -> None:
        with self.lock:
            self.parked[result.client_id] = result

    def withdraw(self, task_id: str, why: str = "") -> None:
        """The engine stopped waiting: a later result for this task is rejected (as late,
        saying ``why``, when the task was still unanswered)."""
        with self.lock:
            pending = self.pending.pop(task_id, None)
            if pending is not None and self.by_client.get(pending.task.client_id) == task_id:
                del self.by_client[pending.task.client_id]
            if pending is not None and pending.result is None and why:
                self.closed[task_id] = why
                while len(self.closed) > KEEP_CLOSED_TASKS:
                    self.closed.popitem(last=False)

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
            self.parked.clear()
            for task_id in list(self.pending):
                self.withdraw(task_id, "the run is over")
        self.store.set_meta("status", "finished")
        self.notify()

    # ---- the clients' side (under the lock) --------------------------------------------
    def take_task(self, client_id: int) -> wire.PullReply | None:
        """The client's outstanding task, RUN_OVER, or None (nothing yet)."""
        with self.lock:
            self.pulled.add(client_id)
            if self.first_seen.pop(client_id, None) is not None:
                # ready: its registration never expires, in this process or the next
                self.store.mark_ready(client_id, time.time())
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
    """A new client (or, with ``req.probe``, only the job and whether there is room)."""
    if req.protocol_version != PROTOCOL_VERSION:
        raise FailedPrecondition(
            f"protocol version {req.protocol_version} is not supported; "
            f"this coordinator speaks {PROTOCOL_VERSION}"
        )
    expected = fleet.settings.enrollment_token
    if expected and not hmac.compare_digest(req.enrollment_token.encode(), expected.encode()):
        raise Unauthenticated("enrollment token is wrong or missing")
    with fleet.lock:
        if not fleet._bucket.take(now):
            raise ResourceExhausted("too many registrations; retry later")
        live = len(fleet.connected(now))
        if live >= fleet.settings.max_clients:
            raise ResourceExhausted(
                f"the federation is full: {live} of {fleet.settings.max_clients} clients live"
            )
        if req.probe:
            client_id, credential = 0, ""
        else:
            credential = secrets.token_urlsafe(32)
            client_id = fleet.store.add_client(hash_token(credential), req.name[:100], time.time())
            fleet.last_seen[client_id] = now
            fleet.first_seen[client_id] = now
    if client_id:
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
    """The caller's client id, from the metadata; raises unless the credential matches.

    An unknown id, an expired registration and a wrong credential get one answer
    (:data:`UNKNOWN_CLIENT`) after the same work, so a caller cannot probe for ids."""
    if not client or not token:
        raise Unauthenticated("missing client id or token (metadata x-fedpeft-client/-token)")
    try:
        client_id = int(client)
    except ValueError as exc:
        raise Unauthenticated(f"client id {client[:40]!r} is not an integer") from exc
    with fleet.lock:
        fleet.expire(now)  # an expired registration's row is gone: it reads as unknown
    stored = fleet.store.client_token_hash(client_id)
    matches = hmac.compare_digest(stored or _NO_SUCH_TOKEN, hash_token(token))
    if stored is None or not matches:
        raise Unauthenticated(UNKNOWN_CLIENT)
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
            if self.pending is not None:
                self.pending.uploading = True

    def _check(self) -> PendingTask | None:
        """The task this result answers; None: held for a task about to be re-issued."""
        h, cid, fleet = self.header, self.client_id, self.fleet
        pending = fleet.pending.get(h.task_id)
        if pending is None:
            if fleet.store.has_result(h.round, h.kind, cid):
                raise AlreadyExists(f"round {h.round} {h.kind}: client {cid} already answered")
            closed = fleet.closed.get(h.task_id)
            if closed is not None:
                fleet.metrics.results.labels("late").inc()
                log.warning("late result from client %d refused: %s", cid, closed)
                raise FailedPrecondition(f"stale result: {closed}")
            if fleet.parkable(cid, h):
                self._check_size()
                return None
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
        self._check_size()
        return pending

    def _check_size(self) -> None:
        h, limit = self.header, self.fleet.settings.max_update_bytes
        if h.payload_size > limit:
            raise ResourceExhausted(f"payload of {h.payload_size} bytes exceeds {limit}")
        cap = self.fleet.settings.max_client_examples
        if not 0 <= h.num_examples <= cap:
            raise InvalidArgument(
                f"ResultHeader.num_examples {h.num_examples} is outside [0, {cap}] "
                "(federation.max_client_examples)"
            )
        if len(h.payload_sha256) != 64:
            raise InvalidArgument("ResultHeader.payload_sha256 must be 64 hex digits")

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
            if self.pending is not None:
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
        if self.pending is None:  # the task is not posted (yet): held until it is
            fleet.park(stored)
            log.info(
                "round %d: client %d's result held until its task is posted again",
                h.round,
                self.client_id,
            )
            fleet.notify()
            return
        with fleet.lock:
            if fleet.pending.get(h.task_id) is not self.pending:  # withdrawn meanwhile
                why = fleet.closed.get(h.task_id, f"round {h.round}'s deadline has passed")
                fleet.metrics.results.labels("late").inc()
                raise FailedPrecondition(f"stale result: {why}")
            # a failure report carries nothing to count: only updates are kept (once)
            if not h.error and not fleet.store.add_result(stored, time.time()):
                raise AlreadyExists(f"round {h.round} {h.kind}: client {self.client_id} answered")
            self.pending.result = result_of(stored)
            self.pending.answered_at = now
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
