"""``fedpeft coordinator serve | status``: the model owner's side of a deployment."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from fedpeft.cli.common import (
    config_file_option,
    console,
    force_option,
    log_to_stderr,
    resolve_config,
)
from fedpeft.cli.options import JOB_DEFAULTS, SIMULATION_ONLY, job_keys, job_options
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.protocol.transport import TlsFiles

if TYPE_CHECKING:
    from fedpeft.coordinator.handlers import FleetSettings
    from fedpeft.protocol.messages import ClientApp

coordinator_app = typer.Typer(
    help="Run rounds with client daemons over gRPC (the model owner's side).",
    no_args_is_help=True,
)

# serve's own options: where it listens, who may join, where its state lives
_PANEL = "Server, TLS & state"
STATE = typer.Option(
    ..., "--state", help="coordinator state database (SQLite)", rich_help_panel=_PANEL
)
HOST = typer.Option(
    None,
    "--host",
    help="listen address (default 0.0.0.0; 127.0.0.1 when insecure)",
    rich_help_panel=_PANEL,
)
PORT = typer.Option(50051, "--port", help="gRPC port", rich_help_panel=_PANEL)
INSECURE_LOCALHOST = typer.Option(
    False,
    "--insecure-localhost",
    help="plaintext, allowed on 127.0.0.1 only",
    rich_help_panel=_PANEL,
)
TLS_CERT = typer.Option(None, "--tls-cert", help="server certificate (PEM)", rich_help_panel=_PANEL)
TLS_KEY = typer.Option(None, "--tls-key", help="server private key (PEM)", rich_help_panel=_PANEL)
TLS_CA = typer.Option(
    None,
    "--tls-ca",
    help="CA of client certificates: turns on mutual TLS",
    rich_help_panel=_PANEL,
)
ENROLLMENT_TOKEN = typer.Option(
    None,
    "--enrollment-token",
    envvar="FEDPEFT_ENROLLMENT_TOKEN",
    help="clients must present it to register (required unless --open-enrollment)",
    rich_help_panel=_PANEL,
)
METRICS_PORT = typer.Option(
    None, "--metrics-port", help="serve Prometheus /metrics on this port", rich_help_panel=_PANEL
)
METRICS_HOST = typer.Option(
    "127.0.0.1",
    "--metrics-host",
    help="address /metrics listens on (loopback unless told otherwise)",
    rich_help_panel=_PANEL,
)
ROUND_TIMEOUT = typer.Option(
    14400.0,
    "--round-timeout",
    help="seconds a round waits for live clients (dead ones are dropped sooner)",
    rich_help_panel=_PANEL,
)
HEARTBEAT_SECONDS = typer.Option(
    5.0, "--heartbeat-seconds", help="client heartbeat interval", rich_help_panel=_PANEL
)
LIVENESS_SECONDS = typer.Option(
    20.0,
    "--liveness-seconds",
    help="silent this long: a client is dropped from its round",
    rich_help_panel=_PANEL,
)
WAIT_CLIENTS_TIMEOUT = typer.Option(
    None,
    "--wait-clients-timeout",
    help="stop waiting for clients after this (default: wait)",
    rich_help_panel=_PANEL,
)
SHUTDOWN_GRACE = typer.Option(
    30.0,
    "--shutdown-grace",
    help="seconds to keep telling daemons the run is over",
    rich_help_panel=_PANEL,
)
OPEN_ENROLLMENT = typer.Option(
    False,
    "--open-enrollment",
    help="let anyone who reaches the port register, with no enrolment secret (implied "
    "by --insecure-localhost without a token: only this machine can reach it)",
    rich_help_panel=_PANEL,
)
MAX_UPDATE_MB = typer.Option(
    256.0, "--max-update-mb", help="largest client update", rich_help_panel=_PANEL
)
INLINE_DOWNLINK_KB = typer.Option(
    1024,
    "--inline-downlink-kb",
    help="larger downlinks travel as fetched artifacts",
    rich_help_panel=_PANEL,
)


@job_options(job_keys(without=SIMULATION_ONLY), defaults=JOB_DEFAULTS)
def serve(
    overrides: dict[str, Any],
    config: Path | None = config_file_option(),
    state: Path = STATE,
    host: str | None = HOST,
    port: int = PORT,
    insecure_localhost: bool = INSECURE_LOCALHOST,
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_ca: Path | None = TLS_CA,
    enrollment_token: str | None = ENROLLMENT_TOKEN,
    open_enrollment: bool = OPEN_ENROLLMENT,
    metrics_port: int | None = METRICS_PORT,
    metrics_host: str = METRICS_HOST,
    round_timeout: float = ROUND_TIMEOUT,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    liveness_seconds: float = LIVENESS_SECONDS,
    wait_clients_timeout: float | None = WAIT_CLIENTS_TIMEOUT,
    shutdown_grace: float = SHUTDOWN_GRACE,
    max_update_mb: float = MAX_UPDATE_MB,
    inline_downlink_kb: int = INLINE_DOWNLINK_KB,
    force: bool = force_option(),
) -> None:
    """Serve a federated job to client daemons; exits 0 when every round is done.

    Restarted with the same --output and --state it resumes its run; an --output that
    holds another run is refused unless --force."""
    from fedpeft.coordinator.server import ServeOptions, serve_job

    cfg = resolve_config(config, overrides, JOB_DEFAULTS)
    if config is None and "output" not in overrides:
        raise ConfigError("--output", "name the run folder (metrics.jsonl, adapter, checkpoint)")
    # a causal-LM job gets the LLM defaults simulate gives it (the daemons get the job)
    from fedpeft.cli.simulate import task_defaults

    cfg, _ = task_defaults(cfg, overrides, config)
    tls = _tls_files(tls_cert, tls_key, tls_ca)
    # plaintext listens on loopback only: without a token, enrolment is open to this machine
    open_enrollment = open_enrollment or (insecure_localhost and not enrollment_token)
    fleet = _fleet_settings(
        cfg,
        enrollment_token,
        open_enrollment,
        heartbeat_seconds,
        liveness_seconds,
        max_update_mb,
        inline_downlink_kb,
    )
    opts = ServeOptions(
        state=state,
        host=host or ("127.0.0.1" if insecure_localhost else "0.0.0.0"),
        port=port,
        tls=tls,
        insecure_localhost=insecure_localhost,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        round_timeout=round_timeout,
        wait_clients_timeout=wait_clients_timeout,
        shutdown_grace=shutdown_grace,
        fleet=fleet,
        force=force,
    )
    log_to_stderr()
    summary = serve_job(cfg, opts, app_factory=functools.partial(_coordinator_app, cfg))
    console.print(json.dumps(summary, indent=2))


def _tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    """The server's TLS files (mutual TLS with ``ca``); None: plaintext."""
    if (cert is None) != (key is None):
        raise ConfigError("--tls-cert", "give both --tls-cert and --tls-key")
    if cert is None or key is None:
        if ca is not None:
            raise ConfigError("--tls-ca", "mutual TLS needs --tls-cert and --tls-key too")
        return None
    return TlsFiles(cert, key, ca)


def _fleet_settings(
    cfg: JobConfig,
    enrollment_token: str | None,
    open_enrollment: bool,
    heartbeat_seconds: float,
    liveness_seconds: float,
    max_update_mb: float,
    inline_downlink_kb: int,
) -> FleetSettings:
    """How the coordinator admits and watches its daemons (``serve_job`` refuses, before
    any data loads, a fleet nobody could enrol in safely)."""
    from fedpeft.coordinator.handlers import FleetSettings

    try:
        settings = FleetSettings(
            enrollment_token=enrollment_token or None,
            open_enrollment=open_enrollment,
            heartbeat_seconds=heartbeat_seconds,
            liveness_seconds=liveness_seconds,
            max_clients=cfg.federation.clients,
            max_update_bytes=int(max_update_mb * 2**20),
            max_client_examples=_examples_cap(cfg),
            inline_downlink_bytes=inline_downlink_kb * 1024,
        )
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError("--liveness-seconds", str(exc)) from exc
    return settings


def _examples_cap(cfg: JobConfig) -> int:
    """The most examples one daemon may claim: federation.max_client_examples, else the
    SecAgg weight cap, else the deployment default."""
    from fedpeft.aggregation import DEPLOYMENT_MAX_EXAMPLES

    weight_cap = cfg.secagg.weight_cap if cfg.secagg.enabled else 0
    return cfg.federation.max_client_examples or weight_cap or DEPLOYMENT_MAX_EXAMPLES


def _coordinator_app(cfg: JobConfig, name: str) -> ClientApp:
    """The coordinator's own app, which evaluates the global adapter on ``--eval-data``."""
    from fedpeft.client.factory import app_factory
    from fedpeft.coordinator.server import coordinator_config

    return app_factory(coordinator_config(cfg))(name)


def status(
    state: Path = typer.Option(..., "--state", help="coordinator state database"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print a deployed run's progress from its state database."""
    from rich.table import Table

    from fedpeft.coordinator.store import Store

    if not state.is_file():
        raise ConfigError("--state", f"no state database at {state}")
    store = Store(state)
    try:
        rounds = store.rounds()
        info = {
            "run_id": store.run_id,
            "status": store.get_meta("status") or "unknown",
            "rounds_planned": int(store.get_meta("rounds") or 0),
            "rounds_committed": sum(r["status"] == "committed" for r in rounds),
            "rounds_failed": sum(r["status"] == "failed" for r in rounds),
            "clients_registered": store.count_clients(),
            "results_accepted": store.count_results(),
            "output": store.get_meta("output"),
        }
    finally:
        store.close()
    if as_json:
        print(json.dumps({**info, "rounds": rounds}, indent=2))
        return
    for key, value in info.items():
        console.print(f"{key}: {value}")
    table = Table("round", "status", "clients ok", "eval accuracy", "bytes up", "seconds")
    for r in rounds:
        rec = r["record"] or {}
        took = (r["finished_at"] or time.time()) - r["started_at"]
        acc = rec.get("eval_accuracy")
        table.add_row(
            str(r["round"]),
            r["status"],
            str(rec.get("clients_ok", "")),
            f"{acc:.4f}" if isinstance(acc, float) else "",
            str(rec.get("bytes_up", "")),
            f"{took:.0f}",
        )
    console.print(table)


coordinator_app.command("serve")(serve)
coordinator_app.command("status")(status)


def register(app: typer.Typer) -> None:
    app.add_typer(coordinator_app, name="coordinator")
