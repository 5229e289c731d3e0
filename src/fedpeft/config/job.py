"""The whole job (:class:`JobConfig`): its sections, the checks that span them, loading."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpeft.aggregation import STRATEGIES
from fedpeft.config.checks import doc
from fedpeft.config.codec import CodecSettings
from fedpeft.config.data import DataConfig
from fedpeft.config.federation import FederationConfig
from fedpeft.config.io import build, drop_none, read_toml
from fedpeft.config.model import AdapterConfig, LoraSettings, ModelConfig
from fedpeft.config.privacy import DpSettings, SecAggSettings
from fedpeft.config.training import TrainConfig
from fedpeft.errors import ConfigError


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
    output: str = field(default="runs/default", metadata=doc("run folder"))

    def __post_init__(self) -> None:
        _check_privacy(self)
        if self.adapter.on_emulator and self.lora.layers:
            raise ConfigError(
                "lora.layers",
                "Offsite-Tuning places its adapter blocks itself (adapter.kind = offsite); "
                "leave lora.layers at 0",
            )
        if self.federation.full_model_fraction and not self.adapter.on_emulator:
            raise ConfigError(
                "federation.full_model_fraction",
                "tiers (full backbone or emulator) exist only in an Offsite-Tuning job "
                "(adapter.kind = offsite); leave it at 0",
            )

    def to_dict(self) -> dict[str, Any]:
        return drop_none(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        return build(cls, data, "")

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
    if cfg.secagg.enabled:
        _check_secagg(cfg.federation)
    dp = cfg.dp
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
    if dp.enabled:
        _check_dp(cfg.federation, dp)


def _check_secagg(fed: FederationConfig) -> None:
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


def _check_dp(fed: FederationConfig, dp: DpSettings) -> None:
    if dp.target_delta >= 1.0 / fed.clients:
        raise ConfigError(
            "dp.delta",
            f"{dp.target_delta} must be < 1/clients = {1.0 / fed.clients:.3g} "
            "(a larger delta could release one client's data outright)",
        )
    if STRATEGIES[fed.strategy].needs_sq_norm:
        raise ConfigError(
            "federation.strategy",
            f"{fed.strategy} steps by the clients' unnoised update norms, which DP does not cover",
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


def load_config(path: str | Path) -> JobConfig:
    """Load a TOML job file. Errors name the file or the field."""
    return JobConfig.from_dict(read_toml(path))
