"""Client side: the client application (training on private data) and update mods.

``LoraClientApp`` is imported lazily: the mods do not need torch, and a Ray worker or a
client daemon that only uses them should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpeft.client.mods import ModContext, UpdateMod, clip_mod, reject_nonfinite

if TYPE_CHECKING:
    from fedpeft.client.app import LoraClientApp

__all__ = [
    "LoraClientApp",
    "ModContext",
    "UpdateMod",
    "clip_mod",
    "reject_nonfinite",
]
_LAZY = {"LoraClientApp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("fedpeft.client.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
