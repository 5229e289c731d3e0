"""A chain of the global adapter's compressed round deltas: the ``chain`` downlink.

With ``codec.downlink = "chain"`` the coordinator compresses the change of the global
adapter **once per round** (ComPEFT, with server-side error feedback: what a round's
delta dropped is added to the next one, as in DoubleSqueeze, Tang et al. 2019), and the
global adapter *is* the initial adapter plus the sum of those deltas, exactly. Every
client therefore holds a bit-exact copy of some past version, and catching up from
version ``v`` to ``t`` is the deltas ``v+1 .. t``: for a client seen two rounds ago two
small messages, for a first contact (version 0, the initial adapter, which every client
builds itself from the job's seed) the whole chain — sent only while it is smaller than
the full fp32 weights (then the engine sends those instead).

Wire format (little-endian)::

    b"FPCH" | u8 format | u32 base_version | 16-byte base digest | u32 count
    | count x (u32 length | codec message)

``base digest`` is :func:`params_digest` of the initial adapter when ``base_version``
is 0: a client whose own initial adapter differs (another model, seed or LoRA setting)
refuses the chain instead of training from a wrong start.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedpeft.compression.base import Codec, Tensors
from fedpeft.errors import CodecError

CHAIN_MAGIC = b"FPCH"
CHAIN_FORMAT = 1
_HEAD = struct.Struct("<4sBI16sI")
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Chain:
    base_version: int
    base_digest: bytes
    deltas: list[bytes]


def params_digest(params: Mapping[str, np.ndarray]) -> bytes:
    """16 bytes of SHA-256 over names, dtypes, shapes and values (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(params):
        value = np.ascontiguousarray(params[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.digest()[:16]


def is_chain(payload: bytes | bytearray | memoryview) -> bool:
    return bytes(payload[:4]) == CHAIN_MAGIC


def encode_chain(base_version: int, base_digest: bytes, deltas: Sequence[bytes]) -> bytes:
    if base_version < 0 or len(base_digest) != 16:
        raise ValueError("a chain needs a version >= 0 and a 16-byte digest")
    parts = [_HEAD.pack(CHAIN_MAGIC, CHAIN_FORMAT, base_version, base_digest, len(deltas))]
    for delta in deltas:
        parts.append(_LEN.pack(len(delta)))
        parts.append(bytes(delta))
    return b"".join(parts)


def decode_chain(payload: bytes | bytearray | memoryview) -> Chain:
    """Split a chain message; CodecError on anything malformed (never a partial chain)."""
    data = memoryview(bytes(payload))
    if len(data) < _HEAD.size:
        raise CodecError(f"chain message truncated: {len(data)} bytes")
    magic, fmt, base, digest, count = _HEAD.unpack_from(data, 0)
    if magic != CHAIN_MAGIC:
        raise CodecError("not a chain message")
    if fmt != CHAIN_FORMAT:
        raise CodecError(f"chain format {fmt} is not supported (this build reads {CHAIN_FORMAT})")
    pos, deltas = _HEAD.size, []
    for i in range(count):
        if pos + _LEN.size > len(data):
            raise CodecError(f"chain message truncated in delta {i} of {count}")
        (length,) = _LEN.unpack_from(data, pos)
        pos += _LEN.size
        if pos + length > len(data):
            raise CodecError(f"chain message truncated in delta {i} of {count}")
        deltas.append(bytes(data[pos : pos + length]))
        pos += length
    if pos != len(data):
        raise CodecError(f"{len(data) - pos} trailing bytes after the chain")
    return Chain(base, bytes(digest), deltas)


def add_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Tensors:
    """``base + delta`` in float32, tensor by tensor: the one operation both the
    coordinator and every client apply, so their copies stay bit-identical."""
    if set(delta) != set(base):
        missing, extra = sorted(set(base) - set(delta)), sorted(set(delta) - set(base))
        raise CodecError(f"delta does not match the adapter (missing {missing}, extra {extra})")
    out: Tensors = {}
    for name, value in base.items():
        step = delta[name]
        if step.shape != value.shape:
            raise CodecError(f"delta for {name} has shape {step.shape}, adapter {value.shape}")
        out[name] = (value.astype(np.float32) + step.astype(np.float32)).astype(np.float32)
    return out


def apply_chain(codec: Codec, base: Mapping[str, np.ndarray], chain: Chain) -> Tensors:
    """The adapter ``base`` (of version ``chain.base_version``) brought up to date."""
    current: Tensors = {k: np.asarray(v, dtype=np.float32) for k, v in base.items()}
    for delta in chain.deltas:
        current = add_delta(current, codec.decode(delta))
    return current


__all__ = [
    "CHAIN_MAGIC",
    "Chain",
    "add_delta",
    "apply_chain",
    "decode_chain",
    "encode_chain",
    "is_chain",
    "params_digest",
]
