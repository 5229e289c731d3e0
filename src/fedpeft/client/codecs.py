"""The client's side of the wire: which codecs encode updates and decode the downlink.

Kept free of torch (like :mod:`fedpeft.client.mods`): a Ray worker or a client daemon
whose app does not train with torch never pays for importing it.
"""

from __future__ import annotations

import numpy as np

from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec, make_codec
from fedpeft.config import CodecSettings
from fedpeft.coordinator.messages import Tensors, TrainTask

__all__ = ["apply_downlink", "downlink_codec", "uplink_codec"]


def uplink_codec(settings: CodecSettings) -> Codec:
    """The codec a client encodes its update with (the job's ``[codec]`` section)."""
    if settings.name == "compeft":
        return make_codec(
            "compeft",
            density=settings.density,
            scope=settings.scope,
            scale=settings.scale,
            alpha=settings.alpha,
            dense_below=settings.dense_below,
        )
    return make_codec("dense", dtype=settings.dtype)


def downlink_codec(settings: CodecSettings) -> Codec:
    """Deltas of the global adapter; full weights on first contact are always dense fp32."""
    if settings.downlink == "compeft":
        return make_codec("compeft", density=settings.density)
    return make_codec("dense", dtype="fp32")


def apply_downlink(codec: Codec, task: TrainTask) -> Tensors:
    """The global adapter as this client now holds it (shared by client and engine)."""
    if not task.downlink_is_delta:
        return FULL_WEIGHTS_CODEC.decode(task.downlink)
    if task.state.held is None:
        raise ValueError("a delta downlink needs the adapter the client holds")
    delta = codec.decode(task.downlink)
    return {k: (task.state.held[k] + delta[k]).astype(np.float32) for k in task.state.held}
