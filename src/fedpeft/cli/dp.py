"""``fedpeft dp plan``: what a DP run's budget does to its updates, before the run.

A thin shell over :mod:`fedpeft.privacy.planner`: the job options are the ones
``simulate`` spells (``--clients``, ``--clients-per-round``, ``--rounds``, ``--sampling``,
``--dp-epsilon``, ``--dp-delta``, ``--dp-noise-multiplier``, ``--dp-clip``, ``--dp-mode``,
``--secagg``, …), resolved into a job config as a run resolves them, plus ``--dim`` (the
update's coordinates; default: the job's adapter, counted on the meta device without
loading weights) and ``--json``. Errors name the flag and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fedpeft.cli.common import config_file_option, console, resolve_config
from fedpeft.cli.options import JOB_DEFAULTS, OUTPUT_PANEL, flag_for, job_options
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.privacy.planner import DpPlan, PlanSettings, make_plan

#: The config keys a plan reads (their flags are simulate's).
PLAN_KEYS = [
    "federation.clients",
    "federation.clients_per_round",
    "federation.rounds",
    "federation.sampling",
    "dp.epsilon",
    "dp.delta",
    "dp.noise_multiplier",
    "dp.clip",
    "dp.mode",
    "dp.accountant",
    "secagg.enabled",
    "secagg.tolerated_dropout",
]
PLAN_PANEL = "Plan"
#: Own options that are not config keys, by the name a planner error uses.
OWN_FLAGS = {"dimension": "--dim"}

dp_app = typer.Typer(
    name="dp", help="Differential privacy: plan a run's noise before spending hours on it."
)


@dp_app.callback()
def _dp() -> None:
    """Differential privacy tools."""


@job_options(PLAN_KEYS, defaults=JOB_DEFAULTS)
def plan(
    overrides: dict[str, Any],
    config: Path | None = config_file_option(),
    dim: int | None = typer.Option(
        None,
        "--dim",
        help="coordinates per client update (default: the job's adapter, counted without "
        "loading weights)",
        rich_help_panel=PLAN_PANEL,
        show_default="the job's adapter",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="print the plan as JSON", rich_help_panel=OUTPUT_PANEL
    ),
) -> None:
    """Print the noise multiplier, the noise on the mean update, its ratio to the clip and
    the clients per round that bring the ratio to 0.5, for the given budget."""
    try:
        cfg = resolve_config(config, overrides, JOB_DEFAULTS)
        result = make_plan(plan_settings(cfg, dim))
    except ConfigError as exc:
        raise flag_error(exc) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    console.print(plan_table(result))
    console.print(result.summary(), highlight=False)


def plan_settings(cfg: JobConfig, dim: int | None = None) -> PlanSettings:
    """The plan of a job config; ``dim`` None: the job's adapter size."""
    dp, fed = cfg.dp, cfg.federation
    if dim is not None and dim < 1:
        raise ConfigError("dimension", f"must be >= 1, got {dim}")
    distributed = dp.mode == "distributed" or (dp.mode == "auto" and cfg.secagg.enabled)
    return PlanSettings(
        population=fed.clients,
        cohort=fed.clients_per_round,
        rounds=fed.rounds,
        clip=dp.clip,
        dimension=dim if dim is not None else adapter_size(cfg),
        epsilon=dp.epsilon,
        delta=dp.target_delta,
        noise_multiplier=dp.noise_multiplier,
        sampling=fed.sampling,
        mode="distributed" if distributed else "central",
        tolerated_dropout=cfg.secagg.tolerated_dropout if distributed else 0.0,
        accountant=dp.accountant,
    )


def adapter_size(cfg: JobConfig) -> int:
    """Coordinates of one client update of the job: its trainable adapter tensors, counted
    on PyTorch's meta device (shapes only: no weights are read or allocated).

    The classification head is sized by the label count, known without reading data only
    for a built-in dataset; anything else needs ``--dim``."""
    from fedpeft.data.builtin import BUILTIN_DATASETS

    builtin = BUILTIN_DATASETS.get(cfg.data.train.split(":")[0])
    if cfg.adapter.on_emulator or builtin is None:
        raise ConfigError(
            "dimension",
            "counting the adapter without loading data works for LoRA on a built-in dataset "
            f"(data.train = {cfg.data.train!r}, adapter.kind = {cfg.adapter.kind!r}): pass "
            "the update's size",
        )
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fedpeft.adapters import build_lora_model
    from fedpeft.models import Task, resolve_model_path
    from fedpeft.models.registry import quiet_transformers

    path = resolve_model_path(cfg.model.name, cfg.model.cache_dir)
    with quiet_transformers(), torch.device("meta"):
        config = AutoConfig.from_pretrained(path, num_labels=len(builtin.label_names))
        base = AutoModelForSequenceClassification.from_config(config)
        model = build_lora_model(base, cfg.lora, Task.CLASSIFICATION)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_plan_line(cfg: JobConfig) -> str | None:
    """The plan of a DP run as one paragraph, for the start of ``simulate`` (None without
    DP). A job whose adapter cannot be counted without its data gets a line saying how to
    plan it; any other error is the run's own and is raised as the run would raise it."""
    if not cfg.dp.enabled:
        return None
    try:
        dim = adapter_size(cfg)
    except ConfigError as exc:
        if exc.field != "dimension":
            raise
        return "DP plan: run `fedpeft dp plan --dim N` with this job's update size N to see it"
    # one calibration, the run's own; the cohort search is `fedpeft dp plan`'s (minutes)
    return make_plan(plan_settings(cfg, dim), search=False).summary()


def plan_table(result: DpPlan) -> Table:
    """The plan's numbers, one per row."""
    s, found = result.settings, result.search
    assert found is not None, "dp plan always searches"
    table = Table(title=f"DP plan: {s.mode}, {s.sampling} sampling", show_header=False)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("noise multiplier z (dp-accounting's)", f"{result.noise_multiplier:.4g}"),
        ("noise std on the sum", f"{result.noise_std_sum:.4g}"),
        ("noise std on the mean update", f"{result.noise_std_mean:.4g}"),
        ("noise norm on the mean / clip", f"{result.noise_to_clip:.3g}"),
        (f"epsilon after {s.rounds} rounds", f"{result.epsilon:.4g}"),
        (
            f"clients per round for ratio <= {result.target_ratio:g}",
            "none of these clients" if found.cohort is None else f"{found.cohort:,}",
        ),
        (f"ratio with all {s.population:,} clients", f"{found.ratio_at_population:.3g}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def flag_error(exc: ConfigError) -> ConfigError:
    """The error naming the flag that sets the field (the field in parentheses)."""
    flag = OWN_FLAGS.get(exc.field) or flag_for(exc.field).name
    message = str(exc).removeprefix(f"`{exc.field}`: ")
    return ConfigError(flag, f"{message} ({exc.field})" if flag != exc.field else message)


def register(app: typer.Typer) -> None:
    dp_app.command("plan")(plan)
    app.add_typer(dp_app, name="dp")
