"""Dense codec: every coordinate as fp32, fp16 or bf16 — the uncompressed baseline.

Body layout: ``u8 dtype code`` (0 = fp32, 1 = fp16, 2 = bf16) followed by all
tensors' values, flattened in C order and concatenated, little-endian.

* fp32 is lossless.
* fp16 rounds to nearest-even; values beyond the float16 range (|x| >= 65520)
  would become Inf, so encoding them raises :class:`CodecError` instead.
* bf16 keeps the upper 16 bits of the float32 pattern after round-to-nearest-even
  on the lower 16 (numpy has no bfloat16, so this is done with integer ops);
  the relative error is at most 2**-8 (8 significant bits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedpeft.compression.base import Codec, WireReader, register_codec
from fedpeft.errors import CodecError, ConfigError

__all__ = [
    "WIRE_DTYPES",
    "DenseCodec",
    "DenseConfig",
    "bf16_bits",
    "bf16_round",
    "from_bf16_bits",
]

_DTYPES: dict[str, tuple[int, int]] = {"fp32": (0, 4), "fp16": (1, 2), "bf16": (2, 2)}
_CODE_TO_DTYPE = {code: name for name, (code, _) in _DTYPES.items()}
#: ``dtype`` values of :class:`DenseConfig` (and of ``codec.dtype``)
WIRE_DTYPES = tuple(_DTYPES)


@dataclass(frozen=True)
class DenseConfig:
    """Options of the dense codec."""

    dtype: str = field(
        default="fp32", metadata={"help": "wire precision: fp32 (lossless), fp16 or bf16"}
    )

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 patterns of finite float32 ``x``, rounded to nearest-even."""
    u = np.asarray(x, dtype=np.float32, order="C").view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of uint16 bfloat16 patterns."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16 precision, as float32."""
    return from_bf16_bits(bf16_bits(x))


@register_codec("dense", DenseConfig)
class DenseCodec(Codec):
    """All coordinates, at the configured precision."""

    wire_id: ClassVar[int] = 1
    compresses: ClassVar[bool] = False

    def __init__(self, config: DenseConfig | None = None) -> None:
        self.config = config if config is not None else DenseConfig()

    def _wire_values(self, flat: np.ndarray) -> np.ndarray:
        """``flat`` (float32) converted to the wire dtype (little-endian)."""
        dtype = self.config.dtype
        if dtype == "fp32":
            return flat.astype("<f4", copy=False)
        if dtype == "fp16":
            with np.errstate(over="ignore"):
                half = flat.astype("<f2")
            if not np.isfinite(half).all():
                raise CodecError("values beyond the float16 range (|x| >= 65520); use bf16 or fp32")
            return half
        bits = bf16_bits(flat)
        if ((bits & np.uint16(0x7F80)) == np.uint16(0x7F80)).any():
            raise CodecError("values round to Inf in bfloat16; use fp32")
        return bits.astype("<u2", copy=False)

    def _encode_body(self, arrays: list[np.ndarray]) -> bytes:
        flat = _concat(arrays)
        code, _ = _DTYPES[self.config.dtype]
        return bytes([code]) + self._wire_values(flat).tobytes()

    def _reconstruct_flat(self, arrays: list[np.ndarray]) -> np.ndarray:
        return _to_float32(self._wire_values(_concat(arrays)), self.config.dtype)

    def _decode_body(self, reader: WireReader, sizes: list[int]) -> np.ndarray:
        code = reader.u8("dtype code")
        if code not in _CODE_TO_DTYPE:
            raise CodecError(f"unknown dense dtype code {code}")
        dtype = _CODE_TO_DTYPE[code]
        n = sum(sizes)
        itemsize = _DTYPES[dtype][1]
        if reader.remaining != n * itemsize:
            raise CodecError(
                f"dense body holds {reader.remaining} bytes, the table declares {n} "
                f"{dtype} values ({n * itemsize} bytes)"
            )
        raw = reader.take(n * itemsize, "values")
        wire_dtype = "<u2" if dtype == "bf16" else ("<f4" if dtype == "fp32" else "<f2")
        values = np.frombuffer(raw, dtype=wire_dtype, count=n)
        flat = _to_float32(values, dtype)
        if not np.isfinite(flat).all():
            raise CodecError("dense body holds NaN or Inf, which no encoder writes")
        return flat


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([a.ravel() for a in arrays])


def _to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Wire values back to a fresh, writable float32 vector."""
    if dtype == "bf16":
        return from_bf16_bits(values)
    return values.astype(np.float32)  # always a copy: frombuffer views are read-only
