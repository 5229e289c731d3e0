"""Coordinator bootstrap: the gRPC server (TLS, limits, health) and a whole deployed job.

:class:`CoordinatorServer` runs a ``grpc.aio`` server on its own thread and event loop;
:func:`serve_job` runs a :class:`~fedpeft.coordinator.job.Job` (the simulation's lifecycle:
run folder, checkpoint, adapter, summary) on the calling thread with a
:class:`~fedpeft.coordinator.grpc_backend.GrpcBackend`, keeps the run's status in the state
database, tells the daemons the run is over and returns the summary.

Restarting with the same ``--output`` and ``--state`` resumes at the last checkpointed
round; the state database keeps clients (so daemons reconnect as themselves) and accepted
results (so nothing is counted twice). Which run that is, is checked before anything is
written (:func:`check_serve_output`): the run folder's run id must be the state database's,
its config the job's (``federation.rounds`` may grow), its task and labels the evaluation
data's. A coordinator that cannot start (port in use, a foreign state database, ...)
leaves no state database behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedpeft.config import JobConfig
from fedpeft.coordinator.handlers import Fleet, FleetSettings
from fedpeft.coordinator.metrics import FleetMetrics
from fedpeft.coordinator.servicer import FleetServicer, add_fleet_servicer
from fedpeft.coordinator.store import Store
from fedpeft.data import check_job_labels
from fedpeft.errors import ConfigError, FedPeftError
from fedpeft.models import resolve_model_path
from fedpeft.protocol.messages import AppFactory
from fedpeft.protocol.transport import MAX_MESSAGE_BYTES, TlsFiles, check_transport
from fedpeft.protocol.version import SERVICE
from fedpeft.rundir import RunDir, RunFolderInUse

if TYPE_CHECKING:
    from fedpeft.coordinator.engine import EngineHooks

log = logging.getLogger(__name__)


def server_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


class CoordinatorServer:
    """A ``grpc.aio`` server for a :class:`Fleet`, on a thread of its own."""

    def __init__(
        self,
        fleet: Fleet,
        host: str,
        port: int,
        *,
        tls: TlsFiles | None = None,
        insecure_localhost: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        check_transport(host, tls, insecure_localhost, "the coordinator's")
        self.fleet, self.host, self.port = fleet, host, port
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._health: Any = None

    def start(self) -> int:
        """Start serving; return the bound port. A port in use is a :class:`ConfigError`
        naming it."""
        _check_port_free(self.host, self.port)
        self._thread = threading.Thread(target=self._main, name="fedpeft-grpc", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self.port

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() (or logged if already started)
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                log.error("gRPC server stopped: %s", exc)
        finally:
            loop.close()

    async def _serve(self) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        self._stop = asyncio.Event()
        server = grpc.aio.server(options=server_options(self.max_message_bytes))
        add_fleet_servicer(FleetServicer(self.fleet), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{self.host}:{self.port}"
        try:
            if self.tls is None:
                bound = server.add_insecure_port(address)
            else:
                key, cert = (
                    _read_tls(self.tls.key, "--tls-key"),
                    _read_tls(self.tls.cert, "--tls-cert"),
                )
                ca = _read_tls(self.tls.ca, "--tls-ca") if self.tls.ca else None
                creds = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
                )
                bound = server.add_secure_port(address, creds)
        except RuntimeError:  # grpc: "Failed to bind to address ..." (no port named)
            bound = 0
        if bound == 0:
            raise ConfigError(
                "--port",
                f"cannot listen on {address}: port {self.port} is in use, or {self.host} is "
                "not an address of this machine",
            )
        self.port = bound
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE):
            await self._health.set(name, serving)
        log.info(
            "coordinator listening on %s:%d (%s)",
            self.host,
            bound,
            "TLS" if self.tls else "plaintext, loopback only",
        )
        self._started.set()
        await self._stop.wait()
        for name in ("", SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace=1.0)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on before gRPC tries it (gRPC's own failure
    names no port and logs a line of its own). Binding as gRPC does (SO_REUSEADDR), so a
    port left in TIME_WAIT passes; a host that is a name is left to gRPC."""
    if port == 0:
        return
    try:
        family = (
            socket.AF_INET6
            if ipaddress.ip_address(host.strip("[]")).version == 6
            else (socket.AF_INET)
        )
    except ValueError:
        return
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ConfigError(
                "--port",
                f"cannot listen on {host}:{port}: "
                + (
                    f"port {port} is in use"
                    if exc.errno == errno.EADDRINUSE
                    else f"{exc.strerror or exc}"
                ),
            ) from exc


def _read_tls(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(option, f"cannot read {path}: {exc.strerror or exc}") from exc


# ---- a whole job ---------------------------------------------------------------------
@dataclass
class ServeOptions:
    """Everything of ``coordinator serve`` that is not the job itself."""

    state: Path
    host: str = "0.0.0.0"
    port: int = 50051
    tls: TlsFiles | None = None
    insecure_localhost: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # /metrics stays on loopback unless told otherwise
    round_timeout: float = 14400.0
    wait_clients_timeout: float | None = None  # None: wait for clients as long as it takes
    shutdown_grace: float = 30.0  # how long to keep telling daemons the run is over
    fleet: FleetSettings = field(default_factory=FleetSettings)
    force: bool = False  # replace another run held in the output folder


def client_job(cfg: JobConfig, task: str, label_names: list[str] | None) -> dict[str, Any]:
    """What a daemon receives at registration: the job minus the coordinator's own paths,
    plus the task and label names (taken from the coordinator's evaluation data)."""
    job = cfg.to_dict()
    job.pop("output", None)
    data = dict(job.get("data", {}))
    for key in ("train", "eval"):
        data.pop(key, None)
    job["data"] = data
    return {"job": job, "task": task, "label_names": label_names}


def coordinator_config(cfg: JobConfig) -> JobConfig:
    """The coordinator's own client app evaluates: its "training" set is the evaluation
    data, which fixes the task and the label names for the whole federation."""
    if not cfg.data.eval:
        raise ConfigError("--eval-data", "the coordinator needs evaluation data (data.eval)")
    return cfg.replace({"data.train": cfg.data.eval, "data.max_train_examples": None})


def serve_job(
    cfg: JobConfig,
    opts: ServeOptions,
    *,
    app_factory: AppFactory,
    hooks: EngineHooks | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the deployed job; returns the summary (like ``run_simulation``).

    ``app_factory`` builds the coordinator's own app, which evaluates the global adapter:
    build it from :func:`coordinator_config`. It is called once the gRPC server is up, so
    that daemons register and load their backbone while the coordinator loads its own."""
    # the model side (torch) is imported only to run a job, not to check its options
    from fedpeft.coordinator.failures import RunFailed
    from fedpeft.coordinator.grpc_backend import GrpcBackend, LiveClientSampler
    from fedpeft.coordinator.job import Job
    from fedpeft.training.setup import load_job_data

    started = time.perf_counter()
    _check_deployable(cfg, opts)
    fed = cfg.federation
    coord_cfg = coordinator_config(cfg)
    data = load_job_data(coord_cfg)  # task and label names, before the backbone loads
    task, labels = data.task.value, data.label_names
    del data
    check_job_labels(labels, "data.eval", str(cfg.data.eval))
    store = Store(opts.state)  # a corrupt or foreign file: refused, left as it was
    try:
        resume = check_serve_output(cfg, store, task, labels, force=opts.force)
    except BaseException:
        store.discard()
        raise
    with _serving(cfg, opts, store, client_job(cfg, task, labels)) as (fleet, metrics):
        app = app_factory("coordinator")
        meta = {
            "task": task,
            "label_names": labels,
            "model_path": resolve_model_path(coord_cfg.model.name, coord_cfg.model.cache_dir),
            "deployment": "grpc",
            "run_id": store.run_id,
        }
        job = Job(
            cfg,
            meta,
            resume=resume,
            force=opts.force,
            population=_dp_population(cfg),
            started=started,
        )
        backend = GrpcBackend(
            fleet,
            app,
            job.settings["downlink"],
            round_timeout=opts.round_timeout,
            min_fit_clients=cfg.federation.min_fit_clients,
        )
        sampler = LiveClientSampler(
            fleet, fed.clients_per_round, cfg.train.seed, opts.wait_clients_timeout
        )
        try:
            summary = job.run(
                backend,
                sampler,
                # a real client brings its own data: no shard is sent (ids index this list)
                [None] * (fed.clients + 1),
                _store_hooks(store, metrics, hooks),
                export=export,
                on_resume=metrics.rounds_completed.set,
                # a DP run's noise against its clip, in the operator's log before round 1
                on_plan=lambda line: log.warning("%s", line),
            )
        except RunFailed:
            store.set_meta("status", "failed")
            raise
        fleet.finish()
        _tell_daemons(fleet, opts.shutdown_grace)
        return summary


def _check_deployable(cfg: JobConfig, opts: ServeOptions) -> None:
    check_transport(opts.host, opts.tls, opts.insecure_localhost, "the coordinator's")
    opts.fleet.check_enrollment()  # who may register, before any data loads
    if cfg.federation.sampling != "fixed":
        raise ConfigError("federation.sampling", "a deployment samples a fixed number per round")
    if cfg.federation.calibration != "none":
        raise ConfigError("federation.calibration", "not supported by the gRPC coordinator yet")


#: What a restarted coordinator may change and still continue its run: how long it runs
#: and where it computes, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {"federation.rounds", "train.threads", "model.device", "model.cache_dir", "output"}
)


def config_changes(held: JobConfig, given: JobConfig) -> list[str]:
    """The dotted fields in which ``given`` makes another run than ``held``."""
    a, b = _flat(held.to_dict()), _flat(given.to_dict())
    return sorted(k for k in (a.keys() | b.keys()) - RESUMABLE_CHANGES if a.get(k) != b.get(k))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:  # TOML reads sequences back as lists
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def check_serve_output(
    cfg: JobConfig, store: Store, task: str, labels: list[str] | None, *, force: bool = False
) -> bool:
    """Whether ``serve`` resumes the run in ``cfg.output``; refuses, writing nothing, a
    folder or state database that holds another run.

    The state database belongs to one run folder (the ``output`` it recorded), and
    ``--force`` does not change that: a new run folder needs a new ``--state``. The run
    folder continues when it holds this database's run (its ``meta.json`` run id) with
    the same config (:data:`RESUMABLE_CHANGES` aside), task and labels; it holds another
    run: refused unless ``force`` (the job then replaces it). A database with finished
    rounds needs the run folder that holds them."""
    from fedpeft.coordinator.engine import checkpoint_exists

    run = RunDir(cfg.output)
    recorded = store.get_meta("output")
    if recorded is not None and recorded != str(run.path.resolve()):
        raise ConfigError(
            "--state",
            f"{store.path} belongs to the run in {recorded}; give that --output, or a new "
            "--state for a new run",
        )
    other = _other_run(run, cfg, store.run_id, task, labels) if run.holds_run() else None
    if other is not None and not force:
        raise RunFolderInUse(run.path, other)
    finished = sum(r["status"] != "running" for r in store.rounds())
    if finished and (other is not None or not checkpoint_exists(run.path)):
        raise ConfigError(
            "--state",
            f"{store.path} holds {finished} finished rounds of run {store.run_id}, but "
            f"{run.path} does not hold that run's checkpoint; restore the run folder, or "
            "give a new --state for a new run",
        )
    return other is None and checkpoint_exists(run.path)


def _other_run(
    run: RunDir, cfg: JobConfig, run_id: str, task: str, labels: list[str] | None
) -> str | None:
    """Why the run held in ``run`` is not this coordinator's (None: it is)."""
    held_id = run.run_id()
    if held_id != run_id:
        return f"{run.describe()}; the state database's run is {run_id}"
    meta = run.meta()
    if meta.get("task") != task or meta.get("label_names") != labels:
        return (
            f"run {held_id} has task {meta.get('task')} with labels "
            f"{meta.get('label_names')}; the evaluation data gives {task} with {labels}"
        )
    try:
        held = run.config()
    except (FedPeftError, OSError, ValueError) as exc:
        return f"run {held_id} with an unreadable config.toml ({exc})"
    changed = config_changes(held, cfg)
    if changed:
        return f"run {held_id} with another config: {', '.join(changed)} differ"
    return None


@contextlib.contextmanager
def _serving(
    cfg: JobConfig, opts: ServeOptions, store: Store, job: dict[str, Any]
) -> Iterator[tuple[Fleet, FleetMetrics]]:
    """The fleet behind a started gRPC server, and its metrics; afterwards the daemons
    are told the run is over (if the job did not tell them) and all is closed. When the
    server cannot start, a state database created for it is removed again."""
    metrics = FleetMetrics(dp=cfg.dp.enabled)
    artifacts = store.path.with_suffix(".artifacts")
    new_artifacts = not artifacts.exists()
    try:
        if opts.metrics_port:
            metrics.serve(opts.metrics_port, opts.metrics_host)
        settings = opts.fleet
        if settings.max_clients != cfg.federation.clients:
            settings = FleetSettings(**{**settings.__dict__, "max_clients": cfg.federation.clients})
        fleet = Fleet(
            store=store, settings=settings, job_config=job, artifact_dir=artifacts, metrics=metrics
        )
        server = CoordinatorServer(
            fleet, opts.host, opts.port, tls=opts.tls, insecure_localhost=opts.insecure_localhost
        )
        server.start()
    except BaseException:
        metrics.close()
        if new_artifacts and store.created:
            shutil.rmtree(artifacts, ignore_errors=True)
        store.discard()
        raise
    store.set_meta("status", "running")
    store.set_meta("rounds", str(cfg.federation.rounds))
    store.set_meta("output", str(Path(cfg.output).resolve()))
    try:
        yield fleet, metrics
    finally:
        if not fleet.run_over:
            fleet.finish()
            _tell_daemons(fleet, min(opts.shutdown_grace, 5.0))
        server.stop()
        metrics.close()
        store.close()


def _dp_population(cfg: JobConfig) -> int:
    """The DP accountant's population in a deployment: the clients of one round.

    --max-clients is not who is really there, so a deployment accounts as if every round
    took everyone (no sampling amplification), an upper bound on the privacy spent."""
    fed = cfg.federation
    if cfg.dp.enabled and fed.clients != fed.clients_per_round:
        log.warning(
            "DP: accounting without sampling amplification (population = %d per round)",
            fed.clients_per_round,
        )
    return fed.clients_per_round


def _tell_daemons(fleet: Fleet, grace: float) -> None:
    """Keep serving until every connected daemon heard the run is over (or ``grace``)."""
    end = time.monotonic() + grace
    with fleet.changed:
        while time.monotonic() < end:
            waiting = set(fleet.connected(time.monotonic())) - fleet.told_over
            if not waiting:
                return
            fleet.changed.wait(0.5)
    log.info(
        "run over; %d daemons did not hear it (they will find out on reconnect)",
        len(set(fleet.connected(time.monotonic())) - fleet.told_over),
    )


def _store_hooks(store: Store, metrics: FleetMetrics, hooks: EngineHooks | None) -> EngineHooks:
    from fedpeft.coordinator.engine import EngineHooks

    inner = hooks or EngineHooks()

    def on_round_start(round_num: int, cohort: int) -> None:
        store.round_started(round_num, time.time())
        metrics.round.set(round_num)
        log.info("round %d: %d clients", round_num, cohort)
        if inner.on_round_start:
            inner.on_round_start(round_num, cohort)

    def on_round_end(record: dict[str, Any]) -> None:
        store.round_committed(int(record["round"]), record, time.time())
        metrics.rounds_completed.set(int(record["round"]))
        if "epsilon" in record:  # DP on: the budget spent so far
            metrics.set_epsilon(float(record["epsilon"]))
        log.info("round %d done: %s", record["round"], _brief(record))
        if inner.on_round_end:
            inner.on_round_end(record)

    return EngineHooks(on_round_start, inner.on_client_done, on_round_end)


def _brief(record: dict[str, Any]) -> str:
    keys = ("clients_ok", "clients_rejected", "eval_accuracy", "bytes_up", "round_failed")
    return json.dumps({k: record[k] for k in keys if k in record})
