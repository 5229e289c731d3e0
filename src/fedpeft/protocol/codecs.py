"""Both ends of the wire: the codecs of a job's ``[codec]`` section, built through the
codec registry, and the downlink as a client applies it (the engine replays it too).

Kept free of torch (like :mod:`fedpeft.client.mods`): a Ray worker or a client daemon
whose app does not train with torch never pays for importing it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec, codec_class, make_codec
from fedpeft.compression.chain import apply_chain, decode_chain, is_chain, params_digest
from fedpeft.config import CodecSettings
from fedpeft.protocol.messages import Tensors, TrainTask

__all__ = ["CHAIN_CODEC", "apply_downlink", "downlink_codec", "uplink_codec"]

#: the codec each round's change is compressed with under the ``chain`` downlink
CHAIN_CODEC = "compeft"


def uplink_codec(settings: CodecSettings) -> Codec:
    """The codec a client encodes its update with (the job's ``[codec]`` section): the
    registered codec ``codec.name``, configured from the ``[codec]`` fields its config
    class shares (``dtype`` for dense; ``density``, ``scope``, ``scale``, ... for compeft)."""
    config_cls = codec_class(settings.name).config_cls
    options = {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(config_cls)
        if hasattr(settings, f.name)
    }
    return make_codec(settings.name, **options)


def downlink_codec(settings: CodecSettings) -> Codec:
    """Deltas of the global adapter; full weights (when sent) are always dense fp32.

    A compressing codec (``compeft``): each client gets its own compressed delta against
    what it holds, at ``codec.density`` and the codec's default scale. ``chain``: the
    coordinator compresses each round's change once, at ``codec.downlink_density`` (see
    :mod:`fedpeft.compression.chain`). A non-compressing codec: full weights."""
    mode = settings.downlink_mode
    if mode == "chain":
        return make_codec(CHAIN_CODEC, density=settings.downlink_density, scale=settings.scale)
    if codec_class(mode).compresses:
        return make_codec(mode, density=settings.density)
    return FULL_WEIGHTS_CODEC


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
