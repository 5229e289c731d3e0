"""Client-side update processors ("mods") between "training done" and "send".

A mod is a plain callable ``(delta, context) -> delta`` (Flower's ``Mod`` idea applied to
the update). The chain runs in order; the codec encodes what the last mod returns.
Clipping, noise and masking (DP, SecAgg) plug in here without touching training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpeft.compression import Codec
from fedpeft.compression.feedback import add_residual, residual_of
from fedpeft.errors import UpdateRejected
from fedpeft.protocol.messages import ClientState, Tensors


@dataclass
class ModContext:
    client_id: int
    round: int
    num_examples: int
    state: ClientState
    info: dict[str, Any] = field(default_factory=dict)  # mods may report (e.g. clip factor)


UpdateMod = Callable[[Tensors, ModContext], Tensors]


def reject_nonfinite(delta: Tensors, ctx: ModContext) -> Tensors:
    """Refuse to send an update with NaN/Inf (a diverged local run)."""
    for name, value in delta.items():
        if not np.all(np.isfinite(value)):
            raise UpdateRejected(ctx.client_id, f"non-finite values in `{name}`")
    return delta


def global_l2_norm(delta: Tensors) -> float:
    return float(np.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in delta.values())))


def clip_l2(max_norm: float) -> UpdateMod:
    """Scale the whole update so its global L2 norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise ValueError(f"`max_norm` must be > 0, got {max_norm}")

    def clip(delta: Tensors, ctx: ModContext) -> Tensors:
        norm = global_l2_norm(delta)
        factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
        ctx.info["update_norm"] = norm
        ctx.info["clip_factor"] = factor
        ctx.info["dp_clipped"] = float(factor < 1.0)
        if factor == 1.0:
            return delta
        return {k: (v * factor).astype(np.float32) for k, v in delta.items()}

    return clip


def apply_mods(mods: Sequence[UpdateMod], delta: Tensors, ctx: ModContext) -> Tensors:
    for mod in mods:
        delta = mod(delta, ctx)
    return delta


def encode_update(
    codec: Codec,
    delta: Tensors,
    ctx: ModContext,
    *,
    error_feedback: bool,
    decay: float = 1.0,
    carry: bool = True,
) -> bytes:
    """Encode ``delta``; with error feedback add the carried residual first (``decay`` of
    it, see :func:`~fedpeft.compression.feedback.add_residual`; ``carry=False`` when the
    caller added it already, before clipping) and keep what this encoding dropped for the
    next round. The simulation carries the residual in the client state; a device client
    keeps it in an :class:`~fedpeft.compression.ErrorFeedback`."""
    if error_feedback and carry and ctx.state.residual is not None:
        delta = add_residual(delta, ctx.state.residual, decay)
    payload = codec.encode(delta)
    if error_feedback:
        ctx.state.residual = residual_of(delta, codec.reconstruct(delta))
    return payload
