"""Integers for secure aggregation: quantisation, the field Z_(2^b) and bit packing.

Masked arithmetic is mod ``2**bits`` on numpy ``uint64`` arrays. A signed integer ``v``
is represented by ``v mod 2**bits``; after summation :func:`from_field` maps the result
back to the centred range ``[-2**(bits-1), 2**(bits-1))``, so a sum is exact as long as
it stays inside that range (:func:`sum_bits` gives the smallest such ``bits``).

On the wire a vector of ``m`` field elements takes exactly ``ceil(m * bits / 8)`` bytes
(:func:`pack`): element ``i`` occupies bits ``i*bits .. (i+1)*bits - 1`` of the byte
string read as one little-endian integer; padding bits of the last byte are zero and
:func:`unpack` refuses anything else. Both are vectorised (no per-coordinate Python).
"""

from __future__ import annotations

import math

import numpy as np

from fedpeft.errors import CodecError, ConfigError

__all__ = [
    "MAX_BITS",
    "dequantize",
    "from_field",
    "pack",
    "packed_nbytes",
    "quantize",
    "sum_bits",
    "to_field",
    "unpack",
]

#: Largest field size: 62 bits leaves two bits of uint64 headroom (sums of masks are
#: accumulated with wrap-around mod 2**64 and reduced once, which is exact for any
#: bits <= 64; 62 keeps centred values comfortably inside int64).
MAX_BITS = 62
#: Elements packed per chunk by the generic bit path (bounds its temporary memory to
#: 64 bytes per element of a chunk).
_CHUNK = 1 << 18


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError("secagg.bits", f"must be an integer in [1, {MAX_BITS}], got {bits!r}")


def sum_bits(num_clients: int, max_abs: int) -> int:
    """Smallest ``b`` such that a sum of ``num_clients`` integers in ``[-max_abs, max_abs]``
    never wraps mod ``2**b`` in the centred representation.

    The sum lies in ``[-n*A, n*A]``; centred values cover ``[-2**(b-1), 2**(b-1) - 1]``,
    so ``n*A <= 2**(b-1) - 1``, i.e. ``b = bit_length(n*A) + 1``.
    """
    if num_clients < 1:
        raise ConfigError("secagg.clients", f"must be at least 1, got {num_clients}")
    if max_abs < 0:
        raise ConfigError("secagg.max_abs", f"must be non-negative, got {max_abs}")
    return (int(num_clients) * int(max_abs)).bit_length() + 1


def quantize(
    values: np.ndarray, *, clip: float, levels: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Clip each coordinate to ``[-clip, clip]`` and round it stochastically onto the grid
    of step ``clip / levels``.

    Returns int64 values in ``[-levels, levels]`` and the fraction of coordinates that were
    clipped. Inside the clip the rounding is unbiased: ``E[q] * clip / levels == x``.
    """
    if not clip > 0 or not math.isfinite(clip):
        raise ConfigError("secagg.clip", f"must be a positive finite number, got {clip!r}")
    if levels < 1:
        raise ConfigError("secagg.levels", f"must be at least 1, got {levels}")
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("cannot quantise NaN or Inf")
    clipped = float(np.count_nonzero(np.abs(x) > clip)) / x.size if x.size else 0.0
    scaled = np.clip(x, -clip, clip) * (levels / clip)
    low = np.floor(scaled)
    ints = low + (rng.random(x.size) < (scaled - low))
    # floating error at the edge cannot leave the grid
    return np.clip(ints, -levels, levels).astype(np.int64), clipped


def dequantize(ints: np.ndarray, *, clip: float, levels: int) -> np.ndarray:
    """Grid integers (or a sum of them) back to float64 values: ``ints * clip / levels``."""
    if levels < 1:
        raise ConfigError("secagg.levels", f"must be at least 1, got {levels}")
    return np.asarray(ints, dtype=np.float64) * (clip / levels)


def to_field(ints: np.ndarray, bits: int) -> np.ndarray:
    """Signed int64 values to uint64 residues mod ``2**bits`` (two's complement wraps)."""
    _check_bits(bits)
    mask = np.uint64((1 << bits) - 1)
    return np.asarray(ints, dtype=np.int64).astype(np.uint64) & mask


def from_field(values: np.ndarray, bits: int) -> np.ndarray:
    """uint64 residues mod ``2**bits`` to centred int64 in ``[-2**(bits-1), 2**(bits-1))``."""
    _check_bits(bits)
    v = np.asarray(values, dtype=np.uint64) & np.uint64((1 << bits) - 1)
    signed = v.astype(np.int64)
    return np.where(v >= np.uint64(1 << (bits - 1)), signed - (1 << bits), signed)


def packed_nbytes(length: int, bits: int) -> int:
    """Bytes of :func:`pack` output: ``ceil(length * bits / 8)``."""
    return (length * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    """Pack field elements (each ``< 2**bits``) into exactly ``ceil(m*bits/8)`` bytes."""
    _check_bits(bits)
    v = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    if v.size and int(v.max()) >> bits:
        raise ValueError(f"values must be below 2**{bits} to be packed in {bits} bits")
    le = v.astype("<u8", copy=False)
    if bits % 8 == 0:  # whole bytes: keep the low bits/8 bytes of every little-endian word
        return le.view(np.uint8).reshape(-1, 8)[:, : bits // 8].tobytes()
    out = bytearray()
    carry = np.zeros(0, dtype=np.uint8)  # bits left over from the previous chunk
    for start in range(0, v.size, _CHUNK):
        chunk = le[start : start + _CHUNK]
        bitmat = np.unpackbits(chunk.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        stream = np.concatenate([carry, bitmat[:, :bits].ravel()])
        whole = stream.size - stream.size % 8
        out += np.packbits(stream[:whole], bitorder="little").tobytes()
        carry = stream[whole:]
    if carry.size:
        out += np.packbits(carry, bitorder="little").tobytes()
    return bytes(out)


def unpack(data: bytes | memoryview, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``length`` uint64 values; wrong size or non-zero padding
    raises :class:`fedpeft.errors.CodecError`."""
    _check_bits(bits)
    expected = packed_nbytes(length, bits)
    if len(data) != expected:
        raise CodecError(
            f"packed vector is {len(data)} bytes; {length} values of {bits} bits need {expected}"
        )
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits % 8 == 0:
        width = bits // 8
        words = np.zeros((length, 8), dtype=np.uint8)
        words[:, :width] = raw.reshape(length, width)
        return words.view("<u8").ravel().astype(np.uint64)
    pad = expected * 8 - length * bits
    if pad and int(raw[-1]) >> (8 - pad):
        raise CodecError("packed vector has non-zero padding bits")
    out = np.empty(length, dtype=np.uint64)
    # chunks of _CHUNK values start on byte boundaries when _CHUNK*bits is a multiple of 8
    for start in range(0, length, _CHUNK):
        count = min(_CHUNK, length - start)
        first_bit = start * bits
        lo_byte = first_bit // 8
        hi_byte = (first_bit + count * bits + 7) // 8
        stream = np.unpackbits(raw[lo_byte:hi_byte], bitorder="little")
        offset = first_bit - lo_byte * 8
        bitmat = np.zeros((count, 64), dtype=np.uint8)
        bitmat[:, :bits] = stream[offset : offset + count * bits].reshape(count, bits)
        words = np.packbits(bitmat, axis=1, bitorder="little")
        out[start : start + count] = words.view("<u8").ravel()
    return out
