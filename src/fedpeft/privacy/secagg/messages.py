"""Bodies of the SecAgg+ messages (inside the frame of :mod:`.wire`).

All integers little-endian; every list starts with a u32 count and has fixed-size entries,
so a body's length is checked exactly before anything is parsed.

=========  ==================  ===========================================================
stage      direction           body
=========  ==================  ===========================================================
ADVERTISE  client → server     enc_pk (32) ‖ mask_pk (32) ‖ SHA-256 commitment to the
                               self-mask seed (32)
SHARE      server → client     neighbours that advertised: (id u64, enc_pk 32, mask_pk 32)*
SHARE      client → server     one AES-GCM ciphertext per relayed neighbour:
                               (recipient u64, nonce ‖ ciphertext ‖ tag, 86 bytes)*
MASK       server → client     the ciphertexts addressed to the client:
                               (sender u64, 86 bytes)*
MASK       client → server     the masked vector, bit-packed (ceil(m·b/8) bytes)
UNMASK     server → client     surviving neighbours (u64)* then dropped neighbours (u64)*
UNMASK     client → server     (peer u64, kind u8: 0 self-mask seed / 1 mask-key seed,
                               share 16)*
=========  ==================  ===========================================================

A ciphertext's plaintext is ``round u64 ‖ sender u64 ‖ recipient u64 ‖ x u16 ‖
mask-key-seed share (16) ‖ self-mask-seed share (16)``, where ``x`` is the Shamir
x-coordinate of the recipient (its position in the sender's neighbour list, plus one).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

from fedpeft.errors import CodecError
from fedpeft.privacy.secagg.crypto import KEY_BYTES, NONCE_BYTES

__all__ = [
    "ADVERTISE",
    "CIPHERTEXT_BYTES",
    "KEYS",
    "MASK_SEED",
    "PLAINTEXT",
    "SELF_SEED",
    "SHARE_ENTRY",
    "TO_CLIENT",
    "UNMASK_ENTRY",
    "pack_entries",
    "pack_ids",
    "unpack_entries",
    "unpack_ids",
]

#: share kinds in an unmask reply
SELF_SEED = 0
MASK_SEED = 1

ADVERTISE = struct.Struct(f"<{KEY_BYTES}s{KEY_BYTES}s32s")
KEYS = struct.Struct(f"<Q{KEY_BYTES}s{KEY_BYTES}s")
PLAINTEXT = struct.Struct("<QQQH16s16s")
CIPHERTEXT_BYTES = NONCE_BYTES + PLAINTEXT.size + 16  # nonce, body, GCM tag
SHARE_ENTRY = struct.Struct(f"<Q{CIPHERTEXT_BYTES}s")  # recipient (share) / sender (mask)
TO_CLIENT = SHARE_ENTRY
UNMASK_ENTRY = struct.Struct("<QB16s")
_COUNT = struct.Struct("<I")
_ID = struct.Struct("<Q")


def pack_entries(layout: struct.Struct, entries: Iterable[tuple[object, ...]]) -> bytes:
    """A u32 count and the entries packed with ``layout``."""
    rows = [layout.pack(*entry) for entry in entries]
    return _COUNT.pack(len(rows)) + b"".join(rows)


def unpack_entries(
    layout: struct.Struct, body: bytes | memoryview, what: str
) -> list[tuple[Any, ...]]:
    """Inverse of :func:`pack_entries`; the body must be exactly count × entry bytes."""
    body = memoryview(body)
    if len(body) < _COUNT.size:
        raise CodecError(f"{what}: truncated list")
    (count,) = _COUNT.unpack_from(body)
    if len(body) != _COUNT.size + count * layout.size:
        raise CodecError(
            f"{what}: {count} entries of {layout.size} bytes do not fill {len(body)} bytes"
        )
    return [layout.unpack_from(body, _COUNT.size + i * layout.size) for i in range(count)]


def pack_ids(*lists: Sequence[int]) -> bytes:
    """Several id lists, each a u32 count and u64 ids."""
    out = bytearray()
    for ids in lists:
        out += _COUNT.pack(len(ids))
        out += b"".join(_ID.pack(i) for i in ids)
    return bytes(out)


def unpack_ids(body: bytes | memoryview, num_lists: int, what: str) -> list[list[int]]:
    """Inverse of :func:`pack_ids`; trailing or missing bytes raise :class:`CodecError`."""
    view = memoryview(body)
    pos = 0
    out: list[list[int]] = []
    for _ in range(num_lists):
        if len(view) - pos < _COUNT.size:
            raise CodecError(f"{what}: truncated id list")
        (count,) = _COUNT.unpack_from(view, pos)
        pos += _COUNT.size
        if len(view) - pos < count * _ID.size:
            raise CodecError(f"{what}: id list of {count} entries is truncated")
        out.append([_ID.unpack_from(view, pos + i * _ID.size)[0] for i in range(count)])
        pos += count * _ID.size
    if pos != len(view):
        raise CodecError(f"{what}: {len(view) - pos} trailing bytes")
    return out
