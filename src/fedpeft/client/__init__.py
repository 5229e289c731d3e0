"""Client side: the client application (training on private data) and update mods.

``ClientApp`` and ``LoraClientApp`` are imported lazily: the mods and the wire codecs
(:mod:`fedpeft.client.codecs`) do not need torch, and a Ray worker or a client daemon
that only uses them should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpeft.client.codecs import apply_downlink, downlink_codec, uplink_codec
from fedpeft.client.mods import ModContext, UpdateMod, clip_l2, reject_nonfinite

if TYPE_CHECKING:
    from fedpeft.client.app import ClientApp, LoraClientApp

__all__ = [
    "ClientApp",
    "LoraClientApp",
    "ModContext",
    "UpdateMod",
    "apply_downlink",
    "clip_l2",
    "downlink_codec",
    "reject_nonfinite",
    "uplink_codec",
]
_LAZY = {"ClientApp", "LoraClientApp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("fedpeft.client.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
