"""``fedpeft audit``: play the coordinator on a job and measure what its view leaks.

A thin shell over :mod:`fedpeft.audit`: the job options are ``simulate``'s (every config
field, the same defaults), plus ``--attacks``; the run folder (``--output``) gets the
job's files and ``report.json`` / ``report.png``; the terminal gets a short table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedpeft.cli.common import (
    config_file_option,
    console,
    force_option,
    print_config_and_exit,
    print_config_option,
    resolve_config,
)
from fedpeft.cli.options import EXPERIMENT_PANEL, JOB_DEFAULTS, job_keys, job_options

#: The job ``fedpeft audit`` attacks without flags: simulate's, into runs/audit.
AUDIT_DEFAULTS: dict[str, Any] = {"output": "runs/audit", **JOB_DEFAULTS}


@job_options(job_keys(), defaults=AUDIT_DEFAULTS)
def audit(
    overrides: dict[str, Any],
    config: Path | None = config_file_option(),
    print_config: bool = print_config_option(),
    attacks: str = typer.Option(
        "labels",
        "--attacks",
        help="attacks to run, comma-separated: labels (label inference from the head's update)",
        rich_help_panel=EXPERIMENT_PANEL,
    ),
    force: bool = force_option(),
) -> None:
    """Run the job as an honest-but-curious coordinator would and attack what it holds:
    each client's update (plain rounds) or only the decoded sum (--secagg).

    Writes report.json and report.png into --output (docs/privacy_audit.md reads them)."""
    from fedpeft.audit import parse_attacks, run_audit

    chosen = parse_attacks(attacks)  # a bad name fails before any model loads
    cfg = resolve_config(config, overrides, AUDIT_DEFAULTS)
    if print_config:
        print_config_and_exit(cfg)
    view = "SecAgg+: the coordinator holds only the sum" if cfg.secagg.enabled else "plain"
    fed = cfg.federation
    console.print(
        f"auditing {fed.clients} clients, {fed.clients_per_round} per round, "
        f"{fed.rounds} round(s) ({view})"
    )
    report = run_audit(cfg, chosen, force=force)
    console.print(_table(report))
    console.print(f"report: {Path(cfg.output) / 'report.json'}")


def _table(report: dict[str, Any]) -> Table:
    table = Table(title="fedpeft audit — what the coordinator learns")
    for col in ("attack", "setting", "metric", "value", "chance"):
        table.add_column(col)
    for row in report["rows"]:
        table.add_row(
            row["attack"],
            row["setting"],
            row["metric"],
            f"{row['value']:.3f}",
            "-" if row.get("chance") is None else f"{row['chance']:.3f}",
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("audit")(audit)
