"""The client app a job's config asks for, as a factory of named apps; and which virtual
clients of a tiered Offsite-Tuning job train on the full backbone.

A backend calls the factory once per worker (``factory("ray-3")``), the coordinator once
for its own evaluating app. The apps (torch, transformers) are imported only when one is
built, so that a Ray worker unpickles a factory cheaply; Offsite-Tuning's module is
imported when its factory is made, which checks the emulator against the backbone.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fedpeft.config import JobConfig
from fedpeft.protocol.messages import AppFactory, ClientApp

#: Seeds the tier draw apart from the sampler's and the partition's streams (same seed).
_TIER_STREAM = 0x7131


def full_model_clients(clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The virtual clients (ids ``0 … clients-1``) that train on the full backbone:
    ``round(fraction · clients)`` of them (halves up), drawn without replacement from a
    generator seeded by ``seed`` on its own stream — the same set for the same job."""
    count = min(clients, math.floor(fraction * clients + 0.5))
    if count <= 0:
        return frozenset()
    order = np.random.default_rng([seed, _TIER_STREAM]).permutation(clients)
    return frozenset(int(c) for c in order[:count])


def job_tiers(cfg: JobConfig) -> frozenset[int]:
    """:func:`full_model_clients` of a job (``federation.full_model_fraction``)."""
    fed = cfg.federation
    return full_model_clients(fed.clients, fed.full_model_fraction, cfg.train.seed)


def app_factory(cfg: JobConfig) -> AppFactory:
    """LoRA's client app, or Offsite-Tuning's for ``adapter.kind = "offsite"``."""
    if cfg.adapter.on_emulator:  # checks the emulator against the backbone here, once
        from fedpeft.client.offsite import offsite_app_factory

        return offsite_app_factory(cfg, full_model=job_tiers(cfg))
    return functools.partial(_lora_app, cfg)


def _lora_app(cfg: JobConfig, name: str) -> ClientApp:
    from fedpeft.client.app import LoraClientApp

    return LoraClientApp(cfg, name=name)
