"""``fedpeft coordinator serve | status``: the model owner's side of a deployment."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import typer

from fedpeft.cli.common import console, resolve_config
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError

coordinator_app = typer.Typer(
    help="Run rounds with client daemons over gRPC (the model owner's side).",
    no_args_is_help=True,
)

# The same defaults as `fedpeft simulate`, so a deployment and its simulation agree.
COORDINATOR_DEFAULTS: dict[str, Any] = {"train.epochs": 1.0, "train.lr": 2e-3}


def serve(
    config: Path | None = typer.Option(None, "--config", help="TOML job file"),
    model: str | None = typer.Option(None, "--model", help="backbone (registry name or path)"),
    eval_data: str | None = typer.Option(
        None, "--eval-data", help="held-out data; also fixes the task and label names"
    ),
    output: str | None = typer.Option(None, "--output", help="run folder (metrics, adapter)"),
    state: Path = typer.Option(..., "--state", help="coordinator state database (SQLite)"),
    host: str | None = typer.Option(
        None, "--host", help="listen address (default 0.0.0.0; 127.0.0.1 when insecure)"
    ),
    port: int = typer.Option(50051, "--port", help="gRPC port"),
    rounds: int | None = typer.Option(None, "--rounds", help="federated rounds"),
    clients_per_round: int | None = typer.Option(
        None, "--clients-per-round", help="clients sampled per round (waits for that many)"
    ),
    min_fit_clients: int | None = typer.Option(
        None, "--min-fit-clients", help="fewest results for a round to count (quorum)"
    ),
    max_clients: int | None = typer.Option(
        None, "--max-clients", help="most clients that may register (federation.clients)"
    ),
    lr: float | None = typer.Option(None, "--lr", help="client learning rate"),
    epochs: float | None = typer.Option(None, "--local-epochs", help="local epochs per round"),
    local_steps: int | None = typer.Option(None, "--local-steps", help="local steps per round"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="local batch size"),
    max_train_examples: int | None = typer.Option(
        None, "--max-train-examples", help="cap on each client's local examples"
    ),
    max_eval_examples: int | None = typer.Option(
        None, "--max-eval-examples", help="cap on the evaluation examples"
    ),
    seed: int | None = typer.Option(None, "--seed", help="seed (cohorts, initial adapter)"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads here"),
    codec: str | None = typer.Option(None, "--codec", help="uplink codec: dense or compeft"),
    density: float | None = typer.Option(None, "--density", help="compeft: fraction kept"),
    error_feedback: bool | None = typer.Option(
        None, "--error-feedback/--no-error-feedback", help="clients carry what compression dropped"
    ),
    downlink: str | None = typer.Option(
        None, "--downlink", help="auto, dense, compeft or chain (see codec.downlink)"
    ),
    insecure_localhost: bool = typer.Option(
        False, "--insecure-localhost", help="plaintext, allowed on 127.0.0.1 only"
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="server certificate (PEM)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="server private key (PEM)"),
    tls_ca: Path | None = typer.Option(
        None, "--tls-ca", help="CA of client certificates: turns on mutual TLS"
    ),
    enrollment_token: str | None = typer.Option(
        None,
        "--enrollment-token",
        envvar="FEDPEFT_ENROLLMENT_TOKEN",
        help="clients must present it to register (default: open enrollment)",
    ),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="serve Prometheus /metrics on this port"
    ),
    round_timeout: float = typer.Option(
        14400.0,
        "--round-timeout",
        help="seconds a round waits for live clients (dead ones are dropped sooner)",
    ),
    heartbeat_seconds: float = typer.Option(
        5.0, "--heartbeat-seconds", help="client heartbeat interval"
    ),
    liveness_seconds: float = typer.Option(
        20.0, "--liveness-seconds", help="silent this long: a client is dropped from its round"
    ),
    wait_clients_timeout: float | None = typer.Option(
        None, "--wait-clients-timeout", help="stop waiting for clients after this (default: wait)"
    ),
    shutdown_grace: float = typer.Option(
        30.0, "--shutdown-grace", help="seconds to keep telling daemons the run is over"
    ),
    max_update_mb: float = typer.Option(256.0, "--max-update-mb", help="largest client update"),
    inline_downlink_kb: int = typer.Option(
        1024, "--inline-downlink-kb", help="larger downlinks travel as fetched artifacts"
    ),
) -> None:
    """Serve a federated job to client daemons; exits 0 when every round is done."""
    from fedpeft.coordinator.handlers import FleetSettings
    from fedpeft.coordinator.server import ServeOptions, TlsFiles, serve_job

    overrides = {
        "model.name": model,
        "data.eval": eval_data,
        "data.max_train_examples": max_train_examples,
        "data.max_eval_examples": max_eval_examples,
        "output": output,
        "federation.rounds": rounds,
        "federation.clients_per_round": clients_per_round,
        "federation.min_fit_clients": min_fit_clients,
        "federation.clients": max_clients,
        "train.lr": lr,
        "train.epochs": epochs,
        "train.max_steps": local_steps,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.threads": threads,
        "codec.name": codec,
        "codec.density": density,
        "codec.error_feedback": error_feedback,
        "codec.downlink": downlink,
    }
    if config is not None:
        cfg = resolve_config(config, overrides)
    else:
        cfg = JobConfig().replace(COORDINATOR_DEFAULTS).replace(overrides)
    if output is None and config is None:
        raise ConfigError("--output", "name the run folder (metrics.jsonl, adapter, checkpoint)")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert", "give both --tls-cert and --tls-key")
    tls = TlsFiles(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None
    if tls_ca is not None and tls is None:
        raise ConfigError("--tls-ca", "mutual TLS needs --tls-cert and --tls-key too")
    try:
        fleet = FleetSettings(
            enrollment_token=enrollment_token or None,
            heartbeat_seconds=heartbeat_seconds,
            liveness_seconds=liveness_seconds,
            max_clients=cfg.federation.clients,
            max_update_bytes=int(max_update_mb * 2**20),
            inline_downlink_bytes=inline_downlink_kb * 1024,
        )
    except ValueError as exc:
        raise ConfigError("--liveness-seconds", str(exc)) from exc
    opts = ServeOptions(
        state=state,
        host=host or ("127.0.0.1" if insecure_localhost else "0.0.0.0"),
        port=port,
        tls=tls,
        insecure_localhost=insecure_localhost,
        metrics_port=metrics_port,
        round_timeout=round_timeout,
        wait_clients_timeout=wait_clients_timeout,
        shutdown_grace=shutdown_grace,
        fleet=fleet,
    )
    _log_to_stderr()
    summary = serve_job(cfg, opts)
    console.print(json.dumps(summary, indent=2))


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


def _log_to_stderr() -> None:
    """Progress lines (rounds, clients, refused calls) at INFO on stderr for a service
    (journald adds the time); ``--debug`` keeps DEBUG."""
    fedpeft_log = logging.getLogger("fedpeft")
    level = logging.getLevelName(os.environ.get("FEDPEFT_LOG_LEVEL", "INFO").upper())
    if isinstance(level, int) and fedpeft_log.getEffectiveLevel() > level:
        fedpeft_log.setLevel(level)


coordinator_app.command("serve")(serve)
coordinator_app.command("status")(status)


def register(app: typer.Typer) -> None:
    app.add_typer(coordinator_app, name="coordinator")
