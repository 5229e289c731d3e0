"""``fedpeft export``: a run folder → a standard PEFT adapter folder."""

from __future__ import annotations

from pathlib import Path

import typer

from fedpeft.cli.common import console


def export(
    run: Path = typer.Argument(..., help="run folder written by train or simulate"),
    out: Path = typer.Option(..., "--out", help="adapter folder to write"),
) -> None:
    """Write the run's final adapter where PeftModel.from_pretrained can load it."""
    from fedpeft.export import export_adapter

    info = export_adapter(run, out)
    console.print(f"adapter written to {out} (base: {info['base_model']}, task: {info['task']})")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
