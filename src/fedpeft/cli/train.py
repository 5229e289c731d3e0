"""``fedpeft train``: centralized LoRA fine-tuning with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedpeft.cli.common import (
    config_file_option,
    console,
    force_option,
    print_config_and_exit,
    print_config_option,
    resolve_config,
    tensorboard_option,
)
from fedpeft.cli.options import job_keys, job_options
from fedpeft.config import JobConfig

#: The sections central training reads (federation, codec, privacy: simulate only).
TRAIN_SECTIONS = ("model", "lora", "data", "train")


@job_options(job_keys(TRAIN_SECTIONS))  # these sections' fields, in help panels
def train(
    overrides: dict[str, Any],
    config: Path | None = config_file_option(),
    print_config: bool = print_config_option(),
    tensorboard: Path | None = tensorboard_option(),
    force: bool = force_option(),
) -> None:
    """Fine-tune a LoRA adapter centrally; print eval metrics; write the run folder.

    An --output that holds a run already is refused unless --force."""
    cfg = resolve_config(config, overrides)
    if print_config:
        print_config_and_exit(cfg)
    record = _train_with_progress(cfg, tensorboard, force)
    shown = {
        k: round(v, 4)
        for k, v in record.items()
        if k.startswith(("eval_", "initial_eval_", "train_loss"))
    }
    for key, value in shown.items():
        console.print(f"{key}: {value}")
    console.print(f"run folder: {cfg.output}")


def _train_with_progress(cfg: JobConfig, tensorboard: Path | None, force: bool) -> dict[str, Any]:
    """Train under a progress bar (and TensorBoard scalars); the final metrics record."""
    from fedpeft.tensorboard import ScalarLogger
    from fedpeft.training.central import run_central

    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    bar = progress.add_task("train", total=None, loss=float("nan"))
    tb: ScalarLogger | None = None  # made once training runs: a refused run writes nothing

    def on_step(step: int, total: int, loss: float) -> None:
        nonlocal tb
        if step == 1:
            progress.start()  # only once training runs: set-up errors stay one clean line
            tb = ScalarLogger(tensorboard) if tensorboard is not None else None
        progress.update(bar, completed=step, total=total, loss=loss)
        if tb is not None and (step % 10 == 0 or step == total):  # as metrics.jsonl
            tb.log({"train_loss": loss}, step)

    try:
        record = run_central(cfg, on_step=on_step, force=force)
        if tb is not None:  # the final record: eval metrics at the last step
            tb.log(record, int(record["step"]))
    finally:
        progress.stop()
        if tb is not None:
            tb.close()
    return record


def register(app: typer.Typer) -> None:
    app.command("train")(train)
