"""``fedpeft simulate``: a federated run over virtual clients, with a live progress display."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live
from rich.table import Table

from fedpeft.cli.common import (
    config_options,
    console,
    extra_overrides,
    parse_columns,
    print_config_and_exit,
    resolve_config,
)
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import EngineHooks
from fedpeft.errors import ConfigError
from fedpeft.protocol.messages import TrainResult
from fedpeft.rundir import RunDir

if TYPE_CHECKING:
    from fedpeft.tensorboard import ScalarLogger

# Built-in defaults of the simulate command (a few minutes on 2 CPU cores).
# The settings are the best bench/default_job.py found for this job on Reuters R8
# (bench/results/default_job.json: 0.92 against 0.77 with client lr 2e-3 decaying
# linearly within each round and no FedLC; one seed, 500 test documents).
SIMULATE_DEFAULTS: dict[str, Any] = {
    "output": "runs/simulate",
    "data.max_eval_examples": 500,
    "train.epochs": 1.0,
    "train.lr": 4e-3,
    "train.schedule": "constant",  # a client's few local steps: no decay within a round
    "federation.logit_adjustment": 1.0,  # FedLC: clients train on prior-shifted logits
}


@config_options(defaults=SIMULATE_DEFAULTS)  # help panels, defaults, every config field
def simulate(
    config: Path | None = typer.Option(None, "--config", help="TOML experiment file"),
    print_config: bool = typer.Option(
        False, "--print-config", help="print the resolved config as TOML (for --config) and exit"
    ),
    resume: Path | None = typer.Option(None, "--resume", help="continue this run folder"),
    model: str | None = typer.Option(None, "--model"),
    data: str | None = typer.Option(None, "--data", help="training data (default: built-in)"),
    eval_data: str | None = typer.Option(None, "--eval-data"),
    max_eval_examples: int | None = typer.Option(None, "--max-eval-examples"),
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
    rounds: int | None = typer.Option(None, "--rounds"),
    clients: int | None = typer.Option(None, "--clients"),
    clients_per_round: int | None = typer.Option(None, "--clients-per-round"),
    sampling: str | None = typer.Option(None, "--sampling", help="fixed or poisson"),
    partition: str | None = typer.Option(None, "--partition", help="iid, dirichlet or shards"),
    alpha: float | None = typer.Option(None, "--alpha", help="Dirichlet concentration"),
    strategy: str | None = typer.Option(
        None, "--strategy", help="fedavg, fedexp, fedadam, fedyogi"
    ),
    server_lr: float | None = typer.Option(None, "--server-lr"),
    server_momentum: float | None = typer.Option(
        None, "--server-momentum", help="FedAvg server momentum (FedAvgM)"
    ),
    server_ema: float | None = typer.Option(
        None, "--server-ema", help="EMA decay of the global adapter (evaluated, exported)"
    ),
    proximal_mu: float | None = typer.Option(None, "--proximal-mu", help="FedProx mu"),
    calibration: str | None = typer.Option(
        None, "--calibration", help="after the last round: none or ccvr (classifier calibration)"
    ),
    logit_adjustment: float | None = typer.Option(
        None, "--logit-adjustment", help="FedLC tau: logits + tau*log(local label prior)"
    ),
    client_lr_schedule: str | None = typer.Option(
        None, "--client-lr-schedule", help="client lr across rounds: constant, linear, cosine"
    ),
    client_lr_final: float | None = typer.Option(
        None, "--client-lr-final", help="last round's client lr / --lr"
    ),
    epochs: float | None = typer.Option(None, "--local-epochs"),
    local_steps: int | None = typer.Option(None, "--local-steps"),
    lr: float | None = typer.Option(None, "--lr"),
    schedule: str | None = typer.Option(None, "--schedule", help="client lr within a round"),
    warmup_ratio: float | None = typer.Option(None, "--warmup-ratio"),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adamw or sgd"),
    momentum: float | None = typer.Option(None, "--momentum", help="SGD momentum"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    seed: int | None = typer.Option(None, "--seed"),
    backend: str | None = typer.Option(None, "--backend", help="inprocess or ray"),
    workers: int | None = typer.Option(None, "--workers"),
    cpus_per_worker: float | None = typer.Option(None, "--cpus-per-worker"),
    gpus_per_worker: float | None = typer.Option(None, "--gpus-per-worker"),
    ray_address: str | None = typer.Option(None, "--ray-address", help="join a Ray cluster"),
    eval_every: int | None = typer.Option(None, "--eval-every"),
    secagg: bool | None = typer.Option(
        None,
        "--secagg/--no-secagg",
        help="secure aggregation (SecAgg+): the coordinator learns only the sum of updates",
    ),
    dropout_rate: float | None = typer.Option(
        None,
        "--dropout-rate",
        help="with --secagg: fraction of each round's clients that vanish mid-protocol",
    ),
    dropout_stage: str | None = typer.Option(
        None, "--dropout-stage", help="when they vanish: after_masking or before_masking"
    ),
    dp_epsilon: float | None = typer.Option(
        None, "--dp-epsilon", help="client-level DP: target epsilon for the whole run"
    ),
    dp_delta: float | None = typer.Option(
        None, "--dp-delta", help="client-level DP: target delta (default 1e-5)"
    ),
    dp_noise_multiplier: float | None = typer.Option(
        None,
        "--dp-noise-multiplier",
        help="fixed DP noise (std / the sum's sensitivity); with --dp-epsilon, stop when spent",
    ),
    dp_clip: float | None = typer.Option(
        None, "--dp-clip", help="DP: L2 clip norm of each client's update"
    ),
    codec: str | None = typer.Option(None, "--codec", help="dense or compeft"),
    density: float | None = typer.Option(None, "--density", help="compeft: fraction kept"),
    dtype: str | None = typer.Option(None, "--dtype", help="dense: fp32, fp16, bf16"),
    error_feedback: bool | None = typer.Option(None, "--error-feedback/--no-error-feedback"),
    feedback_decay: float | None = typer.Option(
        None, "--feedback-decay", help="error feedback: fraction of the residual carried"
    ),
    dense_below: int | None = typer.Option(
        None, "--dense-below", help="compeft: send tensors with fewer entries exactly"
    ),
    scale: str | None = typer.Option(
        None, "--scale", help="compeft scale: mean_abs (least squares), norm, alpha_std"
    ),
    downlink: str | None = typer.Option(
        None, "--downlink", help="auto, dense, compeft or chain (see codec.downlink)"
    ),
    adapter: str | None = typer.Option(
        None, "--adapter", help="lora (default) or offsite (Offsite-Tuning; needs --emulator)"
    ),
    emulator: str | None = typer.Option(
        None, "--emulator", help="offsite: folder from `fedpeft offsite build-emulator`"
    ),
) -> None:
    """Simulate federated LoRA fine-tuning over many virtual clients."""
    overrides = {
        "model.name": model,
        "data.train": data,
        "data.eval": eval_data,
        "data.max_eval_examples": max_eval_examples,
        "output": output,
        "federation.rounds": rounds,
        "federation.clients": clients,
        "federation.clients_per_round": clients_per_round,
        "federation.sampling": sampling,
        "federation.partition": partition,
        "federation.alpha": alpha,
        "federation.strategy": strategy,
        "federation.server_lr": server_lr,
        "federation.server_momentum": server_momentum,
        "federation.server_ema": server_ema,
        "federation.calibration": calibration,
        "federation.proximal_mu": proximal_mu,
        "federation.logit_adjustment": logit_adjustment,
        "federation.client_lr_schedule": client_lr_schedule,
        "federation.client_lr_final": client_lr_final,
        "train.epochs": epochs,
        "train.max_steps": local_steps,
        "train.lr": lr,
        "train.schedule": schedule,
        "train.warmup_ratio": warmup_ratio,
        "data.text_column": parse_columns(text_column),
        "data.label_column": parse_columns(label_column),
        "train.optimizer": optimizer,
        "train.momentum": momentum,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "federation.backend": backend,
        "federation.workers": workers,
        "federation.cpus_per_worker": cpus_per_worker,
        "federation.gpus_per_worker": gpus_per_worker,
        "federation.ray_address": ray_address,
        "federation.eval_every": eval_every,
        "secagg.enabled": secagg,
        "secagg.dropout_rate": dropout_rate,
        "secagg.dropout_stage": dropout_stage,
        "dp.epsilon": dp_epsilon,
        "dp.delta": dp_delta,
        "dp.noise_multiplier": dp_noise_multiplier,
        "dp.clip": dp_clip,
        "codec.name": codec,
        "codec.density": density,
        "codec.dtype": dtype,
        "codec.error_feedback": error_feedback,
        "codec.feedback_decay": feedback_decay,
        "codec.dense_below": dense_below,
        "codec.scale": scale,
        "codec.downlink": downlink,
        "adapter.kind": adapter,
        "adapter.emulator": emulator,
    }
    overrides.update(extra_overrides())  # the --<section>-<field> options
    if resume is not None:
        if config is not None or output is not None:
            raise ConfigError("--resume", "takes its config and output from the run folder")
        cfg = RunDir(resume).config().replace({**overrides, "output": str(resume)})
    elif config is not None:
        cfg = resolve_config(config, overrides)
    else:
        cfg = JobConfig().replace({**SIMULATE_DEFAULTS}).replace(overrides)
    if print_config:
        print_config_and_exit(cfg)

    from fedpeft.simulation import run_simulation
    from fedpeft.tensorboard import ScalarLogger

    cap = cfg.data.max_eval_examples
    console.print(
        f"evaluating on the first {cap} held-out examples (data.max_eval_examples; "
        "--max-eval-examples to change, 0 for all)"
        if cap
        else "evaluating on every held-out example"
    )
    tb = ScalarLogger(tensorboard) if tensorboard is not None else None
    display = _Display(cfg)
    display.tensorboard = tb
    try:
        with Live(display.render(), console=console, refresh_per_second=4) as live:
            display.live = live
            summary = run_simulation(cfg, resume=resume is not None, hooks=display.hooks())
        if tb is not None:  # round 0: the adapter before any training
            tb.log({k[8:]: v for k, v in summary.items() if k.startswith("initial_")}, 0)
    finally:
        if tb is not None:
            tb.close()
    _print_summary(summary, cfg)


class _Display:
    """Round, clients done, last loss and accuracy — redrawn as results arrive."""

    def __init__(self, cfg: JobConfig) -> None:
        self.cfg = cfg
        self.live: Live | None = None
        self.round = 0
        self.cohort = 0
        self.done = 0
        self.last: dict[str, Any] = {}
        self.tensorboard: ScalarLogger | None = None

    def hooks(self) -> EngineHooks:
        return EngineHooks(self.on_round_start, self.on_client_done, self.on_round_end)

    def on_round_start(self, round_num: int, cohort: int) -> None:
        self.round, self.cohort, self.done = round_num, cohort, 0
        self.refresh()

    def on_client_done(self, result: TrainResult) -> None:
        self.done += 1
        self.refresh()

    def on_round_end(self, record: dict[str, Any]) -> None:
        self.last = record
        if self.tensorboard is not None:
            self.tensorboard.log(record, int(record["round"]))
        self.refresh()
        console.print(_round_line(record))

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def render(self) -> Table:
        fed = self.cfg.federation
        table = Table(
            title=f"fedpeft simulate — {fed.backend}, {fed.clients} clients", show_header=True
        )
        for col in ("round", "clients done", "train loss", "eval accuracy", "bytes up"):
            table.add_column(col)
        table.add_row(
            f"{self.round}/{fed.rounds}",
            f"{self.done}/{self.cohort}",
            _fmt(self.last.get("train_loss")),
            _fmt(self.last.get("eval_accuracy")),
            str(self.last.get("bytes_up_total", 0)),
        )
        return table


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _round_line(record: dict[str, Any]) -> str:
    parts = [
        f"round {record['round']}",
        f"clients {record['clients_ok']}/{record['clients_sampled']}",
    ]
    for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_perplexity", "epsilon"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    if "secagg_survivors" in record:
        parts.append(f"secagg dropped {record['secagg_dropped']}")
    parts.append(f"up {record['bytes_up']} B, down {record['bytes_down']} B")
    if "round_failed" in record:
        parts.append(f"FAILED: {record['round_failed']}")
    return " | ".join(parts)


def _print_summary(summary: dict[str, Any], cfg: JobConfig) -> None:
    console.print("[bold]summary[/bold]")
    for key in (
        "initial_eval_accuracy",
        "final_eval_accuracy",
        "initial_eval_perplexity",
        "final_eval_perplexity",
        "rounds",
        "eval_examples",
        "bytes_up",
        "bytes_down",
        "wall_seconds",
        "epsilon",
        "dp_noise_multiplier",
    ):
        if key in summary:
            value = summary[key]
            console.print(
                f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
            )
    console.print(f"  run folder: {cfg.output}")
    if "stopped" in summary:
        console.print(f"[yellow]stopped early:[/yellow] {summary['stopped']}")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
