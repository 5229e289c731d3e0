"""Coordinator bootstrap: the gRPC server (TLS, limits, health) and a whole deployed job.

:class:`CoordinatorServer` runs a ``grpc.aio`` server on its own thread and event loop;
:func:`serve_job` runs a :class:`~fedpeft.coordinator.job.Job` (the simulation's lifecycle:
run folder, checkpoint, adapter, summary) on the calling thread with a
:class:`~fedpeft.coordinator.grpc_backend.GrpcBackend`, keeps the run's status in the state
database, tells the daemons the run is over and returns the summary.

Restarting with the same ``--output`` resumes at the last checkpointed round; the state
database (``--state``) keeps clients (so daemons reconnect as themselves) and accepted
results (so nothing is counted twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
from fedpeft.errors import ConfigError, FedPeftError
from fedpeft.models import resolve_model_path
from fedpeft.protocol.messages import AppFactory
from fedpeft.protocol.transport import MAX_MESSAGE_BYTES, TlsFiles, check_transport
from fedpeft.protocol.version import SERVICE

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
        """Start serving; return the bound port."""
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
        if self.tls is None:
            bound = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(self.tls.key.read_bytes(), self.tls.cert.read_bytes())],
                root_certificates=self.tls.ca.read_bytes() if self.tls.ca else None,
                require_client_auth=self.tls.ca is not None,
            )
            bound = server.add_secure_port(address, creds)
        if bound == 0:
            raise FedPeftError(f"cannot listen on {address} (in use, or not an address here)")
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
    round_timeout: float = 14400.0
    wait_clients_timeout: float | None = None  # None: wait for clients as long as it takes
    shutdown_grace: float = 30.0  # how long to keep telling daemons the run is over
    fleet: FleetSettings = field(default_factory=FleetSettings)


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
    from fedpeft.coordinator.engine import checkpoint_exists
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
    with _serving(cfg, opts, client_job(cfg, task, labels)) as (fleet, store, metrics):
        app = app_factory("coordinator")
        meta = {
            "task": task,
            "label_names": labels,
            "model_path": resolve_model_path(coord_cfg.model.name, coord_cfg.model.cache_dir),
            "deployment": "grpc",
            "run_id": store.run_id,
        }
        resume = checkpoint_exists(cfg.output)
        job = Job(cfg, meta, resume=resume, population=_dp_population(cfg), started=started)
        backend = GrpcBackend(
            fleet, app, job.settings["downlink"], round_timeout=opts.round_timeout
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
            )
        except RunFailed:
            store.set_meta("status", "failed")
            raise
        fleet.finish()
        _tell_daemons(fleet, opts.shutdown_grace)
        return summary


def _check_deployable(cfg: JobConfig, opts: ServeOptions) -> None:
    check_transport(opts.host, opts.tls, opts.insecure_localhost, "the coordinator's")
    if cfg.federation.sampling != "fixed":
        raise ConfigError("federation.sampling", "a deployment samples a fixed number per round")
    if cfg.federation.calibration != "none":
        raise ConfigError("federation.calibration", "not supported by the gRPC coordinator yet")


@contextlib.contextmanager
def _serving(
    cfg: JobConfig, opts: ServeOptions, job: dict[str, Any]
) -> Iterator[tuple[Fleet, Store, FleetMetrics]]:
    """The fleet behind a started gRPC server, its state and its metrics; afterwards the
    daemons are told the run is over (if the job did not tell them) and all is closed."""
    store = Store(opts.state)
    metrics = FleetMetrics()
    if opts.metrics_port:
        metrics.serve(opts.metrics_port, "127.0.0.1" if opts.insecure_localhost else opts.host)
    settings = opts.fleet
    if settings.max_clients != cfg.federation.clients:
        settings = FleetSettings(**{**settings.__dict__, "max_clients": cfg.federation.clients})
    fleet = Fleet(
        store=store,
        settings=settings,
        job_config=job,
        artifact_dir=store.path.with_suffix(".artifacts"),
        metrics=metrics,
    )
    server = CoordinatorServer(
        fleet, opts.host, opts.port, tls=opts.tls, insecure_localhost=opts.insecure_localhost
    )
    server.start()
    store.set_meta("status", "running")
    store.set_meta("rounds", str(cfg.federation.rounds))
    store.set_meta("output", str(Path(cfg.output).resolve()))
    try:
        yield fleet, store, metrics
    finally:
        if not fleet.run_over:
            fleet.finish()
            _tell_daemons(fleet, min(opts.shutdown_grace, 5.0))
        server.stop()
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
