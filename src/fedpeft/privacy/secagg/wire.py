"""The SecAgg+ wire frame: every protocol message is one checksummed binary frame.

Layout (integers little-endian), in the house style of
:mod:`fedpeft.compression.base`::

    magic      4 bytes  b"FPSA"
    version    u8       FORMAT_VERSION (1)
    stage      u8       Stage (PARAMS, ADVERTISE, SHARE, MASK, UNMASK)
    round      u64
    sender     u64      a client id, or SERVER (2**64 - 1)
    recipient  u64      a client id, or SERVER
    length     u64      total length of the frame in bytes, checksum included
    body       stage-specific (see client.py / server.py)
    crc32      u32      zlib.crc32 of every byte before it

:func:`decode_frame` checks magic, version, length, checksum and stage, in that order;
every failure is a :class:`fedpeft.errors.CodecError`. Who may send which stage to whom,
and for which round, is checked by the protocol state machines, not here.
"""

from __future__ import annotations

import enum
import struct
import zlib
from dataclasses import dataclass

from fedpeft.errors import CodecError

__all__ = ["FORMAT_VERSION", "MAGIC", "SERVER", "Frame", "Stage", "decode_frame", "encode_frame"]

MAGIC = b"FPSA"
FORMAT_VERSION = 1
#: The sender / recipient id of the coordinator.
SERVER = 2**64 - 1

_HEADER = struct.Struct("<4sBBQQQQ")
_CRC = struct.Struct("<I")
OVERHEAD = _HEADER.size + _CRC.size


class Stage(enum.IntEnum):
    """Protocol stages as they appear on the wire."""

    PARAMS = 0
    ADVERTISE = 1
    SHARE = 2
    MASK = 3
    UNMASK = 4


@dataclass(frozen=True)
class Frame:
    """A checksum-verified message whose body has not been parsed yet."""

    stage: Stage
    round: int
    sender: int
    recipient: int
    body: memoryview


def encode_frame(stage: Stage, round_num: int, sender: int, recipient: int, body: bytes) -> bytes:
    """Frame ``body`` (see the module docstring)."""
    total = OVERHEAD + len(body)
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, int(stage), round_num, sender, recipient, total)
    msg = head + body
    return msg + _CRC.pack(zlib.crc32(msg))


def decode_frame(data: bytes | memoryview) -> Frame:
    """Parse and verify a frame; any malformed byte raises :class:`CodecError`."""
    view = memoryview(data)
    if len(view) < OVERHEAD:
        raise CodecError(f"secure-aggregation frame of {len(view)} bytes is truncated")
    magic, version, stage, round_num, sender, recipient, total = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CodecError("not a secure-aggregation frame (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"secure-aggregation frame version {version}, expected {FORMAT_VERSION}")
    if total != len(view):
        raise CodecError(f"secure-aggregation frame declares {total} bytes, has {len(view)}")
    (crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[: -_CRC.size]) != crc:
        raise CodecError("secure-aggregation frame checksum mismatch")
    try:
        kind = Stage(stage)
    except ValueError:
        raise CodecError(f"unknown secure-aggregation stage {stage}") from None
    return Frame(kind, round_num, sender, recipient, view[_HEADER.size : -_CRC.size])
