"""Adapters as named float arrays, and the one squared norm and L2 norm every layer uses
(clipping, FedExP's spread, the server's error feedback)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

#: An adapter, an update or a delta: tensor name → array.
Tensors = dict[str, np.ndarray]


def sq_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """Σ‖t‖² over every tensor, accumulated in float64."""
    return sum(float(np.square(v, dtype=np.float64).sum()) for v in tensors.values())


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The global L2 norm over every tensor."""
    return math.sqrt(sq_norm(tensors))
