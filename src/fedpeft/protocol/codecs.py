"""The client's side of the wire: which codecs encode updates and decode the downlink.

Kept free of torch (like :mod:`fedpeft.client.mods`): a Ray worker or a client daemon
whose app does not train with torch never pays for importing it.
"""

from __future__ import annotations

import numpy as np

from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec, make_codec
from fedpeft.compression.chain import apply_chain, decode_chain, is_chain, params_digest
from fedpeft.config import CodecSettings
from fedpeft.protocol.messages import Tensors, TrainTask

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
    """Deltas of the global adapter; full weights (when sent) are always dense fp32.

    ``compeft``: each client gets its own compressed delta against what it holds.
    ``chain``: the coordinator compresses each round's change once, at
    ``codec.downlink_density`` (see :mod:`fedpeft.compression.chain`)."""
    if settings.downlink_mode == "compeft":
        return make_codec("compeft", density=settings.density)
    if settings.downlink_mode == "chain":
        return make_codec("compeft", density=settings.downlink_density, scale=settings.scale)
    return make_codec("dense", dtype="fp32")


def apply_downlink(codec: Codec, task: TrainTask, initial: Tensors | None = None) -> Tensors:
    """The global adapter as this client now holds it (shared by client and engine).

    ``initial``: the client's own initial adapter, the base of a chain that starts at
    version 0 (a first contact under the ``chain`` downlink); its digest must match the
    coordinator's."""
    if not task.downlink_is_delta:
        return FULL_WEIGHTS_CODEC.decode(task.downlink)
    if is_chain(task.downlink):
        chain = decode_chain(task.downlink)
        base = task.state.held
        if base is None:
            if chain.base_version != 0 or initial is None:
                raise ValueError(
                    f"a chain from version {chain.base_version} needs the adapter the client "
                    "holds of that version"
                )
            if params_digest(initial) != chain.base_digest:
                raise ValueError(
                    "this client's initial adapter differs from the coordinator's "
                    "(model, lora settings and train.seed must match the job's)"
                )
            base = initial
        return apply_chain(codec, base, chain)
    if task.state.held is None:
        raise ValueError("a delta downlink needs the adapter the client holds")
    delta = codec.decode(task.downlink)
    return {k: (task.state.held[k] + delta[k]).astype(np.float32) for k in task.state.held}
