"""The client daemon (``fedpeft client run``): a data owner's side of a deployment.

It dials out to the coordinator (so it works behind NAT), registers once, and then loops:
pull a task (long-poll), train on its local data with the same
:class:`~fedpeft.client.app.LoraClientApp` the simulation uses, push the encoded update in
chunks. Its own state lives in ``--state``::

    state/
      identity.json     client id, credential, run id, coordinator (mode 0600)
      job.json          the job the coordinator sent at registration
      held/v<N>.safetensors   the global adapter of version N as reconstructed here
                        (compressed downlinks are deltas against it; the last 3 kept)
      residual.safetensors    error feedback: what compression dropped so far
      downloads/        artifacts (resumable: <sha256>.part grows until verified)

so a restarted daemon continues as the same client. The coordinator's job decides model,
LoRA, max_length, training and codec settings; ``--data`` replaces ``data.train`` and
``--shard i/n`` keeps a deterministic i-th of n slice of it (a fixed permutation, seed 0).

Before it takes a slot the daemon asks for the job (a probe registration) and checks its
data against it: the job's data settings must read the file, every label must be one of
the job's (a subset is fine: under label skew one class is normal), and its shard must
not be empty. Data that cannot train never registers.

Every task is checked against the data owner's privacy policy (``--policy FILE.toml``'s
``[client.policy]`` table and the policy flags; :mod:`fedpeft.client.policy`) before its
downlink is fetched or a step is trained; a task below the floor is answered with an
error result that starts ``client policy:`` and says why, which the coordinator logs.

Failures: an unreachable coordinator is retried with exponential backoff and full jitter;
a full federation (RESOURCE_EXHAUSTED, with the coordinator's reason) is retried
``max_refusals`` times, then the daemon stops with that reason; a TLS handshake failure
stops it at once with one line naming the coordinator. SIGTERM finishes the task in
progress (and pushes it), then exits 0; the daemon exits 0 when the coordinator says the
run is over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np

from fedpeft.client.policy import PolicyGuard
from fedpeft.compression.chain import is_chain
from fedpeft.config import ClientPolicy, JobConfig
from fedpeft.errors import ConfigError, DataError, FedPeftError, ProtocolError
from fedpeft.protocol import serde, wire
from fedpeft.protocol.messages import ClientState, TaskSettings, Tensors, TrainResult, TrainTask
from fedpeft.protocol.transport import MAX_MESSAGE_BYTES, is_loopback
from fedpeft.protocol.version import (
    CHUNK_BYTES,
    CLIENT_KEY,
    FETCH_ARTIFACT,
    HEARTBEAT,
    PROTOCOL_VERSION,
    PULL_TASK,
    PUSH_RESULT,
    REGISTER,
    STATE_MISMATCH,
    TOKEN_KEY,
    method_path,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
KEEP_HELD = 3
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class DaemonError(FedPeftError):
    """The daemon cannot go on (credential refused, data does not fit the job)."""


class TaskAbandoned(Exception):  # deliberately not one of CLIENT_ERRORS
    """Raised between optimizer steps once a heartbeat said the task is stale."""


@dataclass(frozen=True)
class DaemonOptions:
    coordinator: str
    data: str
    state: Path
    shard: tuple[int, int] = (0, 1)
    insecure_localhost: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None  # mutual TLS: this client's certificate and key
    tls_key: Path | None = None
    enrollment_token: str = ""
    name: str = ""
    threads: int | None = None
    max_rss_mb: int | None = None  # memory guard: refuse tasks above this resident size
    pull_wait: float = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_refusals: int = 20  # RESOURCE_EXHAUSTED (federation full) this often in a row: stop
    policy: ClientPolicy = field(default_factory=ClientPolicy)  # the data owner's floor

    def __post_init__(self) -> None:
        if not isinstance(self.max_refusals, int) or self.max_refusals < 1:
            raise ConfigError(
                "--max-refusals", f"must be a positive integer, got {self.max_refusals!r}"
            )


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ConfigError("--shard", f"must look like i/n (e.g. 0/3), got {text!r}") from exc
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError("--shard", f"needs 0 <= i < n, got {text!r}")
    return i, n


def shard_indices(num_examples: int, shard: tuple[int, int]) -> np.ndarray:
    """The i-th of n disjoint slices of a fixed (seed 0) permutation of the examples."""
    i, n = shard
    order = np.random.default_rng(0).permutation(num_examples)
    return np.sort(np.array_split(order, n)[i])


def check_local_data(job: dict[str, Any], data: str, shard: tuple[int, int]) -> list[str]:
    """Read ``data`` as the job reads training data; DaemonError naming ``--data`` unless
    it can train for the job. Returns the job's labels this data holds (any non-empty
    subset of the job's joins: one class per client is normal under label skew)."""
    from fedpeft.data import ClassificationData, load_dataset

    if "job" not in job:
        raise DaemonError("the coordinator sent no job; is it a fedpeft coordinator?")
    d = JobConfig.from_dict(job["job"]).data
    expected = job.get("label_names")
    try:
        dataset = load_dataset(
            data,
            text_column=d.text_column,
            label_column=d.label_column,
            header=None if d.header == "auto" else bool(d.header),
            label_names=expected,
            max_examples=d.max_train_examples,
        )
    except (ConfigError, DataError) as exc:
        raise DaemonError(f"--data {data} cannot train for this job: {exc}") from exc
    classifies = isinstance(dataset, ClassificationData)
    if classifies != (expected is not None):
        want = "labelled examples" if expected is not None else "instruction examples"
        raise DaemonError(f"--data {data}: the job ({job.get('task')}) needs {want}")
    if len(shard_indices(len(dataset), shard)) == 0:
        raise DaemonError(
            f"--data {data}: shard {shard[0]}/{shard[1]} of its {len(dataset)} examples is empty"
        )
    if not isinstance(dataset, ClassificationData):
        return []
    present = set(dataset.labels)
    return [name for i, name in enumerate(dataset.label_names) if i in present]


def handshake_failure(details: str) -> str | None:
    """The TLS reason in a channel error's details, or None when it is not a handshake."""
    match = re.search(r"handshake failed[^:]*:\s*(.*)", details, re.IGNORECASE)
    if match is None:
        return None
    return match.group(1).removesuffix(": OK").strip() or "no reason given"


def backoff_delays(base: float, cap: float) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**k))."""
    k = 0
    while True:
        yield random.uniform(0, min(cap, base * 2**k))
        k += 1


def rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---- local state ------------------------------------------------------------------------
class DaemonState:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / "held").mkdir(parents=True, exist_ok=True)
        (self.path / "downloads").mkdir(parents=True, exist_ok=True)

    def _json(self, name: str) -> dict[str, Any] | None:
        file = self.path / name
        return dict(json.loads(file.read_text())) if file.is_file() else None

    def identity(self) -> dict[str, Any] | None:
        return self._json("identity.json")

    def job(self) -> dict[str, Any] | None:
        return self._json("job.json")

    def save_registration(self, reg: wire.Registration, coordinator: str) -> None:
        from fedpeft.rundir import atomic_write_bytes

        previous = self.identity()
        if previous is None or previous.get("run_id") != reg.run_id:
            self.reset_training_state()  # a new run: nothing held from the old one counts
        identity = {
            "client_id": reg.client_id,
            "credential": reg.credential,
            "run_id": reg.run_id,
            "coordinator": coordinator,
        }
        path = self.path / "identity.json"
        atomic_write_bytes(path, json.dumps(identity).encode())
        path.chmod(0o600)
        atomic_write_bytes(self.path / "job.json", json.dumps(reg.job_config).encode())

    def reset_training_state(self) -> None:
        for file in (self.path / "held").glob("*.safetensors"):
            file.unlink()
        (self.path / "residual.safetensors").unlink(missing_ok=True)

    def held(self, version: int) -> Tensors | None:
        from safetensors.numpy import load_file

        file = self.path / "held" / f"v{version}.safetensors"
        return dict(load_file(str(file))) if file.is_file() else None

    def save_held(self, version: int, tensors: Tensors) -> None:
        from safetensors.numpy import save_file

        folder = self.path / "held"
        tmp = folder / f".v{version}.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, folder / f"v{version}.safetensors")
        versions = sorted(int(f.stem[1:]) for f in folder.glob("v*.safetensors"))
        for old in versions[:-KEEP_HELD]:
            (folder / f"v{old}.safetensors").unlink(missing_ok=True)

    def residual(self) -> Tensors | None:
        from safetensors.numpy import load_file

        file = self.path / "residual.safetensors"
        return dict(load_file(str(file))) if file.is_file() else None

    def save_residual(self, tensors: Tensors) -> None:
        from safetensors.numpy import save_file

        tmp = self.path / ".residual.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, self.path / "residual.safetensors")


# ---- the connection -------------------------------------------------------------------
class Connection:
    """The fedpeft.v1 calls over one channel, with this client's credential attached."""

    def __init__(self, opts: DaemonOptions) -> None:
        host = opts.coordinator.rsplit(":", 1)[0]
        if opts.insecure_localhost:
            if not is_loopback(host):
                raise ConfigError(
                    "--insecure-localhost",
                    f"plaintext is allowed to 127.0.0.1 only; the coordinator's address is "
                    f"{host!r}: use TLS, --tls-ca with the CA that signed its certificate",
                )
        elif (opts.tls_cert is None) != (opts.tls_key is None):
            raise ConfigError("--tls-cert", "mutual TLS needs both --tls-cert and --tls-key")
        for flag, path in (("--tls-ca", opts.tls_ca), ("--tls-cert", opts.tls_cert)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(flag, f"file not found: {path}")
        if opts.tls_key is not None and not Path(opts.tls_key).is_file():
            raise ConfigError("--tls-key", f"file not found: {opts.tls_key}")
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.enable_retries", 0),
        ]
        if opts.insecure_localhost:
            self.channel = grpc.insecure_channel(opts.coordinator, options=options)
        else:  # the CA (or the system roots); certificate and key for mutual TLS
            creds = grpc.ssl_channel_credentials(
                root_certificates=opts.tls_ca.read_bytes() if opts.tls_ca else None,
                private_key=opts.tls_key.read_bytes() if opts.tls_key else None,
                certificate_chain=opts.tls_cert.read_bytes() if opts.tls_cert else None,
            )
            self.channel = grpc.secure_channel(opts.coordinator, creds, options=options)
        self.metadata: tuple[tuple[str, str], ...] = ()
        ident: Callable[[bytes], bytes] = bytes
        self._register = self.channel.unary_unary(
            method_path(REGISTER), request_serializer=ident, response_deserializer=ident
        )
        self._heartbeat = self.channel.unary_unary(
            method_path(HEARTBEAT), request_serializer=ident, response_deserializer=ident
        )
        self._pull = self.channel.unary_unary(
            method_path(PULL_TASK), request_serializer=ident, response_deserializer=ident
        )
        self._push = self.channel.stream_unary(
            method_path(PUSH_RESULT), request_serializer=ident, response_deserializer=ident
        )
        self._fetch = self.channel.unary_stream(
            method_path(FETCH_ARTIFACT), request_serializer=ident, response_deserializer=ident
        )
        self._inflight: Any = None

    def authenticate(self, client_id: int, credential: str) -> None:
        self.metadata = ((CLIENT_KEY, str(client_id)), (TOKEN_KEY, credential))

    def register(self, token: str, name: str, *, probe: bool = False) -> wire.Registration:
        req = wire.RegisterRequest(token, PROTOCOL_VERSION, name, probe=probe)
        reply = self._register(serde.register_request_to_bytes(req), timeout=30)
        return serde.registration_from_bytes(reply)

    def heartbeat(self, task_id: str = "") -> wire.HeartbeatReply:
        req = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest(task_id))
        return serde.heartbeat_reply_from_bytes(
            self._heartbeat(req, timeout=15, metadata=self.metadata)
        )

    def pull(self, wait: float) -> wire.PullReply:
        req = serde.pull_request_to_bytes(wire.PullRequest(wait))
        future = self._pull.future(req, timeout=wait + 15, metadata=self.metadata)
        self._inflight = future
        try:
            return serde.pull_reply_from_bytes(future.result())
        except grpc.FutureCancelledError:  # cancel_pull(): SIGTERM or the run is over
            return wire.PullReply(wire.PullStatus.NO_TASK)
        finally:
            self._inflight = None

    def cancel_pull(self) -> None:
        future = self._inflight
        if future is not None:
            future.cancel()

    def push(self, header: wire.ResultHeader, payload: bytes) -> bool:
        def chunks() -> Iterator[bytes]:
            yield serde.result_chunk_to_bytes(wire.ResultChunk(header=header))
            for start in range(0, len(payload), CHUNK_BYTES):
                part = payload[start : start + CHUNK_BYTES]
                yield serde.result_chunk_to_bytes(wire.ResultChunk(data=part))

        reply = self._push(chunks(), timeout=600, metadata=self.metadata)
        return serde.push_reply_from_bytes(reply)

    def fetch(self, ref: wire.ArtifactRef, folder: Path) -> bytes:
        """The artifact's bytes, resumed from a partial download, checked by SHA-256."""
        final = folder / ref.sha256
        if final.is_file():
            return final.read_bytes()
        part = folder / f"{ref.sha256}.part"
        offset = part.stat().st_size if part.is_file() else 0
        if offset > ref.size:
            part.unlink()
            offset = 0
        req = serde.fetch_request_to_bytes(wire.FetchRequest(ref.sha256, offset))
        with part.open("ab") as f:
            for raw in self._fetch(req, timeout=600, metadata=self.metadata):
                piece = serde.artifact_piece_from_bytes(raw)
                if piece.offset != offset:
                    raise DaemonError(
                        f"artifact {ref.sha256[:12]}: chunk at {piece.offset}, expected {offset}"
                    )
                f.write(piece.data)
                offset += len(piece.data)
        data = part.read_bytes()
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            part.unlink()  # corrupt or truncated: start over next time
            raise DaemonError(
                f"artifact {ref.sha256[:12]}: got {len(data)} of {ref.size} bytes or a wrong "
                "SHA-256; discarded"
            )
        os.replace(part, final)
        return data

    def close(self) -> None:
        self.channel.close()


# ---- the daemon -------------------------------------------------------------------------
class ClientDaemon:
    def __init__(self, opts: DaemonOptions) -> None:
        self.opts = opts
        # the transport's files are checked first: a bad --tls-* flag leaves no state folder
        self.conn = Connection(opts)
        self.state = DaemonState(opts.state)
        self.guard = PolicyGuard(opts.policy, codec="")  # the job's codec: identify()
        self.stop = threading.Event()  # SIGTERM: finish the current task, then exit
        self.over = threading.Event()  # the coordinator said the run is over
        self.client_id = -1
        self.heartbeat_seconds = 5.0
        # (serial, task id) of the task in hand ("" when idle), replaced as one reference so
        # the heartbeat thread reads a consistent pair; the serial tells apart two handlings
        # of one task id (a restarted coordinator may re-issue the very same task)
        self._task: tuple[int, str] = (0, "")
        self._stale_serial = -1  # the handling a heartbeat reported stale
        self.app: Any = None
        self.present: list[str] = []  # the job's labels the local data holds
        self.indices: np.ndarray | None = None
        self._delays = backoff_delays(opts.backoff_base, opts.backoff_cap)

    # ---- retry --------------------------------------------------------------------------
    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """``call`` until it succeeds, backing off on transient errors (coordinator down);
        a refusal for lack of room (RESOURCE_EXHAUSTED) at most ``max_refusals`` times in a
        row; a TLS handshake failure not at all."""
        refusals = 0
        while True:
            try:
                result = call()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                details = exc.details() if hasattr(exc, "details") else str(exc)
                if code == grpc.StatusCode.CANCELLED and self.stop.is_set():
                    raise
                if code not in RETRYABLE and code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                self._check_handshake(details or "")
                delay = next(self._delays)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusals += 1
                    if refusals >= self.opts.max_refusals:
                        raise DaemonError(
                            f"the coordinator {self.opts.coordinator} refused {what} "
                            f"{refusals} times: {details}; giving up"
                        ) from exc
                    log.warning(
                        "%s refused (%d of %d): %s; retrying in %.1fs",
                        what,
                        refusals,
                        self.opts.max_refusals,
                        details,
                        delay,
                    )
                else:
                    log.info("%s: %s; retrying in %.1fs", what, code, delay)
                # stopping (SIGTERM) gives up waiting, except to deliver a finished update
                if self.stop.wait(delay) and what != "push":
                    raise
                continue
            self._delays = backoff_delays(self.opts.backoff_base, self.opts.backoff_cap)
            return result

    def _check_handshake(self, details: str) -> None:
        """A failed TLS handshake does not heal by retrying: stop with one line."""
        reason = handshake_failure(details)
        if reason is None:
            return
        hint = "--tls-ca (the CA that signed the coordinator's certificate)"
        if self.opts.insecure_localhost:
            hint = "TLS: the coordinator does not speak plaintext; --tls-ca instead"
        raise DaemonError(
            f"TLS handshake with the coordinator {self.opts.coordinator} failed ({reason}); "
            f"check {hint}"
        )

    # ---- start-up -----------------------------------------------------------------------
    def enroll(self) -> None:
        """Ask for the job, check the local data against it, then register."""
        probe = self._retry(
            "register",
            lambda: self.conn.register(self.opts.enrollment_token, self.opts.name, probe=True),
        )
        self.present = check_local_data(probe.job_config, self.opts.data, self.opts.shard)
        if self.present:
            log.info("--data holds %d of the job's labels: %s", len(self.present), self.present)
        if probe.credential:  # a coordinator without probes registered us already
            reg = probe
        else:
            reg = self._retry(
                "register",
                lambda: self.conn.register(self.opts.enrollment_token, self.opts.name),
            )
        self.state.save_registration(reg, self.opts.coordinator)
        log.info("registered as client %d (run %s)", reg.client_id, reg.run_id)
        self.heartbeat_seconds = reg.heartbeat_seconds or self.heartbeat_seconds

    def identify(self) -> dict[str, Any]:
        identity = self.state.identity()
        if identity is None or identity.get("coordinator") != self.opts.coordinator:
            self.enroll()
            identity = self.state.identity()
        else:  # known here already: the data must still fit the job it holds
            job = self.state.job()
            if job is None:
                raise DaemonError(f"{self.state.path}/job.json is missing; delete the folder")
            self.present = check_local_data(job, self.opts.data, self.opts.shard)
        assert identity is not None  # written by enroll()
        self.client_id = int(identity["client_id"])
        self.conn.authenticate(self.client_id, str(identity["credential"]))
        self.guard = PolicyGuard(self.opts.policy, codec=self.job_config().codec.name)
        return identity

    def job_config(self) -> JobConfig:
        job = self.state.job()
        if job is None or "job" not in job:
            raise DaemonError(f"{self.state.path}/job.json is missing; delete the state folder")
        cfg = JobConfig.from_dict(job["job"])
        return cfg.replace(
            {
                "data.train": self.opts.data,
                "data.eval": None,
                "train.threads": self.opts.threads,
                "output": str(self.state.path / "run"),
            }
        )

    def load_app(self) -> None:
        from fedpeft.client.app import LoraClientApp

        cfg = self.job_config()
        job = self.state.job() or {}
        expected = job.get("label_names")
        name = f"client-{self.client_id}"
        if expected is not None and self.present != list(expected):
            # a subset of the job's labels: the head and the label ids are the job's
            self.app = LoraClientApp(cfg, name=name, label_names=list(expected))
        else:
            self.app = LoraClientApp(cfg, name=name)
        self.app.on_step = self._on_step
        mine = self.app.adapted.label_names
        if expected is not None and list(expected) != list(mine or []):
            raise DaemonError(
                f"--data {self.opts.data} has labels {mine}, the job's are {expected} "
                "(from the coordinator's evaluation data)"
            )
        self.indices = shard_indices(len(self.app.train_data), self.opts.shard)
        log.info(
            "client %d: %d local examples (shard %d/%d)",
            self.client_id,
            len(self.indices),
            *self.opts.shard,
        )

    # ---- heartbeats ---------------------------------------------------------------------
    def _heartbeats(self) -> None:
        while not self.stop.is_set() and not self.over.is_set():
            try:
                serial, sent = self._task
                reply = self.conn.heartbeat(sent)
                if reply.task_stale and sent:
                    self._stale_serial = serial
                if reply.heartbeat_seconds > 0:
                    self.heartbeat_seconds = reply.heartbeat_seconds
                if reply.run_over:
                    self.over.set()
                    self.conn.cancel_pull()
            except grpc.RpcError as exc:
                log.debug("heartbeat failed: %s", exc.code() if hasattr(exc, "code") else exc)
            self.stop.wait(self.heartbeat_seconds)

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        log.info("client policy: %s", self.opts.policy.describe())
        self.identify()
        # heartbeats from here on: a daemon loading its backbone is live, not gone
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        self.load_app()
        enrolled_again = False
        while not self.stop.is_set() and not self.over.is_set():
            try:
                reply = self._retry("pull", lambda: self.conn.pull(self.opts.pull_wait))
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.CANCELLED:
                    continue  # SIGTERM or run over: the loop condition decides
                if code == grpc.StatusCode.UNAUTHENTICATED and not enrolled_again:
                    # a new run (fresh state database) or an expired registration
                    log.warning(
                        "the coordinator refused client %d (%s); registering again",
                        self.client_id,
                        exc.details(),
                    )
                    self.reenroll()
                    enrolled_again = True
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise DaemonError(
                        f"credential refused ({exc.details()}) right after registering; "
                        f"delete {self.state.path} to enroll again"
                    ) from exc
                raise
            enrolled_again = False
            if reply.status is wire.PullStatus.RUN_OVER:
                self.over.set()
            elif reply.status is wire.PullStatus.TASK and reply.task is not None:
                self.handle(reply.task)
        log.info(
            "client %d exiting (%s)",
            self.client_id,
            "run over" if self.over.is_set() else "stopped",
        )
        self.conn.close()
        return 0

    def reenroll(self) -> None:
        """Register again; a job that changed (a new run) gets a new app."""
        job = self.state.job()
        self.enroll()
        self.identify()
        if self.state.job() != job:
            self.state.reset_training_state()
            self.load_app()

    def handle(self, wt: wire.WireTask) -> None:
        serial = self._task[0] + 1
        self._task = (serial, wt.task_id)
        try:
            result = self._train(wt)
            self._push(wt, result)
        except TaskAbandoned:
            # nothing saved, nothing pushed: the held adapter and residual stay as they were
            log.warning(
                "client %d: round %d %s abandoned: the coordinator no longer expects it "
                "(restarted, or the round's deadline passed)",
                self.client_id,
                wt.round,
                wt.kind,
            )
        finally:
            self._task = (serial, "")

    def _on_step(self, step: int, total: int, loss: float) -> None:
        if self._stale_serial == self._task[0]:
            raise TaskAbandoned(f"step {step} of {total}")

    def _refusal(self, task: TrainTask) -> str | None:
        """Why the client policy refuses ``task`` (the error the coordinator gets), or None."""
        reason = self.guard.check(task)
        if reason is None:
            return None
        log.warning(
            "client %d: round %d %s refused by the client policy: %s",
            self.client_id,
            task.round,
            task.kind,
            reason,
        )
        return f"client policy: {reason}"

    def _train(self, wt: wire.WireTask) -> TrainResult:
        fail = lambda why: TrainResult(wt.round, self.client_id, error=why)  # noqa: E731
        if self.opts.max_rss_mb and rss_mb() > self.opts.max_rss_mb:
            return fail(f"memory guard: {rss_mb():.0f} MB resident > {self.opts.max_rss_mb} MB")
        try:
            settings = TaskSettings.from_dict(wt.config)
        except ProtocolError as exc:
            return fail(str(exc))
        task = TrainTask(
            round=wt.round,
            client_id=self.client_id,
            seed=wt.seed,
            downlink=b"",
            downlink_is_delta=wt.downlink_is_delta,
            version=wt.version,
            state=ClientState(version=wt.base_version),
            indices=self.indices,
            settings=settings,
            kind=wt.kind,
            secagg=wt.secagg,
        )
        refused = self._refusal(task)  # the data owner's floor, before any download
        if refused is not None:
            return fail(refused)
        if wt.artifact is not None:
            ref, folder = wt.artifact, self.state.path / "downloads"
            try:
                downlink = self._retry("fetch", lambda: self.conn.fetch(ref, folder))
            except DaemonError as exc:
                return fail(str(exc))
        else:
            downlink = wt.downlink or b""
        held = None
        if wt.downlink_is_delta:
            held = self.state.held(wt.base_version)
            # a chain from version 0 starts at the initial adapter the app builds itself
            if held is None and not (wt.base_version == 0 and is_chain(downlink)):
                return fail(f"{STATE_MISMATCH}: no held adapter of version {wt.base_version}")
        task = replace(
            task,
            downlink=downlink,
            state=ClientState(version=wt.base_version, held=held, residual=self.state.residual()),
        )
        log.info("client %d: round %d %s", self.client_id, wt.round, wt.kind)
        result: TrainResult = self.app.train(task)
        if result.ok and result.state is not None:  # kept here, never sent
            if result.state.held is not None:
                self.state.save_held(wt.version, result.state.held)
            if result.state.residual is not None:
                self.state.save_residual(result.state.residual)
        return result

    def _push(self, wt: wire.WireTask, result: TrainResult) -> None:
        payload = result.payload if result.ok else b""
        header = wire.ResultHeader(
            task_id=wt.task_id,
            round=wt.round,
            kind=wt.kind,
            num_examples=result.num_examples,
            payload_size=len(payload),
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            metrics={k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))},
            error=result.error or "",
        )
        try:
            self._retry("push", lambda: self.conn.push(header, payload))
            log.info("client %d: round %d pushed %d bytes", self.client_id, wt.round, len(payload))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            # stale (deadline passed, coordinator restarted) or already answered: move on
            log.warning(
                "client %d: round %d result not taken: %s %s",
                self.client_id,
                wt.round,
                code,
                exc.details() if hasattr(exc, "details") else "",
            )


def run_daemon(opts: DaemonOptions) -> int:
    """Run until the coordinator says the run is over (0) or SIGTERM (0)."""
    daemon = ClientDaemon(opts)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current task, then exiting", signum)
        daemon.stop.set()
        daemon.conn.cancel_pull()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return daemon.run()
    except grpc.RpcError as exc:
        if daemon.stop.is_set():
            return 0
        code = exc.code() if hasattr(exc, "code") else "?"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise DaemonError(f"coordinator refused: {code}: {details}") from exc
