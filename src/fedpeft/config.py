"""Validated dataclass configs, loaded from TOML and CLI flags.

Each section is a dataclass whose ``__post_init__`` validates its own fields and
raises :class:`~fedpeft.errors.ConfigError` naming the field (``section.field``).
``metadata={"help": ...}`` documents every field; the CLI reuses it.

A TOML file mirrors the sections::

    [model]
    name = "minilm"
    [lora]
    r = 8
    [data]
    train = "reuters-r8"
    [train]
    lr = 1e-3
    [federation]
    clients = 100
    [codec]
    name = "compeft"
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedpeft.errors import ConfigError

#: Local optimizers of ``train.optimizer``. FedAvg with SGD clients is the algorithm of
#: McMahan et al. 2017 and FedOpt's client side (Reddi et al. 2021); AdamW is what
#: centralized PEFT fine-tuning uses.
OPTIMIZERS = ("adamw", "sgd")
#: ``federation.client_lr_schedule``: the client learning rate across rounds
#: (fedpeft.coordinator.schedule)
ROUND_SCHEDULES = ("constant", "linear", "cosine")
#: ``federation.calibration``: none, or CCVR (fedpeft.aggregation.calibration)
CALIBRATIONS = ("none", "ccvr")
#: ``federation.strategy``: the keys of fedpeft.aggregation.STRATEGIES (a test keeps them equal)
STRATEGY_NAMES = ("fedavg", "fedexp", "fedadam", "fedyogi")
#: ``codec.scale``: the values of fedpeft.compression.compeft.ScaleRule (a test keeps them equal)
COMPEFT_SCALES = ("mean_abs", "norm", "alpha_std")
#: ``federation.lora_aggregation``: average LoRA's A and B (FedAvg's default) or their
#: products (fedpeft.aggregation.lora_product)
LORA_AGGREGATIONS = ("factors", "product")
#: ``train.prefix_cache_dtype``: how cached hidden states are stored (fedpeft.training.prefix)
PREFIX_CACHE_DTYPES = ("fp32", "fp16", "bf16")

T = TypeVar("T")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _positive(section: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{section}.{name}", f"must be > 0, got {value!r}")


def _non_negative(section: str, name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{section}.{name}", f"must be >= 0, got {value!r}")


def _fraction(section: str, name: str, value: float, *, one_allowed: bool = False) -> None:
    """``value`` in [0, 1) — or [0, 1] with ``one_allowed``."""
    numeric = isinstance(value, (int, float))
    if not (numeric and value >= 0.0 and (value <= 1.0 if one_allowed else value < 1.0)):
        interval = "[0, 1]" if one_allowed else "[0, 1)"
        raise ConfigError(f"{section}.{name}", f"must be in {interval}, got {value!r}")


def _int_in(section: str, name: str, value: int, bound_name: str, bound: int) -> None:
    """``value`` is an integer in ``[0, bound]``; the message names ``bound_name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
        raise ConfigError(
            f"{section}.{name}", f"must be an integer in [0, {bound_name}={bound}], got {value!r}"
        )


def _one_of(section: str, name: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{section}.{name}", f"must be one of {allowed}, got {value!r}")


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    name: str = field(
        default="minilm",
        metadata=_help("registry name (minilm, smollm2-135m), a local HF folder or a hub id"),
    )
    cache_dir: str | None = field(
        default=None, metadata=_help("where converted weights are cached ($FEDPEFT_CACHE)")
    )
    device: str = field(default="auto", metadata=_help("cpu, cuda, cuda:N or auto"))

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name", "must not be empty")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(
                "model.device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )


@dataclass
class LoraSettings:
    """LoRA hyper-parameters, passed to ``peft.LoraConfig``."""

    r: int = field(default=8, metadata=_help("LoRA rank"))
    alpha: int = field(default=16, metadata=_help("LoRA alpha (scaling = alpha / r)"))
    dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA path"))
    target_modules: list[str] | None = field(
        default=None, metadata=_help("module names to adapt; default from the architecture table")
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata=_help("classification: modules trained in full; default: the architecture's head"),
    )
    freeze_a: bool = field(
        default=False,
        metadata=_help(
            "FFA-LoRA: keep lora_A at its (seeded) initialisation and train only lora_B; "
            "averaging B is then exact and A never travels"
        ),
    )
    layers: int = field(
        default=0,
        metadata=_help(
            "LoRA only in the top k transformer blocks (0 = every block); the frozen blocks "
            "below then run once per example with train.prefix_cache"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.freeze_a, bool):
            raise ConfigError("lora.freeze_a", f"must be true or false, got {self.freeze_a!r}")
        if isinstance(self.layers, bool) or not isinstance(self.layers, int) or self.layers < 0:
            raise ConfigError(
                "lora.layers",
                f"must be an integer >= 0 (0 = every block), got {self.layers!r}",
            )
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError("lora.r", f"must be a positive integer, got {self.r!r}")
        _positive("lora", "alpha", self.alpha)
        _fraction("lora", "dropout", self.dropout)


def _column(name: str, value: object) -> None:
    """A data column: a non-empty name or a 0-based index."""
    if isinstance(value, bool) or not (
        (isinstance(value, str) and value.strip()) or (isinstance(value, int) and value >= 0)
    ):
        raise ConfigError(name, f"must be a column name or a 0-based index, got {value!r}")


@dataclass
class DataConfig:
    """Where examples come from."""

    train: str = field(
        default="reuters-r8", metadata=_help("training data: built-in name or local file")
    )
    eval: str | None = field(
        default=None, metadata=_help("held-out data; default: the built-in test split")
    )
    text_column: str | int | list[str | int] = field(
        default="text",
        metadata=_help(
            "text column of jsonl/csv/tsv: a name, a 0-based index (csv/tsv), or a list of "
            "them whose texts are joined with a space, e.g. title + description (flag: "
            "comma-separated, --text-column 1,2)"
        ),
    )
    label_column: str | int = field(
        default="label", metadata=_help("label column of jsonl/csv/tsv: a name or a 0-based index")
    )
    header: bool | str = field(
        default="auto",
        metadata=_help(
            "csv/tsv: does the first row name the columns? true, false, or auto (with column "
            "names: yes; with indices only: yes unless its label cell is a label of a later row)"
        ),
    )
    max_length: int = field(default=64, metadata=_help("tokens per example (truncation)"))
    max_train_examples: int | None = field(default=None, metadata=_help("cap on training examples"))
    max_eval_examples: int | None = field(
        default=None,
        metadata=_help("cap on held-out examples (evaluation cost); 0 or unset: no cap"),
    )

    def __post_init__(self) -> None:
        texts = self.text_column if isinstance(self.text_column, list) else [self.text_column]
        if not texts:
            raise ConfigError("data.text_column", "must name at least one column")
        for column in texts:
            _column("data.text_column", column)
        _column("data.label_column", self.label_column)
        if self.header not in (True, False, "auto"):
            raise ConfigError("data.header", f"must be true, false or auto, got {self.header!r}")
        if not isinstance(self.max_length, int) or self.max_length <= 0:
            raise ConfigError(
                "data.max_length", f"must be a positive integer, got {self.max_length!r}"
            )
        value = self.max_train_examples
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(
                "data.max_train_examples", f"must be a positive integer, got {value!r}"
            )
        value = self.max_eval_examples
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 0
        if value is not None and bad:
            raise ConfigError(
                "data.max_eval_examples", f"must be an integer >= 0 (0: no cap), got {value!r}"
            )


@dataclass
class TrainConfig:
    """The local training loop (the same loop runs centrally and on every client)."""

    epochs: float = field(default=1.0, metadata=_help("passes over the local data"))
    max_steps: int | None = field(
        default=None, metadata=_help("optimizer steps; overrides epochs when set")
    )
    batch_size: int = field(default=16, metadata=_help("examples per optimizer micro-batch"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    optimizer: str = field(
        default="adamw", metadata=_help("local optimizer: adamw or sgd (with momentum)")
    )
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (optimizer = sgd)"))
    weight_decay: float = field(default=0.0, metadata=_help("weight decay (decoupled for AdamW)"))
    warmup_ratio: float = field(default=0.06, metadata=_help("fraction of steps of linear warm-up"))
    schedule: str = field(
        default="linear", metadata=_help("decay after warm-up: linear or constant")
    )
    max_grad_norm: float | None = field(default=1.0, metadata=_help("gradient clipping (L2)"))
    eval_batch_size: int = field(default=64, metadata=_help("examples per evaluation batch"))
    seed: int = field(default=0, metadata=_help("seed for data order, dropout and init"))
    threads: int | None = field(default=None, metadata=_help("torch CPU threads (default: all)"))
    prefix_cache: bool = field(
        default=True,
        metadata=_help(
            "with lora.layers > 0: compute the frozen blocks below the adapter once per "
            "example and reuse them every epoch and round (off: run the whole model)"
        ),
    )
    prefix_cache_mb: int = field(
        default=1024,
        metadata=_help(
            "memory for cached hidden states per process (MiB); least recently used "
            "examples are dropped beyond it"
        ),
    )
    prefix_cache_dtype: str = field(
        default="fp32",
        metadata=_help("cached hidden states: fp32 (exact), fp16 or bf16 (half the memory)"),
    )

    def __post_init__(self) -> None:
        _positive("train", "epochs", self.epochs)
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps <= 0
        ):
            raise ConfigError(
                "train.max_steps", f"must be a positive integer, got {self.max_steps!r}"
            )
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"train.{name}", f"must be a positive integer, got {value!r}")
        _one_of("train", "optimizer", self.optimizer, OPTIMIZERS)
        _positive("train", "lr", self.lr)
        _fraction("train", "momentum", self.momentum)
        _non_negative("train", "weight_decay", self.weight_decay)
        _fraction("train", "warmup_ratio", self.warmup_ratio)
        _one_of("train", "schedule", self.schedule, ("linear", "constant"))
        if self.max_grad_norm is not None:
            _positive("train", "max_grad_norm", self.max_grad_norm)
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads <= 0):
            raise ConfigError("train.threads", f"must be a positive integer, got {self.threads!r}")
        if not isinstance(self.prefix_cache, bool):
            raise ConfigError(
                "train.prefix_cache", f"must be true or false, got {self.prefix_cache!r}"
            )
        if (
            isinstance(self.prefix_cache_mb, bool)
            or not isinstance(self.prefix_cache_mb, int)
            or self.prefix_cache_mb <= 0
        ):
            raise ConfigError(
                "train.prefix_cache_mb", f"must be a positive integer, got {self.prefix_cache_mb!r}"
            )
        _one_of("train", "prefix_cache_dtype", self.prefix_cache_dtype, PREFIX_CACHE_DTYPES)


@dataclass
class FederationConfig:
    """Rounds, clients, sampling, strategy and the simulation backend."""

    rounds: int = field(default=5, metadata=_help("federated rounds"))
    clients: int = field(default=100, metadata=_help("registered (virtual) clients"))
    clients_per_round: int = field(default=10, metadata=_help("clients sampled each round"))
    sampling: str = field(
        default="fixed", metadata=_help("fixed (exactly clients_per_round) or poisson (q = k/n)")
    )
    partition: str = field(default="dirichlet", metadata=_help("iid, dirichlet or shards"))
    alpha: float = field(default=0.5, metadata=_help("Dirichlet concentration"))
    shards_per_client: int = field(default=2, metadata=_help("shards per client (shards)"))
    strategy: str = field(default="fedavg", metadata=_help("fedavg, fedexp, fedadam or fedyogi"))
    server_lr: float = field(default=1.0, metadata=_help("server learning rate"))
    server_momentum: float = field(
        default=0.0, metadata=_help("FedAvg server momentum (FedAvgM; 0 = plain FedAvg)")
    )
    server_ema: float = field(
        default=0.0,
        metadata=_help("EMA decay of the global adapter; evaluated and exported (0 = off)"),
    )
    beta1: float = field(default=0.9, metadata=_help("FedAdam/FedYogi first moment"))
    beta2: float = field(default=0.99, metadata=_help("FedAdam/FedYogi second moment"))
    tau: float = field(default=1e-3, metadata=_help("FedAdam/FedYogi adaptivity"))
    fedexp_eps: float = field(
        default=1e-3, metadata=_help("FedExP: epsilon in the server step's denominator")
    )
    lora_aggregation: str = field(
        default="factors",
        metadata=_help(
            "fedavg: average LoRA A and B (factors) or their products B*A, re-factored "
            "to rank r by SVD (product; not with server momentum, server_ema or secure "
            "aggregation)"
        ),
    )
    proximal_mu: float = field(default=0.0, metadata=_help("FedProx mu (0 = off)"))
    logit_adjustment: float = field(
        default=0.0,
        metadata=_help("FedLC: clients train on logits + tau*log(local label prior); 0 = off"),
    )
    client_lr_schedule: str = field(
        default="constant",
        metadata=_help("client lr across rounds: constant, linear or cosine decay"),
    )
    client_lr_final: float = field(
        default=0.1, metadata=_help("last round's client lr as a fraction of train.lr")
    )
    client_lr_warmup_rounds: int = field(
        default=0,
        metadata=_help("rounds of linear warm-up of the client lr before the schedule (0 = off)"),
    )
    calibration: str = field(
        default="none",
        metadata=_help(
            "after the last round: none, or ccvr (retrain the output layer on "
            "virtual features from clients' per-class feature statistics)"
        ),
    )
    calibration_clients: int = field(
        default=0, metadata=_help("clients that report feature statistics (0 = all)")
    )
    min_fit_clients: int = field(
        default=1, metadata=_help("fewest usable updates for a round to count")
    )
    eval_every: int = field(default=1, metadata=_help("evaluate the global adapter every N rounds"))
    backend: str = field(default="inprocess", metadata=_help("inprocess or ray"))
    workers: int = field(
        default=2, metadata=_help("long-lived Ray workers (each loads the backbone)")
    )
    cpus_per_worker: float = field(default=1.0, metadata=_help("CPUs per Ray worker"))
    gpus_per_worker: float = field(default=0.0, metadata=_help("GPUs per Ray worker"))
    ray_address: str | None = field(default=None, metadata=_help("join this Ray cluster"))
    worker_retries: int = field(
        default=1, metadata=_help("retries of a client task whose worker died")
    )

    def __post_init__(self) -> None:
        for name in (
            "rounds",
            "clients",
            "clients_per_round",
            "eval_every",
            "workers",
            "shards_per_client",
            "min_fit_clients",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"federation.{name}", f"must be a positive integer, got {value!r}"
                )
        if self.clients_per_round > self.clients:
            raise ConfigError(
                "federation.clients_per_round",
                f"{self.clients_per_round} clients per round but only {self.clients} clients",
            )
        _one_of("federation", "sampling", self.sampling, ("fixed", "poisson"))
        _one_of("federation", "partition", self.partition, ("iid", "dirichlet", "shards"))
        _positive("federation", "alpha", self.alpha)
        _one_of("federation", "strategy", self.strategy, STRATEGY_NAMES)
        _positive("federation", "server_lr", self.server_lr)
        for name in ("server_momentum", "server_ema", "beta1", "beta2"):
            _fraction("federation", name, getattr(self, name))
        _positive("federation", "tau", self.tau)
        _positive("federation", "fedexp_eps", self.fedexp_eps)
        _one_of("federation", "lora_aggregation", self.lora_aggregation, LORA_AGGREGATIONS)
        if self.lora_aggregation == "product":
            if self.strategy != "fedavg":
                raise ConfigError(
                    "federation.lora_aggregation",
                    f"product aggregation is a fedavg option, not {self.strategy}'s",
                )
            for name in ("server_momentum", "server_ema"):
                if getattr(self, name):
                    raise ConfigError(
                        "federation.lora_aggregation",
                        f"product aggregation re-factors the adapter every round, so "
                        f"federation.{name} would mix factors of different bases; set it to 0",
                    )
        _non_negative("federation", "proximal_mu", self.proximal_mu)
        _non_negative("federation", "logit_adjustment", self.logit_adjustment)
        _one_of("federation", "client_lr_schedule", self.client_lr_schedule, ROUND_SCHEDULES)
        _fraction("federation", "client_lr_final", self.client_lr_final, one_allowed=True)
        _int_in(
            "federation",
            "client_lr_warmup_rounds",
            self.client_lr_warmup_rounds,
            "rounds",
            self.rounds,
        )
        _one_of("federation", "calibration", self.calibration, CALIBRATIONS)
        _int_in(
            "federation", "calibration_clients", self.calibration_clients, "clients", self.clients
        )
        _one_of("federation", "backend", self.backend, ("inprocess", "ray"))
        _positive("federation", "cpus_per_worker", self.cpus_per_worker)
        _non_negative("federation", "gpus_per_worker", self.gpus_per_worker)
        if not isinstance(self.worker_retries, int) or self.worker_retries < 0:
            raise ConfigError("federation.worker_retries", "must be an integer >= 0")


@dataclass
class CodecSettings:
    """How updates (up) and global-adapter deltas (down) are encoded on the wire."""

    name: str = field(default="dense", metadata=_help("dense or compeft"))
    dtype: str = field(default="fp32", metadata=_help("dense: fp32, fp16 or bf16"))
    density: float = field(default=0.1, metadata=_help("compeft: fraction kept, in (0, 1]"))
    scope: str = field(default="per_tensor", metadata=_help("compeft top-k: per_tensor or global"))
    scale: str = field(
        default="mean_abs", metadata=_help("compeft scale: mean_abs, norm or alpha_std")
    )
    alpha: float = field(default=1.0, metadata=_help("compeft alpha for alpha_std"))
    dense_below: int = field(
        default=0, metadata=_help("compeft: tensors with fewer entries go exact float32")
    )
    error_feedback: bool = field(default=False, metadata=_help("carry what compression dropped"))
    feedback_decay: float = field(
        default=1.0,
        metadata=_help("error feedback: fraction of the carried residual added (1 = all)"),
    )
    downlink: str = field(
        default="auto",
        metadata=_help(
            "global adapter sent down: dense (full weights), compeft (a compressed delta "
            "per client, full weights on first contact) or chain (each round's change "
            "compressed once, with server error feedback; clients catch up from a chain of "
            "them); auto: chain with --codec compeft, else dense"
        ),
    )
    downlink_density: float = field(
        default=0.1, metadata=_help("chain downlink: fraction of coordinates each round sends")
    )

    def __post_init__(self) -> None:
        _one_of("codec", "name", self.name, ("dense", "compeft"))
        _one_of("codec", "downlink", self.downlink, ("auto", "dense", "compeft", "chain"))
        if not (
            isinstance(self.downlink_density, (int, float)) and 0.0 < self.downlink_density <= 1.0
        ):
            raise ConfigError(
                "codec.downlink_density",
                f"must be in (0, 1] (a fraction), got {self.downlink_density!r}",
            )
        _one_of("codec", "dtype", self.dtype, ("fp32", "fp16", "bf16"))
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density <= 1.0):
            raise ConfigError(
                "codec.density", f"must be in (0, 1] (a fraction), got {self.density!r}"
            )
        _one_of("codec", "scope", self.scope, ("per_tensor", "global"))
        _one_of("codec", "scale", self.scale, COMPEFT_SCALES)
        _positive("codec", "alpha", self.alpha)
        _fraction("codec", "feedback_decay", self.feedback_decay, one_allowed=True)
        if not isinstance(self.dense_below, int) or self.dense_below < 0:
            raise ConfigError(
                "codec.dense_below", f"must be an integer >= 0, got {self.dense_below!r}"
            )

    @property
    def downlink_mode(self) -> str:
        """The downlink in effect: ``auto`` is ``chain`` for a compressing uplink (it sent
        the fewest bytes to the same accuracy, bench/results/realjob_vs_flower.json), else
        ``dense``."""
        if self.downlink == "auto":
            return "chain" if self.name == "compeft" else "dense"
        return self.downlink


#: ``secagg.dropout_stage``: when simulated dropouts vanish — after sending their masked
#: input (the hardest case: their input is in the sum, their self mask must be rebuilt) or
#: before it (their pairwise masks must be rebuilt from their neighbours' shares)
DROPOUT_STAGES = ("after_masking", "before_masking")
#: ``dp.mode``: where the noise is added (auto: distributed when secure aggregation is on)
DP_MODES = ("auto", "central", "distributed")
#: ``dp.accountant``: dp-accounting's RDP or PLD accountant
DP_ACCOUNTANTS = ("rdp", "pld")


@dataclass
class SecAggSettings:
    """Secure aggregation (SecAgg+, Bell et al. 2020): the coordinator learns only the sum."""

    enabled: bool = field(
        default=False, metadata=_help("mask every update; the coordinator unmasks only the sum")
    )
    tolerated_dropout: float = field(
        default=0.3,
        metadata=_help("fraction of a cohort that may vanish and the round still completes"),
    )
    dropout_rate: float = field(
        default=0.0,
        metadata=_help("simulation: fraction of each round's clients made to vanish mid-protocol"),
    )
    dropout_stage: str = field(
        default="after_masking",
        metadata=_help("simulation: dropouts vanish after_masking or before_masking"),
    )
    bits: int = field(
        default=0,
        metadata=_help(
            "bits per masked coordinate (arithmetic mod 2^bits); 0 = auto: "
            "log2(clients per round) + 10 with a compressing codec, + 16 dense"
        ),
    )
    clip_range: float = field(
        default=0.05,
        metadata=_help(
            "largest |coordinate| of a full-weight client's update; larger values are clipped "
            "before quantisation (the share clipped is in metrics.jsonl)"
        ),
    )
    weight_cap: int = field(
        default=0,
        metadata=_help(
            "examples at which a client's weight saturates (weights travel masked); "
            "0 = the largest client's examples in simulation"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("secagg.enabled", f"must be true or false, got {self.enabled!r}")
        _fraction("secagg", "tolerated_dropout", self.tolerated_dropout)
        _fraction("secagg", "dropout_rate", self.dropout_rate)
        if self.dropout_rate > self.tolerated_dropout:
            raise ConfigError(
                "secagg.dropout_rate",
                f"{self.dropout_rate} exceeds secagg.tolerated_dropout={self.tolerated_dropout}: "
                "every round would fall below the reconstruction threshold",
            )
        _one_of("secagg", "dropout_stage", self.dropout_stage, DROPOUT_STAGES)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigError("secagg.bits", f"must be an integer, got {self.bits!r}")
        if self.bits != 0 and not 8 <= self.bits <= 62:
            raise ConfigError("secagg.bits", f"must be 0 (auto) or in [8, 62], got {self.bits}")
        _positive("secagg", "clip_range", self.clip_range)
        if isinstance(self.weight_cap, bool) or not isinstance(self.weight_cap, int):
            raise ConfigError("secagg.weight_cap", f"must be an integer, got {self.weight_cap!r}")
        if self.weight_cap < 0:
            raise ConfigError("secagg.weight_cap", f"must be >= 0, got {self.weight_cap}")


@dataclass
class DpSettings:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018)."""

    epsilon: float | None = field(
        default=None, metadata=_help("target epsilon for the whole run (turns DP on)")
    )
    delta: float | None = field(
        default=None, metadata=_help("target delta (default 1e-5; must be < 1/clients)")
    )
    noise_multiplier: float | None = field(
        default=None,
        metadata=_help(
            "noise std / the sum's L2 sensitivity (clip for poisson, 2*clip for fixed "
            "cohorts); with epsilon too the run stops when the budget is spent"
        ),
    )
    clip: float = field(default=0.1, metadata=_help("L2 clip norm C of each client's update"))
    mode: str = field(
        default="auto",
        metadata=_help(
            "central (coordinator adds noise), distributed (clients, with secagg), auto"
        ),
    )
    accountant: str = field(default="rdp", metadata=_help("rdp or pld (dp-accounting)"))
    adaptive_clip: bool = field(
        default=False,
        metadata=_help(
            "adaptive clipping (Andrew et al. 2021): the clip norm tracks a quantile of the "
            "update norms from a noised, accounted count (central DP only)"
        ),
    )
    target_quantile: float = field(
        default=0.5, metadata=_help("adaptive clipping: share of updates left unclipped")
    )
    clip_lr: float = field(default=0.2, metadata=_help("adaptive clipping: geometric step"))
    count_noise_std: float = field(
        default=0.0,
        metadata=_help("adaptive clipping: std of the clipped-count noise (0 = clients/round/20)"),
    )

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    @property
    def target_delta(self) -> float:
        return 1e-5 if self.delta is None else self.delta

    def __post_init__(self) -> None:
        if self.epsilon is not None:
            _positive("dp", "epsilon", self.epsilon)
        if self.delta is not None and not (
            isinstance(self.delta, (int, float)) and 0.0 < self.delta < 1.0
        ):
            raise ConfigError("dp.delta", f"must be in (0, 1), got {self.delta!r}")
        if self.noise_multiplier is not None:
            _positive("dp", "noise_multiplier", self.noise_multiplier)
        _positive("dp", "clip", self.clip)
        _one_of("dp", "mode", self.mode, DP_MODES)
        _one_of("dp", "accountant", self.accountant, DP_ACCOUNTANTS)
        if not isinstance(self.adaptive_clip, bool):
            raise ConfigError(
                "dp.adaptive_clip", f"must be true or false, got {self.adaptive_clip!r}"
            )
        if not (isinstance(self.target_quantile, (int, float)) and 0 < self.target_quantile < 1):
            raise ConfigError(
                "dp.target_quantile", f"must be in (0, 1), got {self.target_quantile!r}"
            )
        _positive("dp", "clip_lr", self.clip_lr)
        _non_negative("dp", "count_noise_std", self.count_noise_std)


#: ``adapter.kind``: LoRA on the full backbone, or Offsite-Tuning's sandwich adapter on an
#: emulator (fedpeft.adapters.offsite)
ADAPTER_KINDS = ("lora", "offsite")
#: ``adapter.train`` (offsite): LoRA inside the adapter blocks, or the whole blocks
OFFSITE_TRAIN_MODES = ("lora", "full")


@dataclass
class AdapterConfig:
    """Which adapter clients train (``lora``, or ``offsite``: Offsite-Tuning)."""

    kind: str = field(
        default="lora",
        metadata=_help("lora (LoRA on the full backbone) or offsite (sandwich adapter, emulator)"),
    )
    emulator: str | None = field(
        default=None,
        metadata=_help("offsite: emulator folder written by `fedpeft offsite build-emulator`"),
    )
    train: str = field(
        default="lora",
        metadata=_help(
            "offsite: train the adapter blocks with LoRA inside (lora.* settings) or whole (full)"
        ),
    )

    def __post_init__(self) -> None:
        _one_of("adapter", "kind", self.kind, ADAPTER_KINDS)
        _one_of("adapter", "train", self.train, OFFSITE_TRAIN_MODES)
        if self.kind == "offsite" and not self.emulator:
            raise ConfigError(
                "adapter.emulator",
                "--adapter offsite needs an emulator folder: build one with `fedpeft offsite "
                "build-emulator --model NAME --out DIR` and pass --emulator DIR",
            )


@dataclass
class JobConfig:
    """A whole job: central training (``fedpeft train``) or a simulation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    codec: CodecSettings = field(default_factory=CodecSettings)
    secagg: SecAggSettings = field(default_factory=SecAggSettings)
    dp: DpSettings = field(default_factory=DpSettings)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    output: str = field(default="runs/default", metadata=_help("run folder"))

    def __post_init__(self) -> None:
        _check_privacy(self)
        if self.adapter.kind == "offsite" and self.lora.layers:
            raise ConfigError(
                "lora.layers",
                "Offsite-Tuning places its adapter blocks itself (adapter.kind = offsite); "
                "leave lora.layers at 0",
            )

    def to_dict(self) -> dict[str, Any]:
        return _drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        return _build(cls, data, "")

    def replace(self, overrides: dict[str, Any]) -> JobConfig:
        """A copy with dotted overrides (``{"federation.rounds": 3}``); None values are ignored."""
        data = dataclasses.asdict(self)
        for dotted, value in overrides.items():
            if value is None:
                continue
            parts = dotted.split(".")
            node = data
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value
        return JobConfig.from_dict(data)


def _check_privacy(cfg: JobConfig) -> None:
    """Settings that secure aggregation or DP cannot honour, refused with the reason."""
    fed, dp = cfg.federation, cfg.dp
    if cfg.secagg.enabled:
        if fed.lora_aggregation == "product":
            raise ConfigError(
                "federation.lora_aggregation",
                "product aggregation needs each client's update; with secure aggregation the "
                "coordinator sees only their sum (use factors)",
            )
        if fed.clients_per_round < 2:
            raise ConfigError(
                "federation.clients_per_round",
                "secure aggregation of one client's update would reveal it; need >= 2",
            )
        if fed.sampling != "fixed":
            raise ConfigError(
                "federation.sampling", "secure aggregation plans its threshold for fixed cohorts"
            )
    if dp.adaptive_clip and cfg.secagg.enabled:
        raise ConfigError(
            "dp.adaptive_clip",
            "adaptive clipping needs each client's clipped bit in the clear or a masked count "
            "with client noise; only central DP (no secagg) supports it so far",
        )
    if dp.mode == "distributed" and not cfg.secagg.enabled:
        raise ConfigError(
            "dp.mode", "distributed noise needs secure aggregation (secagg.enabled = true)"
        )
    if not dp.enabled:
        return
    if dp.target_delta >= 1.0 / fed.clients:
        raise ConfigError(
            "dp.delta",
            f"{dp.target_delta} must be < 1/clients = {1.0 / fed.clients:.3g} "
            "(a larger delta could release one client's data outright)",
        )
    if fed.strategy == "fedexp":
        raise ConfigError(
            "federation.strategy",
            "fedexp steps by the clients' unnoised update norms, which DP does not cover",
        )
    if fed.lora_aggregation == "product":
        raise ConfigError(
            "federation.lora_aggregation",
            "DP noises the mean update; product aggregation "
            "re-factors individual updates (use factors)",
        )
    if fed.calibration != "none":
        raise ConfigError(
            "federation.calibration",
            "CCVR's feature statistics are a release of client data that DP does not account; "
            "use calibration = none with DP",
        )


def _drop_none(value: Any) -> Any:
    """TOML has no null: drop None entries so a saved config reloads."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _build(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass ``cls`` from a dict, checking unknown keys and types."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(where, f"must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", f"unknown field; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(typing.cast(type, hint), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(hint, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, name)
        for option in inner:  # e.g. str | int | list[str | int]: the first that fits
            try:
                return _coerce(option, value, name)
            except ConfigError:
                continue
        kinds = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ConfigError(name, f"must be {kinds}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(name, f"must be a list, got {value!r}")
        return [_coerce(args[0], v, name) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    return value


def load_config(path: str | Path) -> JobConfig:
    """Load a TOML job file. Errors name the file or the field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    return JobConfig.from_dict(data)


def dump_toml(config: JobConfig) -> str:
    """Serialise a config to TOML (sections of scalars and lists only)."""
    lines: list[str] = []
    top = config.to_dict()
    for key, value in top.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in top.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            for k, v in value.items():
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")
