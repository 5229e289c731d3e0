"""ComPEFT: top-k sparsification + ternary signs + one scale, as real bytes.

ComPEFT (Yadav et al. 2023, arXiv:2311.13171) compresses a task vector τ by
keeping the fraction ``density`` (k) of its entries with the largest ``|τ|``
and replacing each kept value by ``sign(τ)·γ``. The decoded tensor therefore
takes at most three values, ``{−γ, 0, +γ}``.

Selection (identical in :meth:`CompeftCodec.encode` and :meth:`reconstruct`):

* ``scope=PER_TENSOR`` keeps ``kept_count(n, k)`` entries of every tensor of
  ``n`` entries and gives each tensor its own γ; ``scope=GLOBAL`` keeps
  ``kept_count(N, k)`` entries of the concatenation of all tensors (``N``
  entries in total, C order, tensors in mapping order) with one shared γ.
* ``kept_count(n, k) = ceil(k·n)`` (at least 1 for a non-empty tensor), where
  ``k·n`` is first lowered by a relative 1e-12 so that floating-point noise
  cannot add an entry (``0.1 × 30`` keeps 3 entries, not 4).
* Order is ``|τ|`` descending; ties are broken by position, lower index first
  (what a stable sort on ``−|τ|`` gives).
* **Zeros are never kept.** If fewer than ``kept_count`` entries are nonzero,
  all nonzero entries are kept, so the decoded nonzero count is exactly
  ``min(kept_count(n, k), nnz(τ))``. (A zero has no sign to transmit and keeping
  it would only cost bits.)
* γ (float32): ``ScaleRule.MEAN_ABS`` (default) uses ``mean |τ_kept|``, the
  least-squares optimal scale for fixed kept positions and signs; it needs no
  tuning. ``ScaleRule.ALPHA_STD`` uses the paper's ``alpha · std(τ)``
  (population std over all entries of the tensor, or of all tensors for
  ``GLOBAL``). ``ScaleRule.NORM`` uses ``‖τ‖ / √m`` (m kept entries), so the decoded
  update keeps the L2 norm of the original: the least-squares γ shrinks the update along
  its own direction by the fraction of energy kept (⟨τ̂, τ⟩ = ‖τ̂‖² = e‖τ‖², e ≈ 0.15–0.35
  for k = 0.1 on real LoRA updates from Adam clients, whose magnitudes are nearly flat),
  which slows a federation the way a smaller server step does; NORM rescales by 1/√e
  with no tuning (≥ the mean-|τ_kept| γ by Cauchy–Schwarz). A tensor with no kept entry
  gets γ = 0.

Top-k runs in O(n): ``np.partition`` (the value-only sibling of
``np.argpartition``) finds the k-th largest ``|τ|``; entries strictly above it
are kept and ties *at* the threshold are filled lowest index first.

Body layout (after the shared frame of :mod:`fedpeft.compression.base`)::

    u8        flags: bit 0 = scope (0 per-tensor, 1 global), bits 1-2 = scale rule,
              bit 3 = a dense section follows
    float32   γ per tensor (per-tensor scope) or one γ (global scope)
    varint    m, the number of kept entries over all tensors
    u8        b, the Rice parameter
    varint    length of the unary block in bytes
    bytes     Rice remainders, m·b bits (see :mod:`fedpeft.compression.golomb`)
    bytes     Rice unary quotients
    bytes     m sign bits, 1 = negative (``np.packbits``)
    [dense section, only with flag bit 3:
    varint    d, the number of tensors sent exactly
    varint    d tensor indices, strictly increasing
    float32   their values, in that order]

Small tensors (``dense_below``): a tensor with fewer entries than ``dense_below`` skips
top-k and is sent as exact float32 (γ = 0 in its scale slot; in global scope it takes no
part in top-k or γ). A few hundred floats of classifier head cost little next to the
positions of a large update, and a 2-entry bias kept at k = 0.1 would otherwise be
halved to one ternary entry. With the default 0 nothing is sent dense.

Positions are coded as gaps in the concatenation of all tensors with one Rice
parameter (optimal for the actual gaps, stored as ``b``), so hundreds of small
LoRA tensors cost no per-tensor padding or parameters beyond their γ. When
every entry is kept (``m`` equals the total size) the positions are implicit:
``b = 0`` and both Rice blocks are empty. Rice codes suit the sparse regime
this codec is for; for ``density`` above ~0.5 positions cost about one bit per
coordinate, more than their entropy.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedpeft.compression.base import Codec, WireReader, read_frame, register_codec, write_varint
from fedpeft.compression.golomb import (
    MAX_RICE_PARAMETER,
    decode_gaps,
    encode_gaps,
    gaps_to_positions,
    positions_to_gaps,
    rice_parameter,
)
from fedpeft.errors import CodecError, ConfigError

__all__ = [
    "CompeftCodec",
    "CompeftConfig",
    "ScaleRule",
    "Scope",
    "binary_entropy",
    "kept_count",
    "top_nonzero",
    "wire_breakdown",
    "wire_size_bits_floor",
]


class Scope(enum.Enum):
    """Where top-k and the scale are computed."""

    PER_TENSOR = "per_tensor"
    GLOBAL = "global"


class ScaleRule(enum.Enum):
    """How the magnitude γ of the kept entries is chosen."""

    MEAN_ABS = "mean_abs"
    ALPHA_STD = "alpha_std"
    NORM = "norm"


_SCOPE_BITS = {Scope.PER_TENSOR: 0, Scope.GLOBAL: 1}
_SCALE_BITS = {ScaleRule.MEAN_ABS: 0, ScaleRule.ALPHA_STD: 1, ScaleRule.NORM: 2}
_DENSE_FLAG = 0b1000  # a dense section follows the sign bits


def _coerce_enum(enum_cls: type[enum.Enum], value: Any, field_name: str) -> Any:
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        if isinstance(value, str) and value.upper() in enum_cls.__members__:
            return enum_cls[value.upper()]  # the member name, e.g. "GLOBAL"
        known = ", ".join(repr(m.value) for m in enum_cls)
        raise ConfigError(field_name, f"must be one of {known}, got {value!r}") from None


@dataclass(frozen=True)
class CompeftConfig:
    """Options of the ComPEFT codec (strings are accepted for the enums, e.g. from TOML)."""

    density: float = field(
        default=0.1,
        metadata={"help": "fraction k in (0, 1] of entries kept (0.1 keeps 10%)"},
    )
    scope: Scope = field(
        default=Scope.PER_TENSOR,
        metadata={"help": "per_tensor: top-k and γ per tensor; global: over all tensors"},
    )
    scale: ScaleRule = field(
        default=ScaleRule.MEAN_ABS,
        metadata={
            "help": "mean_abs: γ = mean|τ_kept| (L2-optimal); norm: γ = ‖τ‖/√m (keeps the "
            "norm); alpha_std: γ = α·std(τ)"
        },
    )
    alpha: float = field(
        default=1.0, metadata={"help": "α of the alpha_std scale rule (ignored otherwise)"}
    )
    dense_below: int = field(
        default=0,
        metadata={"help": "tensors with fewer entries are sent as exact float32 (0 = none)"},
    )

    def __post_init__(self) -> None:
        density = self.density
        if isinstance(density, bool) or not isinstance(density, (int, float, np.floating)):
            raise ConfigError("density", f"must be a number in (0, 1], got {density!r}")
        density = float(density)
        if not 0.0 < density <= 1.0:  # also rejects NaN
            hint = f"; for {density:g}% use {density / 100:g}" if 1.0 < density <= 100.0 else ""
            raise ConfigError(
                "density", f"must be a fraction in (0, 1], got {self.density!r}{hint}"
            )
        object.__setattr__(self, "density", density)
        object.__setattr__(self, "scope", _coerce_enum(Scope, self.scope, "scope"))
        object.__setattr__(self, "scale", _coerce_enum(ScaleRule, self.scale, "scale"))
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
            raise ConfigError("alpha", f"must be a positive number, got {alpha!r}")
        if not (math.isfinite(float(alpha)) and float(alpha) > 0.0):
            raise ConfigError("alpha", f"must be finite and > 0, got {alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))
        dense_below = self.dense_below
        integer = isinstance(dense_below, (int, np.integer)) and not isinstance(dense_below, bool)
        if not integer or dense_below < 0:
            raise ConfigError("dense_below", f"must be an integer >= 0, got {dense_below!r}")
        object.__setattr__(self, "dense_below", int(dense_below))


def kept_count(n: int, density: float) -> int:
    """``ceil(k·n)`` entries kept out of ``n`` (at least one when ``n > 0``).

    ``k·n`` is lowered by a relative 1e-12 before the ceiling, so floating-point
    noise cannot add an entry: ``0.1 * 30 == 3.0000000000000004`` keeps 3, not 4.
    """
    if n <= 0:
        return 0
    product = density * n
    return min(n, max(1, math.ceil(product - product * 1e-12)))


def binary_entropy(k: float) -> float:
    """H(k) in bits."""
    if k <= 0.0 or k >= 1.0:
        return 0.0
    return -k * math.log2(k) - (1.0 - k) * math.log2(1.0 - k)


def wire_size_bits_floor(n: int, k: float) -> float:
    """Entropy floor of a k-sparse sign vector of length ``n``: ``n·(H(k) + k)`` bits.

    ``H(k)`` per coordinate for the positions (a Bernoulli(k) support) and one
    bit per kept entry for its sign; scales and headers are extra.
    """
    return n * (binary_entropy(k) + k)


def top_nonzero(magnitudes: np.ndarray, m: int) -> np.ndarray:
    """Sorted indices of the ``m`` largest nonzero ``magnitudes`` (ties: lower index wins).

    Returns fewer than ``m`` indices when fewer than ``m`` entries are nonzero.
    O(n): one partition, two comparisons; no full sort.
    """
    a = magnitudes.ravel()
    n = a.size
    if m <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    if m >= n:
        return np.flatnonzero(a > 0)
    threshold = np.partition(a, n - m)[n - m]
    if threshold == 0:
        return np.flatnonzero(a > 0)  # fewer than m nonzero entries: keep them all
    keep = a > threshold
    missing = m - int(np.count_nonzero(keep))
    if missing > 0:
        keep[np.flatnonzero(a == threshold)[:missing]] = True
    return np.flatnonzero(keep)


@dataclass(frozen=True)
class _Selection:
    """What ComPEFT transmits: kept positions (in the concatenation), signs, scales."""

    positions: np.ndarray  # int64, strictly increasing
    negative: np.ndarray  # bool, one per position
    gammas: np.ndarray  # float32, one per tensor (per-tensor scope) or one (global)


@dataclass(frozen=True)
class _Sections:
    """A compeft body cut into its parts (still bytes)."""

    flags: int
    gammas: np.ndarray
    kept: int
    rice_parameter: int
    remainders: memoryview
    unary: memoryview
    signs: memoryview


def _materialize(selection: _Selection, sizes: list[int]) -> np.ndarray:
    """The flat float32 vector a selection decodes to (shared by decode and reconstruct)."""
    out = np.zeros(sum(sizes), dtype=np.float32)
    pos = selection.positions
    if pos.size == 0:
        return out
    gammas = selection.gammas
    if gammas.size == 1:
        per_entry = np.full(pos.size, gammas[0], dtype=np.float32)
    else:
        ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
        per_entry = gammas[np.searchsorted(ends, pos, side="right")]
    values = np.where(selection.negative, -per_entry, per_entry)
    # + 0.0 turns -0.0 (γ = 0 with a negative sign) into +0.0, nothing else changes.
    out[pos] = values + np.float32(0.0)
    return out


@register_codec("compeft", CompeftConfig)
class CompeftCodec(Codec):
    """Top-k + sign + scale, with Golomb–Rice coded positions. See the module docstring."""

    wire_id: ClassVar[int] = 2
    compresses: ClassVar[bool] = True

    def __init__(self, config: CompeftConfig | None = None) -> None:
        self.config = config if config is not None else CompeftConfig()

    # -- selection -----------------------------------------------------------

    def _scale(self, flat: np.ndarray, magnitudes: np.ndarray, kept: np.ndarray) -> float:
        if kept.size == 0:
            return 0.0
        if self.config.scale is ScaleRule.MEAN_ABS:
            gamma = float(np.mean(magnitudes[kept], dtype=np.float64))
        elif self.config.scale is ScaleRule.NORM:
            gamma = math.sqrt(float(np.sum(np.square(magnitudes, dtype=np.float64))) / kept.size)
        else:
            gamma = self.config.alpha * float(np.std(flat, dtype=np.float64))
        with np.errstate(over="ignore"):
            gamma32 = np.float32(gamma)
        if not np.isfinite(gamma32):
            raise CodecError(f"scale γ = {gamma!r} ({self.config.scale.value}) overflows float32")
        return float(gamma32)

    def _dense_indices(self, arrays: list[np.ndarray]) -> list[int]:
        """Tensors sent exactly (fewer than ``dense_below`` entries, and not empty)."""
        limit = self.config.dense_below
        return [t for t, a in enumerate(arrays) if 0 < a.size < limit]

    def _select(self, arrays: list[np.ndarray], dense: list[int]) -> _Selection:
        k = self.config.density
        if self.config.scope is Scope.GLOBAL:
            sparse = [a.ravel() for t, a in enumerate(arrays) if t not in dense]
            flat = np.concatenate(sparse) if sparse else np.zeros(0, dtype=np.float32)
            magnitudes = np.abs(flat)
            kept = top_nonzero(magnitudes, kept_count(flat.size, k))
            gammas = np.array([self._scale(flat, magnitudes, kept)], dtype=np.float32)
            negative = flat[kept] < 0
            if dense:  # positions count in the concatenation of *all* tensors
                in_sparse = np.ones(sum(a.size for a in arrays), dtype=bool)
                for start, end in _bounds([a.size for a in arrays], dense):
                    in_sparse[start:end] = False
                kept = np.flatnonzero(in_sparse)[kept]
            return _Selection(kept, negative, gammas)
        positions: list[np.ndarray] = []
        negative_parts: list[np.ndarray] = []
        gammas = np.zeros(len(arrays), dtype=np.float32)
        offset = 0
        for t, array in enumerate(arrays):  # one iteration per tensor, not per entry
            if t in dense:  # sent exactly; γ stays 0
                offset += array.size
                continue
            flat = array.ravel()
            magnitudes = np.abs(flat)
            kept = top_nonzero(magnitudes, kept_count(flat.size, k))
            gammas[t] = self._scale(flat, magnitudes, kept)
            positions.append(kept + offset)
            negative_parts.append(flat[kept] < 0)
            offset += flat.size
        if not positions:
            return _Selection(np.zeros(0, np.int64), np.zeros(0, bool), gammas)
        return _Selection(np.concatenate(positions), np.concatenate(negative_parts), gammas)

    # -- codec hooks ---------------------------------------------------------

    def _encode_body(self, arrays: list[np.ndarray]) -> bytes:
        dense = self._dense_indices(arrays)
        selection = self._select(arrays, dense)
        if selection.positions.size == sum(a.size for a in arrays):
            b, remainders, unary = 0, b"", b""  # every entry kept: positions are implicit
        else:
            gaps = positions_to_gaps(selection.positions)
            b = rice_parameter(gaps)
            remainders, unary = encode_gaps(gaps, b)
        out = bytearray()
        flags = _SCOPE_BITS[self.config.scope] | (_SCALE_BITS[self.config.scale] << 1)
        out.append(flags | (_DENSE_FLAG if dense else 0))
        out += selection.gammas.astype("<f4").tobytes()
        write_varint(out, int(selection.positions.size))
        out.append(b)
        write_varint(out, len(unary))
        out += remainders
        out += unary
        out += np.packbits(selection.negative).tobytes()
        if dense:
            write_varint(out, len(dense))
            for t in dense:
                write_varint(out, t)
            for t in dense:
                out += arrays[t].astype("<f4").tobytes()
        return bytes(out)

    def _reconstruct_flat(self, arrays: list[np.ndarray]) -> np.ndarray:
        dense = self._dense_indices(arrays)
        sizes = [a.size for a in arrays]
        flat = _materialize(self._select(arrays, dense), sizes)
        for t, (start, end) in zip(dense, _bounds(sizes, dense), strict=True):
            flat[start:end] = arrays[t].ravel()
        return flat

    def _decode_body(self, reader: WireReader, sizes: list[int]) -> np.ndarray:
        sections = _read_sections(reader, sizes)
        n = sum(sizes)
        if sections.kept == n:
            if sections.rice_parameter or len(sections.unary):
                raise CodecError("positions must be implicit when every entry is kept")
            gaps = np.zeros(n, dtype=np.int64)
        else:
            gaps = decode_gaps(
                sections.remainders, sections.unary, sections.kept, sections.rice_parameter, n
            )
        negative = np.unpackbits(np.frombuffer(sections.signs, dtype=np.uint8))
        if negative[sections.kept :].any():
            raise CodecError("sign block has non-zero padding bits")
        selection = _Selection(
            gaps_to_positions(gaps), negative[: sections.kept].astype(bool), sections.gammas
        )
        flat = _materialize(selection, sizes)
        if sections.flags & _DENSE_FLAG:
            dense = _read_dense_indices(reader, len(sizes))
            for t, (start, end) in zip(dense, _bounds(sizes, dense), strict=True):
                if flat[start:end].any():
                    raise CodecError(f"tensor {t} is sent dense but also has kept entries")
                flat[start:end] = reader.float32_array(end - start, f"dense tensor {t}")
        return flat


def _bounds(sizes: list[int], tensors: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of each of ``tensors`` in the concatenation of tensors of ``sizes``."""
    offsets = np.cumsum([0, *sizes])
    return [(int(offsets[t]), int(offsets[t + 1])) for t in tensors]


def _read_dense_indices(reader: WireReader, n_tensors: int) -> list[int]:
    """The indices of the tensors sent exactly: strictly increasing, each < ``n_tensors``."""
    count = reader.varint("dense tensor count", n_tensors)
    if count == 0:
        raise CodecError("the dense flag is set but no tensor is sent dense")
    indices = [reader.varint("dense tensor index", n_tensors - 1) for _ in range(count)]
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise CodecError("dense tensor indices must be strictly increasing")
    return indices


def _read_sections(reader: WireReader, sizes: list[int]) -> _Sections:
    flags = reader.u8("flags")
    if flags & ~0b1111 or ((flags >> 1) & 0b11) > 2:
        raise CodecError(f"unknown compeft flags {flags:#04x}")
    n_scales = 1 if flags & 1 else len(sizes)
    gammas = reader.float32_array(n_scales, "scales")
    if not (np.isfinite(gammas).all() and (gammas >= 0).all()):
        raise CodecError("scales must be finite and non-negative")
    kept = reader.varint("kept count", sum(sizes))
    b = reader.u8("Rice parameter")
    if b > MAX_RICE_PARAMETER:
        raise CodecError(f"Rice parameter {b} above the maximum {MAX_RICE_PARAMETER}")
    unary_len = reader.varint("unary length", reader.remaining)
    remainders = reader.take((kept * b + 7) // 8, "Rice remainders")
    unary = reader.take(unary_len, "Rice quotients")
    signs = reader.take((kept + 7) // 8, "sign bits")
    return _Sections(flags, gammas, kept, b, remainders, unary, signs)


def wire_breakdown(data: bytes | bytearray | memoryview) -> dict[str, int]:
    """Bytes spent on each part of a compeft message (for benchmarks and debugging).

    Keys: ``total``, ``header`` (frame prefix, tensor table, flags, counts,
    checksum), ``scales``, ``positions`` (Rice remainders + quotients),
    ``signs``, plus ``kept`` (entries) and ``rice_parameter``.
    """
    frame = read_frame(data)
    if frame.codec_id != CompeftCodec.wire_id:
        raise CodecError(f"not a compeft message (codec id {frame.codec_id})")
    reader = WireReader(frame.body, "compeft body")
    sections = _read_sections(reader, frame.sizes)
    dense = 0
    if sections.flags & _DENSE_FLAG:
        dense = 4 * sum(frame.sizes[t] for t in _read_dense_indices(reader, len(frame.sizes)))
    scales = 4 * sections.gammas.size
    positions = len(sections.remainders) + len(sections.unary)
    signs = len(sections.signs)
    return {
        "total": frame.total_nbytes,
        "header": frame.total_nbytes - scales - positions - signs - dense,
        "scales": scales,
        "positions": positions,
        "signs": signs,
        "dense": dense,
        "kept": sections.kept,
        "rice_parameter": sections.rice_parameter,
    }
