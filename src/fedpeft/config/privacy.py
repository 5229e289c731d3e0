"""``[secagg]`` and ``[dp]``: secure aggregation and client-level differential privacy."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.config.checks import doc, fraction, non_negative, one_of, positive
from fedpeft.errors import ConfigError

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
        default=False, metadata=doc("mask every update; the coordinator unmasks only the sum")
    )
    tolerated_dropout: float = field(
        default=0.3,
        metadata=doc("fraction of a cohort that may vanish and the round still completes"),
    )
    dropout_rate: float = field(
        default=0.0,
        metadata=doc("simulation: fraction of each round's clients made to vanish mid-protocol"),
    )
    dropout_stage: str = field(
        default="after_masking",
        metadata=doc("simulation: dropouts vanish after_masking or before_masking"),
    )
    bits: int = field(
        default=0,
        metadata=doc(
            "bits per masked coordinate (arithmetic mod 2^bits); 0 = auto: "
            "log2(clients per round) + 10 with a compressing codec, + 16 dense"
        ),
    )
    clip_range: float = field(
        default=0.05,
        metadata=doc(
            "largest |coordinate| of a full-weight client's update; larger values are clipped "
            "before quantisation (the share clipped is in metrics.jsonl)"
        ),
    )
    weight_cap: int = field(
        default=0,
        metadata=doc(
            "examples at which a client's weight saturates (weights travel masked); "
            "0 = the largest client's examples in simulation"
        ),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("secagg.enabled", f"must be true or false, got {self.enabled!r}")
        fraction("secagg", "tolerated_dropout", self.tolerated_dropout)
        fraction("secagg", "dropout_rate", self.dropout_rate)
        if self.dropout_rate > self.tolerated_dropout:
            raise ConfigError(
                "secagg.dropout_rate",
                f"{self.dropout_rate} exceeds secagg.tolerated_dropout={self.tolerated_dropout}: "
                "every round would fall below the reconstruction threshold",
            )
        one_of("secagg", "dropout_stage", self.dropout_stage, DROPOUT_STAGES)
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigError("secagg.bits", f"must be an integer, got {self.bits!r}")
        if self.bits != 0 and not 8 <= self.bits <= 62:
            raise ConfigError("secagg.bits", f"must be 0 (auto) or in [8, 62], got {self.bits}")
        positive("secagg", "clip_range", self.clip_range)
        if isinstance(self.weight_cap, bool) or not isinstance(self.weight_cap, int):
            raise ConfigError("secagg.weight_cap", f"must be an integer, got {self.weight_cap!r}")
        if self.weight_cap < 0:
            raise ConfigError("secagg.weight_cap", f"must be >= 0, got {self.weight_cap}")


@dataclass
class DpSettings:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018)."""

    epsilon: float | None = field(
        default=None, metadata=doc("target epsilon for the whole run (turns DP on)")
    )
    delta: float | None = field(
        default=None, metadata=doc("target delta (default 1e-5; must be < 1/clients)")
    )
    noise_multiplier: float | None = field(
        default=None,
        metadata=doc(
            "noise std / the sum's L2 sensitivity (clip for poisson, 2*clip for fixed "
            "cohorts); with epsilon too the run stops when the budget is spent"
        ),
    )
    clip: float = field(default=0.1, metadata=doc("L2 clip norm C of each client's update"))
    mode: str = field(
        default="auto",
        metadata=doc("central (coordinator adds noise), distributed (clients, with secagg), auto"),
    )
    accountant: str = field(default="rdp", metadata=doc("rdp or pld (dp-accounting)"))
    adaptive_clip: bool = field(
        default=False,
        metadata=doc(
            "adaptive clipping (Andrew et al. 2021): the clip norm tracks a quantile of the "
            "update norms from a noised, accounted count (central DP only)"
        ),
    )
    target_quantile: float = field(
        default=0.5, metadata=doc("adaptive clipping: share of updates left unclipped")
    )
    clip_lr: float = field(default=0.2, metadata=doc("adaptive clipping: geometric step"))
    count_noise_std: float = field(
        default=0.0,
        metadata=doc("adaptive clipping: std of the clipped-count noise (0 = clients/round/20)"),
    )

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    @property
    def target_delta(self) -> float:
        return 1e-5 if self.delta is None else self.delta

    def __post_init__(self) -> None:
        if self.epsilon is not None:
            positive("dp", "epsilon", self.epsilon)
        if self.delta is not None and not (
            isinstance(self.delta, (int, float)) and 0.0 < self.delta < 1.0
        ):
            raise ConfigError("dp.delta", f"must be in (0, 1), got {self.delta!r}")
        if self.noise_multiplier is not None:
            positive("dp", "noise_multiplier", self.noise_multiplier)
        positive("dp", "clip", self.clip)
        one_of("dp", "mode", self.mode, DP_MODES)
        one_of("dp", "accountant", self.accountant, DP_ACCOUNTANTS)
        if not isinstance(self.adaptive_clip, bool):
            raise ConfigError(
                "dp.adaptive_clip", f"must be true or false, got {self.adaptive_clip!r}"
            )
        if not (isinstance(self.target_quantile, (int, float)) and 0 < self.target_quantile < 1):
            raise ConfigError(
                "dp.target_quantile", f"must be in (0, 1), got {self.target_quantile!r}"
            )
        positive("dp", "clip_lr", self.clip_lr)
        non_negative("dp", "count_noise_std", self.count_noise_std)
