"""Simulation: hundreds of virtual clients on a few long-lived workers (in-process or Ray).

``run_simulation`` is imported lazily: a Ray worker that unpickles
:mod:`fedpeft.simulation.ray_backend` should not pay for torch unless its client app does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpeft.simulation.run import make_backend, run_simulation

__all__ = ["make_backend", "run_simulation"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fedpeft.simulation.run"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
