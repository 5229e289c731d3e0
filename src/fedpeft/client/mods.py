"""Client-side update processors ("mods") between "training done" and "send".

A mod is a plain callable ``(delta, context) -> delta`` (Flower's ``Mod`` idea applied to
the update). The chain runs in order on the update about to be encoded
(:class:`fedpeft.client.update.UpdateSender`); refusing non-finite values and the DP clip
plug in here without touching training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpeft.errors import UpdateRejected
from fedpeft.privacy.clipping import clip_l2
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


def clip_mod(max_norm: float) -> UpdateMod:
    """Scale the whole update so its global L2 norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise ValueError(f"`max_norm` must be > 0, got {max_norm}")

    def clip(delta: Tensors, ctx: ModContext) -> Tensors:
        clipped, norm, factor = clip_l2(delta, max_norm)
        ctx.info["update_norm"] = norm
        ctx.info["clip_factor"] = factor
        ctx.info["dp_clipped"] = float(factor < 1.0)
        return clipped

    return clip


def apply_mods(mods: Sequence[UpdateMod], delta: Tensors, ctx: ModContext) -> Tensors:
    for mod in mods:
        delta = mod(delta, ctx)
    return delta
