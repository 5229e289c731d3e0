"""The command-line options of a job, generated from the config dataclasses.

:mod:`fedpeft.config` documents every field once (``metadata["help"]``); this module turns
fields into options, the same way for ``train``, ``simulate`` and ``coordinator serve``:

* :data:`FLAGS` gives a config key its one flag (``train.epochs`` → ``--local-epochs``) and
  the spellings an earlier release used, kept as hidden aliases for one release; a key
  without an entry is ``--<section>-<field>`` (``--dp-clip``);
* :data:`JOB_DEFAULTS` are the job defaults ``simulate`` and ``serve`` share;
* :func:`job_options` gives a command one option per config key it uses, with the field's
  help, the default the command really uses and the help panel of the field's section,
  and hands the command the values set as dotted overrides (``{"train.lr": 0.01}``).

``tests/unit/test_cli_help.py`` fails for an option without help text or panel and for a
field listed twice or not at all.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from typer.models import OptionInfo

from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

# The built-in job of `fedpeft simulate` and `fedpeft coordinator serve` (a few minutes on
# 2 CPU cores), so that a deployment and its simulation run the same job. The settings are
# the best bench/default_job.py found for this job on Reuters R8
# (bench/results/default_job.json: 0.92 against 0.77 with client lr 2e-3 decaying
# linearly within each round and no FedLC; one seed, 500 test documents).
JOB_DEFAULTS: dict[str, Any] = {
    "data.max_eval_examples": 500,
    "train.epochs": 1.0,
    "train.lr": 4e-3,
    "train.schedule": "constant",  # a client's few local steps: no decay within a round
    "federation.logit_adjustment": 1.0,  # FedLC: clients train on prior-shifted logits
}

#: Fields that only a simulation reads: how virtual clients are made and where they run
#: (a deployment's clients bring their own data and run in their own daemons).
SIMULATION_ONLY = frozenset(
    {
        "data.train",
        "federation.sampling",
        "federation.partition",
        "federation.alpha",
        "federation.shards_per_client",
        "data.clusters",  # how --partition cluster groups the virtual clients' data
        "federation.calibration",
        "federation.calibration_clients",
        "federation.full_model_fraction",  # a deployment's clients declare their own tier
        "federation.backend",
        "federation.workers",
        "federation.cpus_per_worker",
        "federation.gpus_per_worker",
        "federation.ray_address",
        "federation.worker_retries",
        "secagg.dropout_rate",
        "secagg.dropout_stage",
    }
)


def parse_columns(value: str) -> str | int | list[str | int]:
    """``--text-column`` / ``--label-column``: a name, a 0-based index (a file without a
    header row), or several joined by commas (``title,description`` or ``1,2``)."""
    parts = [p.strip() for p in value.split(",")]
    cols: list[str | int] = [int(p) if p.isdigit() else p for p in parts]
    return cols[0] if len(cols) == 1 else cols


def parse_value(text: str) -> Any:
    """A flag's text as a TOML-like scalar: ``true``/``false``, an integer, else the text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Flag:
    """How a config key is spelled on the command line."""

    name: str
    #: older spellings that still set the key, hidden from ``--help``
    aliases: tuple[str, ...] = ()
    #: the flag's text → the config value (default: by the field's type)
    parse: Callable[[str], Any] | None = None


#: Config keys whose flag is not ``--<section>-<field>``; one flag per key for every
#: command. The aliases are the spellings ``train``, ``simulate`` or ``serve`` used before
#: they shared this table, kept working (hidden from ``--help``) for one release.
FLAGS: dict[str, Flag] = {
    "model.name": Flag("--model"),
    "model.device": Flag("--device", ("--model-device",)),
    "lora.r": Flag("--lora-r", ("--rank",)),
    "adapter.kind": Flag("--adapter"),
    "adapter.emulator": Flag("--emulator"),
    "data.train": Flag("--data"),
    "data.eval": Flag("--eval-data"),
    "data.text_column": Flag("--text-column", parse=parse_columns),
    "data.label_column": Flag("--label-column", parse=parse_columns),
    "data.max_length": Flag("--max-length", ("--data-max-length",)),
    "data.max_train_examples": Flag("--max-train-examples", ("--data-max-train-examples",)),
    "data.max_eval_examples": Flag("--max-eval-examples"),
    "train.epochs": Flag("--local-epochs", ("--epochs",)),
    "train.max_steps": Flag("--local-steps", ("--max-steps",)),
    "train.batch_size": Flag("--batch-size"),
    "train.optimizer": Flag("--optimizer"),
    "train.lr": Flag("--lr"),
    "train.momentum": Flag("--momentum"),
    "train.warmup_ratio": Flag("--warmup-ratio"),
    "train.schedule": Flag("--schedule"),
    "train.seed": Flag("--seed"),
    "train.threads": Flag("--threads", ("--train-threads",)),
    "train.eval_rouge_examples": Flag("--rouge-examples"),
    "train.eval_max_new_tokens": Flag("--rouge-max-new-tokens"),
    "federation.rounds": Flag("--rounds"),
    "federation.clients": Flag("--clients", ("--max-clients",)),
    "federation.clients_per_round": Flag("--clients-per-round"),
    "federation.min_fit_clients": Flag("--min-fit-clients", ("--federation-min-fit-clients",)),
    "federation.full_model_fraction": Flag("--full-model-fraction"),
    "federation.sampling": Flag("--sampling"),
    "federation.partition": Flag("--partition"),
    "federation.alpha": Flag("--alpha"),
    "federation.strategy": Flag("--strategy"),
    "federation.server_lr": Flag("--server-lr"),
    "federation.server_momentum": Flag("--server-momentum"),
    "federation.server_ema": Flag("--server-ema"),
    "federation.proximal_mu": Flag("--proximal-mu"),
    "federation.logit_adjustment": Flag("--logit-adjustment"),
    "federation.client_lr_schedule": Flag("--client-lr-schedule"),
    "federation.client_lr_final": Flag("--client-lr-final"),
    "federation.calibration": Flag("--calibration"),
    "federation.eval_every": Flag("--eval-every"),
    "federation.backend": Flag("--backend"),
    "federation.workers": Flag("--workers"),
    "federation.cpus_per_worker": Flag("--cpus-per-worker"),
    "federation.gpus_per_worker": Flag("--gpus-per-worker"),
    "federation.ray_address": Flag("--ray-address"),
    "codec.name": Flag("--codec"),
    "codec.dtype": Flag("--dtype"),
    "codec.density": Flag("--density"),
    "codec.scale": Flag("--scale"),
    "codec.dense_below": Flag("--dense-below"),
    "codec.error_feedback": Flag("--error-feedback"),
    "codec.feedback_decay": Flag("--feedback-decay"),
    "codec.downlink": Flag("--downlink"),
    # --secagg is the switch alone; its settings are named for what they tune (mask, dropout)
    "secagg.enabled": Flag("--secagg"),
    "secagg.tolerated_dropout": Flag("--tolerated-dropout", ("--secagg-tolerated-dropout",)),
    "secagg.dropout_rate": Flag("--dropout-rate"),
    "secagg.dropout_stage": Flag("--dropout-stage"),
    "secagg.bits": Flag("--mask-bits", ("--secagg-bits",)),
    "secagg.clip_range": Flag("--mask-clip-range", ("--secagg-clip-range",)),
    "secagg.weight_cap": Flag("--mask-weight-cap", ("--secagg-weight-cap",)),
}

# ----------------------------------------------------------------------------- panels

EXPERIMENT_PANEL = "Experiment file"
OUTPUT_PANEL = "Output"
#: Help panel of each config section (``--help`` groups options by these).
SECTION_PANELS: dict[str, str] = {
    "data": "Data",
    "model": "Model",
    "lora": "Model",
    "adapter": "Model",
    "federation": "Federation",
    "train": "Training",
    "codec": "Compression",
    "secagg": "Privacy & security",
    "dp": "Privacy & security",
    "output": OUTPUT_PANEL,
}
#: Fields that say where and how the job runs rather than what it computes.
BACKEND_KEYS = frozenset(
    {
        "federation.backend",
        "federation.workers",
        "federation.cpus_per_worker",
        "federation.gpus_per_worker",
        "federation.ray_address",
        "federation.worker_retries",
        "model.device",
        "model.cache_dir",
        "train.threads",
    }
)
#: The order of the panels in ``--help``; a command's own panels come after these.
PANEL_ORDER = (
    EXPERIMENT_PANEL,
    "Model",
    "Data",
    "Federation",
    "Training",
    "Compression",
    "Privacy & security",
    "Backend",
    OUTPUT_PANEL,
)


def panel_for(key: str) -> str | None:
    """The help panel of a dotted config key (None when its section has none)."""
    if key in BACKEND_KEYS:
        return "Backend"
    return SECTION_PANELS.get(key.partition(".")[0])


# ----------------------------------------------------------------------------- fields


def config_fields(sections: Iterable[str] | None = None) -> dict[str, dataclasses.Field[Any]]:
    """Every leaf field of :class:`JobConfig` by dotted key (``federation.rounds``,
    ``output``), in declaration order; only ``sections`` (and the top level) if given."""
    if sections is None:
        return dict(_leaf_fields())
    wanted = set(sections)
    return {k: f for k, f in _leaf_fields().items() if "." not in k or k.split(".")[0] in wanted}


@functools.cache
def _leaf_fields() -> dict[str, dataclasses.Field[Any]]:
    hints = typing.get_type_hints(JobConfig)
    out: dict[str, dataclasses.Field[Any]] = {}
    for top in dataclasses.fields(JobConfig):
        hint = hints[top.name]
        if dataclasses.is_dataclass(hint):
            for sub in dataclasses.fields(hint):
                out[f"{top.name}.{sub.name}"] = sub
        else:
            out[top.name] = top
    return out


def job_keys(sections: Iterable[str] | None = None, *, without: Iterable[str] = ()) -> list[str]:
    """The config keys of ``sections`` (None: all, including sections added later) and the
    top level, less ``without``: what a command passes to :func:`job_options`."""
    skip = frozenset(without)
    return [key for key in config_fields(sections) if key not in skip]


@functools.cache
def field_type(key: str) -> Any:
    """The resolved type hint of a dotted config key."""
    section, _, name = key.rpartition(".")
    hints = typing.get_type_hints(JobConfig)
    if not section:
        return hints[name]
    return typing.get_type_hints(hints[section])[name]


def field_default(key: str, defaults: Mapping[str, Any] | None = None) -> Any:
    """What a command uses for ``key`` when nothing sets it."""
    if defaults and key in defaults:
        return defaults[key]
    f = _leaf_fields()[key]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def flag_for(key: str) -> Flag:
    """The flag of a dotted config key: its :data:`FLAGS` entry or ``--<section>-<field>``."""
    return FLAGS.get(key) or Flag("--" + key.replace(".", "-").replace("_", "-"))


def show_value(value: Any) -> str:
    """A default as a user would write it in TOML (``none`` where TOML has no value)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(show_value(v) for v in value) or "[]"
    return str(value)


def _option_type(hint: Any) -> tuple[Any, bool]:
    """A CLI type for a field's type hint, and whether values need :func:`parse_value`."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _option_type(inner[0])
        return str, True
    if origin is list:
        return list[str], False
    if hint in (bool, int, float, str):
        return hint, False
    return str, True


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class JobOption:
    """The options behind one config key: ``(parameter, flag)`` of the flag, then of each
    alias; and how a value given becomes the config value."""

    key: str
    spellings: tuple[tuple[str, str], ...]
    parse: Callable[[Any], Any]


def job_options(keys: Iterable[str], defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Decorate a typer command with one option per config key in ``keys`` (module
    docstring); ``defaults``: the command's own defaults over the dataclass ones, as shown
    in ``--help``.

    The command's first parameter receives the dotted overrides the options set (only the
    ones given). Its other parameters are its own options; those without a panel get none
    and fail the help test, and each gets its default shown.
    """
    options = [_job_option(key) for key in keys]

    def decorate(func: F) -> F:
        signature = inspect.signature(func)
        hints = typing.get_type_hints(func)
        own = list(signature.parameters.values())[1:]  # [0] receives the overrides
        params = [_own_parameter(p, hints.get(p.name, p.annotation)) for p in own]
        taken = {flag for p in own for flag in _decls(p.default)}
        for option in options:
            params += _parameters(option, defaults, taken)
        params.sort(key=_panel_rank)  # stable: declaration order within a panel

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            overrides = _collect(options, kwargs)
            return func(overrides, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__dict__["job_options"] = options
        return typing.cast(F, wrapper)

    return decorate


def _job_option(key: str) -> JobOption:
    flag = flag_for(key)
    base = key.replace(".", "__")
    names = [base] + [f"{base}__alias{i}" for i in range(len(flag.aliases))]
    spellings = tuple(zip(names, (flag.name, *flag.aliases), strict=True))
    _, needs_parse = _option_type(field_type(key))
    parse = flag.parse or (parse_value if needs_parse else _as_given)
    return JobOption(key, spellings, parse)


def _as_given(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _parameters(
    option: JobOption, defaults: Mapping[str, Any] | None, taken: set[str]
) -> list[inspect.Parameter]:
    """The canonical option of a config key, then its hidden aliases."""
    key = option.key
    opt_type, _ = _option_type(field_type(key))
    text = _leaf_fields()[key].metadata.get("help")
    out = []
    for i, (name, flag) in enumerate(option.spellings):
        if flag in taken:
            raise ValueError(f"{flag} is both a command option and the flag of {key}")
        taken.add(flag)
        decls = (f"{flag}/--no-{flag[2:]}",) if opt_type is bool else (flag,)  # an off switch
        info = typer.Option(
            None,
            *decls,
            help=f"{text} ({key})" if text else None,
            rich_help_panel=panel_for(key),
            show_default=show_value(field_default(key, defaults)),
            hidden=i > 0,
        )
        kind = inspect.Parameter.KEYWORD_ONLY
        out.append(inspect.Parameter(name, kind, default=info, annotation=opt_type | None))
    return out


def _own_parameter(param: inspect.Parameter, annotation: Any) -> inspect.Parameter:
    """A command's own option, with its default shown as a user would write it."""
    info = param.default
    if isinstance(info, OptionInfo) and info.show_default is True and info.default is not ...:
        info.show_default = show_value(info.default)
    return param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation)


def _panel_rank(param: inspect.Parameter) -> int:
    panel = getattr(param.default, "rich_help_panel", None)
    return PANEL_ORDER.index(panel) if panel in PANEL_ORDER else len(PANEL_ORDER)


def _collect(options: list[JobOption], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the job options' values from ``kwargs``: ``{key: value}`` of those given."""
    overrides: dict[str, Any] = {}
    for option in options:
        given = []
        for name, flag in option.spellings:
            value = kwargs.pop(name, None)
            if value is not None and not (isinstance(value, (list, tuple)) and not value):
                given.append((flag, value))
        if len(given) > 1:
            spelled = " and ".join(flag for flag, _ in given)
            raise ConfigError(given[0][0], f"given twice ({spelled}): give it once")
        if given:
            overrides[option.key] = option.parse(given[0][1])
    return overrides


def _decls(default: Any) -> list[str]:
    if not isinstance(default, OptionInfo):
        return []
    out: list[str] = []
    for decl in default.param_decls or ():
        out.extend(d for d in decl.split("/") if d.startswith("--"))
    return out
