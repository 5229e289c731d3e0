"""``fedpeft train``: centralized LoRA fine-tuning with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedpeft.cli.common import (
    config_options,
    console,
    extra_overrides,
    parse_columns,
    print_config_and_exit,
    resolve_config,
)

#: The sections central training reads (federation, codec, privacy: simulate only).
TRAIN_SECTIONS = ("model", "lora", "data", "train")


@config_options(sections=TRAIN_SECTIONS)  # help panels, defaults, every config field
def train(
    config: Path | None = typer.Option(None, "--config", help="TOML job file"),
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as TOML (for --config) and exit"
    ),
    model: str | None = typer.Option(
        None, "--model", help="minilm, smollm2-135m, a folder or hub id"
    ),
    data: str | None = typer.Option(None, "--data", help="training data file or built-in name"),
    eval_data: str | None = typer.Option(None, "--eval-data", help="held-out data file"),
    text_column: str | None = typer.Option(
        None,
        "--text-column",
        help="text column name(s) or 0-based index(es); several joined: --text-column 1,2",
    ),
    label_column: str | None = typer.Option(
        None, "--label-column", help="label column name or 0-based index"
    ),
    tensorboard: Path | None = typer.Option(
        None, "--tensorboard", help="also write TensorBoard scalars to this folder"
    ),
    output: str | None = typer.Option(None, "--output", help="run folder"),
    epochs: float | None = typer.Option(None, "--epochs"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    schedule: str | None = typer.Option(None, "--schedule"),
    warmup_ratio: float | None = typer.Option(None, "--warmup-ratio"),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adamw or sgd"),
    momentum: float | None = typer.Option(None, "--momentum", help="SGD momentum"),
    max_length: int | None = typer.Option(None, "--max-length", help="tokens per example"),
    rank: int | None = typer.Option(None, "--rank", help="LoRA rank"),
    lora_alpha: int | None = typer.Option(None, "--lora-alpha"),
    max_train_examples: int | None = typer.Option(None, "--max-train-examples"),
    max_eval_examples: int | None = typer.Option(None, "--max-eval-examples"),
    seed: int | None = typer.Option(None, "--seed"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or auto"),
) -> None:
    """Fine-tune a LoRA adapter centrally; print eval metrics; write the run folder."""
    overrides: dict[str, Any] = {
        "model.name": model,
        "data.train": data,
        "data.eval": eval_data,
        "output": output,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.momentum": momentum,
        "data.max_length": max_length,
        "lora.r": rank,
        "lora.alpha": lora_alpha,
        "data.max_train_examples": max_train_examples,
        "data.max_eval_examples": max_eval_examples,
        "train.seed": seed,
        "model.device": device,
        "train.schedule": schedule,
        "train.warmup_ratio": warmup_ratio,
        "data.text_column": parse_columns(text_column),
        "data.label_column": parse_columns(label_column),
    }
    overrides.update(extra_overrides())  # the --<section>-<field> options
    cfg = resolve_config(config, overrides)
    if print_config:
        print_config_and_exit(cfg)
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

    tb = ScalarLogger(tensorboard) if tensorboard is not None else None

    def on_step(step: int, total: int, loss: float) -> None:
        if step == 1:
            progress.start()  # only once training runs: set-up errors stay one clean line
        progress.update(bar, completed=step, total=total, loss=loss)
        if tb is not None and (step % 10 == 0 or step == total):  # as metrics.jsonl
            tb.log({"train_loss": loss}, step)

    try:
        record = run_central(cfg, on_step=on_step)
        if tb is not None:  # the final record: eval metrics at the last step
            tb.log(record, int(record["step"]))
    finally:
        progress.stop()
        if tb is not None:
            tb.close()
    shown = {
        k: round(v, 4)
        for k, v in record.items()
        if k.startswith(("eval_", "initial_eval_", "train_loss"))
    }
    for key, value in shown.items():
        console.print(f"{key}: {value}")
    console.print(f"run folder: {cfg.output}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
