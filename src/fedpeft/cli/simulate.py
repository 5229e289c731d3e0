"""``fedpeft simulate``: a federated run over virtual clients, with a live progress display."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live
from rich.table import Table

from fedpeft.cli.common import (
    config_file_option,
    console,
    force_option,
    print_config_and_exit,
    print_config_option,
    resolve_config,
    tensorboard_option,
)
from fedpeft.cli.options import EXPERIMENT_PANEL, JOB_DEFAULTS, job_keys, job_options
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import EngineHooks
from fedpeft.errors import ConfigError
from fedpeft.protocol.messages import TrainResult
from fedpeft.rundir import RunDir, new_run_id

if TYPE_CHECKING:
    from fedpeft.tensorboard import ScalarLogger

#: What ``fedpeft simulate`` runs without flags: the shared job defaults, into runs/simulate.
SIMULATE_DEFAULTS: dict[str, Any] = {"output": "runs/simulate", **JOB_DEFAULTS}


@job_options(job_keys(), defaults=SIMULATE_DEFAULTS)  # every config field, in help panels
def simulate(
    overrides: dict[str, Any],
    config: Path | None = config_file_option(),
    print_config: bool = print_config_option(),
    resume: Path | None = typer.Option(
        None, "--resume", help="continue this run folder", rich_help_panel=EXPERIMENT_PANEL
    ),
    tensorboard: Path | None = tensorboard_option(),
    force: bool = force_option(),
) -> None:
    """Simulate federated LoRA fine-tuning over many virtual clients.

    An --output that holds a run already is refused unless --force (--resume continues
    the run its folder holds)."""
    cfg = _simulate_config(overrides, config, resume)
    causal = False
    if resume is None:  # a resumed run keeps the config its folder holds
        cfg, causal = task_defaults(cfg, overrides, config, announce=not print_config)
    else:
        causal = RunDir(resume).meta().get("task") == "causal_lm"
    if print_config:
        print_config_and_exit(cfg)
    if resume is not None and force:
        raise ConfigError("--force", "--resume continues its own run; there is none to replace")
    run = RunDir(cfg.output)
    if resume is None:
        run.check_claim(new_run_id(), force=force)  # before any file is written
    cap = cfg.data.max_eval_examples
    if causal and not cfg.data.eval and cfg.data.holdout:
        console.print(
            f"no --eval-data: holding out {cfg.data.holdout:g} of {cfg.data.train} (at most "
            f"500 examples, seeded by train.seed; data.holdout) for evaluation"
        )
    console.print(
        f"evaluating on the first {cap} held-out examples (data.max_eval_examples; "
        "--max-eval-examples to change, 0 for all)"
        if cap
        else "evaluating on every held-out example"
    )
    summary = _run_with_display(cfg, resume is not None, tensorboard, force, causal)
    _print_summary(summary, cfg)


def _simulate_config(
    overrides: dict[str, Any], config: Path | None, resume: Path | None
) -> JobConfig:
    """Defaults or ``--config`` ← flags; with ``--resume`` the run folder's config ← flags."""
    if resume is None:
        return resolve_config(config, overrides, SIMULATE_DEFAULTS)
    if config is not None or "output" in overrides:
        raise ConfigError("--resume", "takes its config and output from the run folder")
    return RunDir(resume).config().replace({**overrides, "output": str(resume)})


def task_defaults(
    cfg: JobConfig, overrides: dict[str, Any], config: Path | None, *, announce: bool = True
) -> tuple[JobConfig, bool]:
    """A causal-LM job's defaults (fedpeft.training.setup.CAUSAL_LM_DEFAULTS) where neither
    a flag nor the experiment file set the key; says which. Returns the config and
    whether the job is a causal LM."""
    from fedpeft.models import Task
    from fedpeft.training.setup import with_task_defaults

    cfg, applied, task = with_task_defaults(cfg, set(overrides) | _file_keys(config))
    if applied and announce:  # --print-config's output stays TOML only
        shown = ", ".join(f"{k}={v}" for k, v in applied.items())
        console.print(f"causal-LM job: defaults {shown} (set any of them to override)")
    return cfg, task is Task.CAUSAL_LM


def _file_keys(config: Path | None) -> set[str]:
    """The dotted keys an experiment file sets (``[train] lr = ...`` → ``train.lr``)."""
    if config is None:
        return set()
    try:
        table = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return set()  # resolve_config has read it already and said what is wrong
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys.update(f"{name}.{sub}" for sub in value)
        else:
            keys.add(name)
    return keys


def _run_with_display(
    cfg: JobConfig,
    resume: bool,
    tensorboard: Path | None,
    force: bool = False,
    causal: bool = False,
) -> dict[str, Any]:
    """Run the simulation under a live table of its progress (and TensorBoard scalars)."""
    from fedpeft.simulation import run_simulation
    from fedpeft.tensorboard import ScalarLogger

    tb = ScalarLogger(tensorboard) if tensorboard is not None else None
    display = _Display(cfg, causal)
    display.tensorboard = tb
    try:
        with Live(display.render(), console=console, refresh_per_second=4) as live:
            display.live = live
            summary = run_simulation(
                cfg,
                resume=resume,
                hooks=display.hooks(),
                force=force,
                on_plan=live.console.print,  # a DP run's noise against its clip, first
            )
        if tb is not None:  # round 0: the adapter before any training
            tb.log({k[8:]: v for k, v in summary.items() if k.startswith("initial_")}, 0)
    finally:
        if tb is not None:
            tb.close()
    return summary


class _Display:
    """Round, clients done, last loss and the held-out metric — accuracy, or for a causal
    LM perplexity (and ROUGE-L when generated) — redrawn as results arrive."""

    def __init__(self, cfg: JobConfig, causal: bool = False) -> None:
        self.cfg = cfg
        self.metrics: tuple[tuple[str, str], ...] = (
            (("eval perplexity", "eval_perplexity"),)
            + ((("ROUGE-L", "eval_rouge_l"),) if cfg.train.eval_rouge_examples else ())
            if causal
            else (("eval accuracy", "eval_accuracy"),)
        )
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
        for col in ("round", "clients done", "train loss", *(c for c, _ in self.metrics)):
            table.add_column(col)
        table.add_column("bytes up")
        table.add_row(
            f"{self.round}/{fed.rounds}",
            f"{self.done}/{self.cohort}",
            _fmt(self.last.get("train_loss")),
            *(_fmt(self.last.get(key)) for _, key in self.metrics),
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
    for key in (
        "train_loss",
        "eval_loss",
        "eval_accuracy",
        "eval_perplexity",
        "eval_rouge_l",
        "epsilon",
    ):
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
        "initial_eval_rouge_l",
        "final_eval_rouge_l",
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
