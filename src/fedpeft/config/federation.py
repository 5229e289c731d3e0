"""``[federation]``: rounds, clients, sampling, strategy and the simulation backend.

``federation.strategy`` and ``federation.lora_aggregation`` are checked against the
registries of :mod:`fedpeft.aggregation`, ``federation.partition`` against
:data:`fedpeft.data.partition.PARTITIONERS`: the one place each is named. Those packages
sit above this one; they are imported here because they are light (numpy, no torch) and
import nothing from :mod:`fedpeft.config` at import time, so a new strategy or
partitioner needs no edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.aggregation import DEPLOYMENT_MAX_EXAMPLES, LORA_AGGREGATIONS, STRATEGIES, UpdateBounds
from fedpeft.config.checks import choices, doc, fraction, int_in, non_negative, one_of, positive
from fedpeft.data.partition import PARTITIONERS
from fedpeft.errors import ConfigError

#: ``federation.client_lr_schedule``: the client learning rate across rounds
#: (fedpeft.coordinator.schedule)
ROUND_SCHEDULES = ("constant", "linear", "cosine")
#: ``federation.calibration``: none, or CCVR (fedpeft.aggregation.calibration)
CALIBRATIONS = ("none", "ccvr")


@dataclass
class FederationConfig:
    """Rounds, clients, sampling, strategy and the simulation backend."""

    rounds: int = field(default=5, metadata=doc("federated rounds"))
    clients: int = field(
        default=100,
        metadata=doc(
            "registered clients (simulation: how many; serve: the most that may register)"
        ),
    )
    clients_per_round: int = field(default=10, metadata=doc("clients sampled each round"))
    sampling: str = field(
        default="fixed", metadata=doc("fixed (exactly clients_per_round) or poisson (q = k/n)")
    )
    partition: str = field(default="dirichlet", metadata=doc(choices(PARTITIONERS)))
    alpha: float = field(default=0.5, metadata=doc("Dirichlet concentration"))
    shards_per_client: int = field(default=2, metadata=doc("shards per client (shards)"))
    strategy: str = field(default="fedavg", metadata=doc(choices(STRATEGIES)))
    server_lr: float = field(default=1.0, metadata=doc("server learning rate"))
    server_momentum: float = field(
        default=0.0, metadata=doc("FedAvg server momentum (FedAvgM; 0 = plain FedAvg)")
    )
    server_ema: float = field(
        default=0.0,
        metadata=doc("EMA decay of the global adapter; evaluated and exported (0 = off)"),
    )
    beta1: float = field(default=0.9, metadata=doc("FedAdam/FedYogi first moment"))
    beta2: float = field(default=0.99, metadata=doc("FedAdam/FedYogi second moment"))
    tau: float = field(default=1e-3, metadata=doc("FedAdam/FedYogi adaptivity"))
    fedexp_eps: float = field(
        default=1e-3, metadata=doc("FedExP: epsilon in the server step's denominator")
    )
    trim_fraction: float = field(
        default=0.2,
        metadata=doc("fedtrimmedavg: fraction of the values dropped at each end, per coordinate"),
    )
    krum_byzantine: int = field(
        default=1, metadata=doc("krum: malicious clients a round's cohort is assumed to hold")
    )
    max_client_examples: int = field(
        default=0,
        metadata=doc(
            "most training examples one client may report; a larger count rejects its "
            "update (0 = the largest client's shard in simulation, "
            f"{DEPLOYMENT_MAX_EXAMPLES} in a deployment)"
        ),
    )
    update_norm_multiple: float = field(
        default=3.0,
        metadata=doc(
            "plain rounds: clip each update's L2 norm to this multiple of the cohort's "
            "median norm (0 = off)"
        ),
    )
    update_norm_max: float = field(
        default=0.0,
        metadata=doc("plain rounds: clip each update's L2 norm to this bound (0 = off)"),
    )
    lora_aggregation: str = field(
        default="factors",
        metadata=doc(
            "fedavg: average LoRA A and B (factors) or their products B*A, re-factored "
            "to rank r by SVD (product; not with server momentum, server_ema or secure "
            "aggregation)"
        ),
    )
    proximal_mu: float = field(default=0.0, metadata=doc("FedProx mu (0 = off)"))
    logit_adjustment: float = field(
        default=0.0,
        metadata=doc("FedLC: clients train on logits + tau*log(local label prior); 0 = off"),
    )
    client_lr_schedule: str = field(
        default="constant",
        metadata=doc("client lr across rounds: constant, linear or cosine decay"),
    )
    client_lr_final: float = field(
        default=0.1, metadata=doc("last round's client lr as a fraction of train.lr")
    )
    client_lr_warmup_rounds: int = field(
        default=0,
        metadata=doc("rounds of linear warm-up of the client lr before the schedule (0 = off)"),
    )
    calibration: str = field(
        default="none",
        metadata=doc(
            "after the last round: none, or ccvr (retrain the output layer on "
            "virtual features from clients' per-class feature statistics)"
        ),
    )
    calibration_clients: int = field(
        default=0, metadata=doc("clients that report feature statistics (0 = all)")
    )
    min_fit_clients: int = field(
        default=1, metadata=doc("fewest usable updates for a round to count")
    )
    full_model_fraction: float = field(
        default=0.0,
        metadata=doc(
            "offsite: share of the virtual clients that train the adapter on the full "
            "backbone, the rest on the emulator (tiered; chosen by train.seed; 0 = none)"
        ),
    )
    eval_every: int = field(default=1, metadata=doc("evaluate the global adapter every N rounds"))
    backend: str = field(default="inprocess", metadata=doc("inprocess or ray"))
    workers: int = field(
        default=2, metadata=doc("long-lived Ray workers (each loads the backbone)")
    )
    cpus_per_worker: float = field(default=1.0, metadata=doc("CPUs per Ray worker"))
    gpus_per_worker: float = field(default=0.0, metadata=doc("GPUs per Ray worker"))
    ray_address: str | None = field(default=None, metadata=doc("join this Ray cluster"))
    worker_retries: int = field(
        default=1, metadata=doc("retries of a client task whose worker died")
    )

    def __post_init__(self) -> None:
        self._check_counts()
        one_of("federation", "sampling", self.sampling, ("fixed", "poisson"))
        one_of("federation", "partition", self.partition, PARTITIONERS)
        positive("federation", "alpha", self.alpha)
        self._check_server()
        non_negative("federation", "proximal_mu", self.proximal_mu)
        non_negative("federation", "logit_adjustment", self.logit_adjustment)
        one_of("federation", "client_lr_schedule", self.client_lr_schedule, ROUND_SCHEDULES)
        fraction("federation", "client_lr_final", self.client_lr_final, one_allowed=True)
        int_in(
            "federation",
            "client_lr_warmup_rounds",
            self.client_lr_warmup_rounds,
            "rounds",
            self.rounds,
        )
        one_of("federation", "calibration", self.calibration, CALIBRATIONS)
        int_in(
            "federation", "calibration_clients", self.calibration_clients, "clients", self.clients
        )
        fraction("federation", "full_model_fraction", self.full_model_fraction, one_allowed=True)
        one_of("federation", "backend", self.backend, ("inprocess", "ray"))
        positive("federation", "cpus_per_worker", self.cpus_per_worker)
        non_negative("federation", "gpus_per_worker", self.gpus_per_worker)
        if not isinstance(self.worker_retries, int) or self.worker_retries < 0:
            raise ConfigError("federation.worker_retries", "must be an integer >= 0")

    def _check_counts(self) -> None:
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

    def _check_server(self) -> None:
        """The strategy and its server-side settings."""
        one_of("federation", "strategy", self.strategy, STRATEGIES)
        positive("federation", "server_lr", self.server_lr)
        for name in ("server_momentum", "server_ema", "beta1", "beta2"):
            fraction("federation", name, getattr(self, name))
        positive("federation", "tau", self.tau)
        positive("federation", "fedexp_eps", self.fedexp_eps)
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                "federation.trim_fraction", f"must be in [0, 0.5), got {self.trim_fraction}"
            )
        if (
            isinstance(self.krum_byzantine, bool)
            or not isinstance(self.krum_byzantine, int)
            or self.krum_byzantine < 0
        ):
            raise ConfigError(
                "federation.krum_byzantine",
                f"must be an integer >= 0, got {self.krum_byzantine!r}",
            )
        UpdateBounds.from_config(self)  # the bounds name their own fields
        one_of("federation", "lora_aggregation", self.lora_aggregation, LORA_AGGREGATIONS)
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
