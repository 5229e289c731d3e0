"""The client app a job's config asks for, as a factory of named apps.

A backend calls the factory once per worker (``factory("ray-3")``), the coordinator once
for its own evaluating app. The apps (torch, transformers) are imported only when one is
built, so that a Ray worker unpickles a factory cheaply; Offsite-Tuning's module is
imported when its factory is made, which checks the emulator against the backbone.
"""

from __future__ import annotations

import functools

from fedpeft.config import JobConfig
from fedpeft.protocol.messages import AppFactory, ClientApp


def app_factory(cfg: JobConfig) -> AppFactory:
    """LoRA's client app, or Offsite-Tuning's for ``adapter.kind = "offsite"``."""
    if cfg.adapter.on_emulator:  # checks the emulator against the backbone here, once
        from fedpeft.client.offsite import offsite_app_factory

        return offsite_app_factory(cfg)
    return functools.partial(_lora_app, cfg)


def _lora_app(cfg: JobConfig, name: str) -> ClientApp:
    from fedpeft.client.app import LoraClientApp

    return LoraClientApp(cfg, name=name)
