"""``fedpeft client run``: the data owner's daemon (trains when asked, never uploads data)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedpeft.cli.common import log_to_stderr
from fedpeft.errors import ConfigError

POLICY = "Privacy policy (the data owner's floor)"


def _help(name: str) -> str:
    """A policy flag's help: the ``[client.policy]`` field's own."""
    from dataclasses import fields

    from fedpeft.config.client import ClientPolicy

    return next(f.metadata["help"] for f in fields(ClientPolicy) if f.name == name)


client_app = typer.Typer(
    help="Run a client daemon that trains for a coordinator (the data owner's side).",
    no_args_is_help=True,
)


def run(
    coordinator: str = typer.Option(..., "--coordinator", help="HOST:PORT of the coordinator"),
    data: str = typer.Option(..., "--data", help="local training data (never leaves here)"),
    state: Path = typer.Option(..., "--state", help="folder for this client's own state"),
    shard: str = typer.Option("0/1", "--shard", help="use the i-th of n slices of --data: i/n"),
    insecure_localhost: bool = typer.Option(
        False, "--insecure-localhost", help="plaintext to a coordinator on 127.0.0.1 only"
    ),
    tls_ca: Path | None = typer.Option(
        None, "--tls-ca", help="CA that signed the coordinator's certificate (PEM)"
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="mutual TLS: this client's certificate (PEM)"
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", help="mutual TLS: this client's private key (PEM)"
    ),
    enrollment_token: str = typer.Option(
        "",
        "--enrollment-token",
        envvar="FEDPEFT_ENROLLMENT_TOKEN",
        help="token the coordinator asks for at registration",
    ),
    name: str = typer.Option("", "--name", help="a name for the coordinator's logs"),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads"),
    max_rss_mb: int | None = typer.Option(
        None, "--max-rss-mb", help="memory guard: refuse tasks above this resident size"
    ),
    max_refusals: int = typer.Option(
        20,
        "--max-refusals",
        help="stop after the coordinator refused this many times in a row for lack of room "
        "(the federation is full)",
    ),
    policy_file: Path | None = typer.Option(
        None,
        "--policy",
        help="TOML file with a \\[client.policy] table: the privacy floor every task must meet "
        "(the flags below override it)",
        rich_help_panel=POLICY,
    ),
    require_secagg: bool | None = typer.Option(
        None,
        "--require-secagg/--no-require-secagg",
        help=_help("require_secagg"),
        show_default=False,
        rich_help_panel=POLICY,
    ),
    min_cohort: int | None = typer.Option(
        None, "--min-cohort", help=_help("min_cohort"), rich_help_panel=POLICY
    ),
    max_epsilon: float | None = typer.Option(
        None, "--max-epsilon", help=_help("max_epsilon"), rich_help_panel=POLICY
    ),
    max_delta: float | None = typer.Option(
        None, "--max-delta", help=_help("max_delta"), rich_help_panel=POLICY
    ),
    min_noise_multiplier: float | None = typer.Option(
        None,
        "--min-noise-multiplier",
        help=_help("min_noise_multiplier"),
        rich_help_panel=POLICY,
    ),
    allowed_codecs: str | None = typer.Option(
        None,
        "--allowed-codecs",
        help=_help("allowed_codecs") + " (comma-separated)",
        rich_help_panel=POLICY,
    ),
) -> None:
    """Register with a coordinator and train for it until the run is over."""
    from fedpeft.client.daemon import DaemonOptions, parse_shard, run_daemon
    from fedpeft.config.client import ClientPolicy, load_policy

    if ":" not in coordinator:
        raise ConfigError("--coordinator", f"must be HOST:PORT, got {coordinator!r}")
    if threads is not None and threads <= 0:
        raise ConfigError("--threads", f"must be a positive integer, got {threads}")
    opts = DaemonOptions(
        coordinator=coordinator,
        data=data,
        state=state,
        shard=parse_shard(shard),
        insecure_localhost=insecure_localhost,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        enrollment_token=enrollment_token,
        name=name,
        threads=threads,
        max_rss_mb=max_rss_mb,
        max_refusals=max_refusals,
        policy=(load_policy(policy_file) if policy_file else ClientPolicy()).replace(
            require_secagg=require_secagg,
            min_cohort=min_cohort,
            max_epsilon=max_epsilon,
            max_delta=max_delta,
            min_noise_multiplier=min_noise_multiplier,
            allowed_codecs=None
            if allowed_codecs is None
            else tuple(c.strip() for c in allowed_codecs.split(",") if c.strip()),
        ),
    )
    log_to_stderr()
    raise typer.Exit(run_daemon(opts))


client_app.command("run")(run)


def register(app: typer.Typer) -> None:
    app.add_typer(client_app, name="client")
