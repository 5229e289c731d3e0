"""Validated dataclass configs, loaded from TOML and CLI flags.

Each section is a dataclass whose ``__post_init__`` validates its own fields and
raises :class:`~fedpeft.errors.ConfigError` naming the field (``section.field``).
``metadata={"help": ...}`` documents every field; the CLI reuses it. Names that a
plug-in defines (strategies, codecs, ComPEFT scale rules) are validated against that
plug-in's registry, never against a copied list.

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

Modules: :mod:`~fedpeft.config.model` (``[model]``, ``[lora]``, ``[adapter]``),
:mod:`~fedpeft.config.data`, :mod:`~fedpeft.config.training`,
:mod:`~fedpeft.config.federation`, :mod:`~fedpeft.config.codec`,
:mod:`~fedpeft.config.privacy` (``[secagg]``, ``[dp]``), :mod:`~fedpeft.config.client`
(a client daemon's ``[client.policy]``), :mod:`~fedpeft.config.job`
(the whole job and the checks across sections), :mod:`~fedpeft.config.io` (TOML) and
:mod:`~fedpeft.config.checks` (field checks).
"""

from fedpeft.config.client import ClientPolicy, load_policy
from fedpeft.config.codec import DOWNLINK_MODES, CodecSettings
from fedpeft.config.data import DataConfig
from fedpeft.config.federation import CALIBRATIONS, ROUND_SCHEDULES, FederationConfig
from fedpeft.config.io import dump_toml, toml_value
from fedpeft.config.job import JobConfig, load_config
from fedpeft.config.model import (
    ADAPTER_KINDS,
    OFFSITE_TRAIN_MODES,
    AdapterConfig,
    AdapterKind,
    LoraSettings,
    ModelConfig,
)
from fedpeft.config.privacy import (
    DP_ACCOUNTANTS,
    DP_MODES,
    DROPOUT_STAGES,
    DpSettings,
    SecAggSettings,
)
from fedpeft.config.training import OPTIMIZERS, PREFIX_CACHE_DTYPES, TrainConfig

__all__ = [
    "ADAPTER_KINDS",
    "CALIBRATIONS",
    "DOWNLINK_MODES",
    "DP_ACCOUNTANTS",
    "DP_MODES",
    "DROPOUT_STAGES",
    "OFFSITE_TRAIN_MODES",
    "OPTIMIZERS",
    "PREFIX_CACHE_DTYPES",
    "ROUND_SCHEDULES",
    "AdapterConfig",
    "AdapterKind",
    "ClientPolicy",
    "CodecSettings",
    "DataConfig",
    "DpSettings",
    "FederationConfig",
    "JobConfig",
    "LoraSettings",
    "ModelConfig",
    "SecAggSettings",
    "TrainConfig",
    "dump_toml",
    "load_config",
    "load_policy",
    "toml_value",
]
