"""Vectorised Golomb–Rice coding of the gaps between sorted positions.

A sparse update is a sorted list of kept positions ``p_0 < p_1 < ... < p_{m-1}``
inside ``[0, n)``. Its *gaps* are the number of skipped coordinates before each
kept one: ``g_0 = p_0`` and ``g_i = p_i - p_{i-1} - 1``. When the kept set looks
like a Bernoulli(k) sample, the gaps are geometric and a Rice code with
parameter ``b`` (Golomb code with modulus ``2**b``) is within a few hundredths
of a bit of their entropy:

* quotient ``g >> b`` in unary: that many ``0`` bits then a terminating ``1``;
* remainder ``g & (2**b - 1)`` in exactly ``b`` bits, most significant first.

Unlike textbook Rice coding we do not interleave the two parts: all remainders
go into one fixed-width block and all unary quotients into another. Each block
is then built (``np.repeat``-free: one scatter of terminator bits, one
``np.packbits``) and parsed (``np.unpackbits`` + ``np.flatnonzero``) with a
handful of whole-array numpy calls, so no Python loop ever runs per element;
the only loops run over the ``b`` bit planes of the remainders.

Decoding validates everything against the caller's limits and raises
:class:`fedpeft.errors.CodecError`, so forged input can neither allocate
without bound nor yield positions outside ``[0, n)``.
"""

from __future__ import annotations

import math

import numpy as np

from fedpeft.errors import CodecError

__all__ = [
    "MAX_RICE_PARAMETER",
    "decode_gaps",
    "encode_gaps",
    "gaps_to_positions",
    "positions_to_gaps",
    "rice_bits",
    "rice_parameter",
    "rice_parameter_for_density",
]

#: Largest Rice parameter written or accepted (gaps are below ``2**62``).
MAX_RICE_PARAMETER = 62


def positions_to_gaps(positions: np.ndarray) -> np.ndarray:
    """Gaps (int64, all ``>= 0``) of strictly increasing non-negative positions."""
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    gaps = np.diff(pos, prepend=np.int64(-1)) - 1
    return gaps


def gaps_to_positions(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`positions_to_gaps`."""
    g = np.asarray(gaps, dtype=np.int64)
    return np.cumsum(g + 1) - 1


def rice_parameter_for_density(p: float) -> int:
    """Rice parameter for Bernoulli(p) positions: ``max(0, round(log2(ln2·(1−p)/p)))``.

    This is the textbook rule for geometric gaps with mean ``(1 − p) / p``; the
    encoder refines it with :func:`rice_parameter` on the actual gaps.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    if p >= 0.5:
        return 0
    return max(0, round(math.log2(math.log(2.0) * (1.0 - p) / p)))


def rice_bits(gaps: np.ndarray, b: int) -> int:
    """Exact number of bits of the Rice code of ``gaps`` with parameter ``b`` (no padding)."""
    g = np.asarray(gaps, dtype=np.int64)
    return int(g.size) * (b + 1) + int(np.sum(g >> b))


def rice_parameter(gaps: np.ndarray) -> int:
    """The Rice parameter minimising :func:`rice_bits` for these gaps.

    Starts from the estimate ``round(log2(ln2 · (mean + 1)))`` and evaluates its
    neighbours exactly (three O(m) passes); ties go to the smaller parameter.
    """
    g = np.asarray(gaps, dtype=np.int64)
    if g.size == 0:
        return 0
    mean = float(np.mean(g))
    guess = round(math.log2(math.log(2.0) * (mean + 1.0))) if mean > 0 else 0
    limit = min(MAX_RICE_PARAMETER, max(1, int(g.max()).bit_length()))
    candidates = sorted({min(max(b, 0), limit) for b in (guess - 1, guess, guess + 1)})
    costs = [(rice_bits(g, b), b) for b in candidates]
    return min(costs)[1]


def encode_gaps(gaps: np.ndarray, b: int) -> tuple[bytes, bytes]:
    """Rice-code ``gaps`` with parameter ``b``.

    Returns ``(remainders, unary)``: ``remainders`` holds ``len(gaps) * b`` bits
    (padded with zeros to whole bytes), ``unary`` the quotients, each written as
    that many ``0`` bits followed by a ``1`` (padded with zeros to whole bytes).
    """
    g = np.asarray(gaps, dtype=np.int64)
    if not 0 <= b <= MAX_RICE_PARAMETER:
        raise ValueError(f"Rice parameter must be in [0, {MAX_RICE_PARAMETER}], got {b}")
    if g.size == 0:
        return b"", b""
    # Remainders: one (m, b) bit matrix, most significant bit first.
    if b > 0:
        shifts = np.arange(b - 1, -1, -1, dtype=np.int64)
        rem_bits = ((g[:, None] >> shifts) & 1).astype(np.uint8)
        remainders = np.packbits(rem_bits.ravel()).tobytes()
    else:
        remainders = b""
    # Unary quotients: terminator of gap i sits at bit sum_{j<=i}(q_j + 1) - 1.
    q = g >> b
    terminators = np.cumsum(q + 1) - 1
    unary_bits = np.zeros(int(terminators[-1]) + 1, dtype=np.uint8)
    unary_bits[terminators] = 1
    unary = np.packbits(unary_bits).tobytes()
    return remainders, unary


def decode_gaps(
    remainders: bytes | memoryview,
    unary: bytes | memoryview,
    count: int,
    b: int,
    max_position: int,
) -> np.ndarray:
    """Decode ``count`` Rice-coded gaps; the positions they imply must lie in ``[0, max_position)``.

    Raises :class:`CodecError` when the blocks have the wrong length, hold the
    wrong number of terminators, are not in canonical form (non-zero padding) or
    describe a position at or beyond ``max_position``.
    """
    if not 0 <= b <= MAX_RICE_PARAMETER:
        raise CodecError(f"Rice parameter {b} out of range [0, {MAX_RICE_PARAMETER}]")
    if count < 0 or count > max_position:
        raise CodecError(f"{count} kept positions cannot fit in {max_position} coordinates")
    rem_len = (count * b + 7) // 8
    if len(remainders) != rem_len:
        raise CodecError(
            f"remainder block has {len(remainders)} bytes, expected {rem_len} for "
            f"{count} gaps of {b} bits"
        )
    if count == 0:
        if len(unary):
            raise CodecError("unary block must be empty when no position is kept")
        return np.zeros(0, dtype=np.int64)
    # Quotients: the number of 0 bits before each 1 bit.
    unary_bits = np.unpackbits(np.frombuffer(unary, dtype=np.uint8))
    terminators = np.flatnonzero(unary_bits)
    if terminators.size != count:
        raise CodecError(f"unary block holds {terminators.size} terminators, expected {count}")
    if len(unary) != int(terminators[-1]) // 8 + 1:
        raise CodecError("unary block has trailing bytes after its last terminator")
    q = np.diff(terminators, prepend=np.int64(-1)).astype(np.int64) - 1
    # Remainders, one bit plane at a time (b is small; the loop is not per element).
    r = np.zeros(count, dtype=np.int64)
    if b > 0:
        rem_bits = np.unpackbits(np.frombuffer(remainders, dtype=np.uint8))
        if rem_bits[count * b :].any():
            raise CodecError("remainder block has non-zero padding bits")
        planes = rem_bits[: count * b].reshape(count, b)
        for j in range(b):
            r = (r << 1) | planes[:, j]
    # Bound the last position in Python integers before any int64 arithmetic can
    # overflow: it equals (sum q) * 2**b + sum r + count - 1.
    last = (int(q.sum()) << b) + int(r.sum()) + count - 1
    if last >= max_position:
        raise CodecError(
            f"kept positions run to {last}, beyond the {max_position} coordinates declared"
        )
    return (q << b) | r
