"""The codec interface, its registry and the shared wire frame.

Every codec turns a named set of float tensors (an adapter update) into bytes
and back. The :class:`Codec` base class owns the parts that must be identical
for every codec — input validation, the self-describing frame, the checksum,
splitting a flat vector back into named tensors — and leaves three hooks to
subclasses (``_encode_body``, ``_decode_body``, ``_reconstruct_flat``), the way
Flower's ``Strategy`` owns the round loop.

Wire frame (all integers little-endian, ``varint`` = unsigned LEB128)::

    magic      4 bytes   b"FPC1"
    version    u8        FORMAT_VERSION (1)
    codec id   u8        1 = dense, 2 = compeft
    length     u64       total length of the message in bytes, checksum included
    table      u8 encoding (0 = raw, 1 = zlib) + varint byte count + bytes;
               raw table = varint tensor count, then per tensor: varint name
               length, utf-8 name, varint ndim, ndim varint dims
    body       codec-specific (see dense.py / compeft.py)
    crc32      u32       zlib.crc32 of every byte before it

The table is zlib-compressed when that is shorter: LoRA state dicts repeat
long name prefixes hundreds of times, and at high compression the names would
otherwise cost more than the numbers.

Decoding checks, in this order: magic, version, length (truncated / trailing
bytes), checksum, codec id, then parses with bounds-checked reads. Every
failure is a :class:`fedpeft.errors.CodecError`; nothing is allocated whose size
has not been checked against the payload or against ``max_elements``.
"""

from __future__ import annotations

import abc
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from fedpeft.errors import CodecError, ConfigError, UpdateRejected
from fedpeft.tensors import Tensors

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_TABLE_BYTES",
    "MAX_TENSORS",
    "Codec",
    "Frame",
    "Tensors",
    "WireReader",
    "available_codecs",
    "check_compatible",
    "codec_class",
    "decode_any",
    "make_codec",
    "read_frame",
    "register_codec",
]

"""Tensor name -> array. Codecs accept any floating dtype and always return float32."""

MAGIC = b"FPC1"
FORMAT_VERSION = 1
#: Decoders refuse messages declaring more coordinates than this (1 GiB of
#: float32) unless the caller raises the limit: a sparse message is tiny on
#: the wire however large the tensors it declares, so the payload alone cannot
#: bound the allocation.
DEFAULT_MAX_ELEMENTS = 1 << 28

_PREFIX = struct.Struct("<4sBBQ")  # magic, version, codec id, total length
_CRC = struct.Struct("<I")
_TABLE_RAW = 0
_TABLE_ZLIB = 1
_MAX_NDIM = 64
#: Most tensors and most tensor-table bytes one message may declare. A LoRA of a
#: 70B model has ~1,100 tensors; the caps only stop forged tables from making
#: the decoder build millions of Python objects.
MAX_TENSORS = 1 << 16
MAX_TABLE_BYTES = 1 << 24
# zlib cannot expand data by more than ~1032x; anything claiming more is forged.
_ZLIB_MAX_RATIO = 1100


# --------------------------------------------------------------------------- #
# Low-level wire helpers
# --------------------------------------------------------------------------- #


def write_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (a non-negative int) to ``out`` as unsigned LEB128."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class WireReader:
    """Bounds-checked sequential reader over a byte buffer.

    Every read that would run past the end raises :class:`CodecError` naming
    what was being read, so parsers never see ``IndexError`` or ``struct.error``.
    """

    def __init__(self, data: bytes | memoryview, what: str = "message") -> None:
        self._view = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._view) - self._pos

    def take(self, n: int, what: str) -> memoryview:
        """The next ``n`` bytes (a zero-copy view)."""
        if n < 0 or n > self.remaining:
            raise CodecError(
                f"truncated {self._what}: {what} needs {n} bytes, {self.remaining} left"
            )
        chunk = self._view[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def u8(self, what: str) -> int:
        """One unsigned byte."""
        return int(self.take(1, what)[0])

    def varint(self, what: str, limit: int = (1 << 63) - 1) -> int:
        """An unsigned LEB128 integer, at most ``limit``."""
        value = 0
        for shift in range(0, 70, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise CodecError(f"{what} is {value}, above the limit {limit}")
                return value
        raise CodecError(f"{what}: varint longer than 10 bytes")

    def float32_array(self, count: int, what: str) -> np.ndarray:
        """``count`` little-endian float32 values (a writable copy); NaN/Inf is an error."""
        raw = self.take(4 * count, what)
        values = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
        if not np.isfinite(values).all():
            raise CodecError(f"{what}: NaN or Inf on the wire")
        return values

    def rest(self) -> memoryview:
        """Everything not read yet."""
        return self.take(self.remaining, "rest")

    def expect_end(self) -> None:
        """Raise unless every byte was consumed."""
        if self.remaining:
            raise CodecError(f"{self.remaining} unexpected trailing bytes in {self._what}")


@dataclass(frozen=True)
class Frame:
    """A parsed, checksum-verified message whose body has not been decoded yet."""

    version: int
    codec_id: int
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    body: memoryview
    header_nbytes: int
    """Bytes before the body: prefix and tensor table."""
    total_nbytes: int

    @property
    def sizes(self) -> list[int]:
        """Number of elements of each tensor, in order."""
        return [_numel(shape) for shape in self.shapes]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _encode_table(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> bytes:
    raw = bytearray()
    write_varint(raw, len(names))
    for name, shape in zip(names, shapes, strict=True):
        try:
            encoded = name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CodecError(f"tensor name {name!r} is not valid unicode: {exc}") from exc
        write_varint(raw, len(encoded))
        raw += encoded
        write_varint(raw, len(shape))
        for d in shape:
            write_varint(raw, int(d))
    packed = zlib.compress(bytes(raw), 9)
    out = bytearray()
    if len(packed) < len(raw):
        out.append(_TABLE_ZLIB)
        write_varint(out, len(packed))
        out += packed
    else:
        out.append(_TABLE_RAW)
        write_varint(out, len(raw))
        out += raw
    return bytes(out)


def _decode_table(
    reader: WireReader, max_elements: int
) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    encoding = reader.u8("table encoding")
    stored = reader.take(reader.varint("table length", reader.remaining), "tensor table")
    if encoding == _TABLE_ZLIB:
        inflater = zlib.decompressobj()
        try:
            raw: bytes | memoryview = inflater.decompress(
                stored, min(_ZLIB_MAX_RATIO * len(stored) + 64, MAX_TABLE_BYTES + 1)
            )
        except zlib.error as exc:
            raise CodecError(f"tensor table does not inflate: {exc}") from exc
        if len(raw) > MAX_TABLE_BYTES:
            raise CodecError(f"tensor table inflates beyond {MAX_TABLE_BYTES} bytes")
        if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise CodecError("tensor table is not one complete zlib stream")
    elif encoding == _TABLE_RAW:
        raw = stored
    else:
        raise CodecError(f"unknown tensor table encoding {encoding}")
    table = WireReader(raw, "tensor table")
    count = table.varint("tensor count", min(table.remaining, MAX_TENSORS))
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    seen: set[str] = set()
    total = 0
    for _ in range(count):
        name_bytes = table.take(table.varint("name length", table.remaining), "tensor name")
        try:
            name = bytes(name_bytes).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"tensor name is not utf-8: {exc}") from exc
        if name in seen:
            raise CodecError(f"tensor `{name}` appears twice")
        seen.add(name)
        ndim = table.varint(f"ndim of `{name}`", _MAX_NDIM)
        shape = tuple(table.varint(f"shape of `{name}`") for _ in range(ndim))
        n = _numel(shape)
        total += n
        if total > max_elements or any(d > max_elements for d in shape):
            raise CodecError(
                f"message declares more than {max_elements} coordinates (tensor `{name}` "
                f"has shape {shape}); pass a larger `max_elements` if this is intended"
            )
        names.append(name)
        shapes.append(shape)
    table.expect_end()
    return tuple(names), tuple(shapes)


def read_frame(data: bytes | bytearray | memoryview, max_elements: int | None = None) -> Frame:
    """Check magic, version, length and checksum, and parse the tensor table.

    Raises :class:`CodecError` with a specific message for each failure.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise CodecError(f"cannot read buffer: {exc}") from exc
    limit = DEFAULT_MAX_ELEMENTS if max_elements is None else int(max_elements)
    n = len(view)
    if n < len(MAGIC):
        if bytes(view) == MAGIC[:n] and n:
            raise CodecError(f"truncated message: {n} bytes")
        raise CodecError("bad magic: not a fedpeft codec message")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise CodecError(
            f"bad magic {bytes(view[: len(MAGIC)])!r}: not a fedpeft codec message "
            f"(expected {MAGIC!r})"
        )
    if n < _PREFIX.size + _CRC.size:
        raise CodecError(
            f"truncated message: {n} bytes, the frame alone needs {_PREFIX.size + _CRC.size}"
        )
    _, version, codec_id, total = _PREFIX.unpack_from(view, 0)
    if version != FORMAT_VERSION:
        raise CodecError(
            f"unsupported version {version} (this build reads version {FORMAT_VERSION})"
        )
    if n < total:
        raise CodecError(f"truncated message: {n} of {total} bytes")
    if n > total:
        raise CodecError(f"{n - total} trailing bytes after a {total}-byte message")
    (stored_crc,) = _CRC.unpack_from(view, n - _CRC.size)
    actual_crc = zlib.crc32(view[: n - _CRC.size])
    if stored_crc != actual_crc:
        raise CodecError(
            f"checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x}): "
            "the message is corrupted"
        )
    reader = WireReader(view[_PREFIX.size : n - _CRC.size])
    names, shapes = _decode_table(reader, limit)
    header_nbytes = n - _CRC.size - reader.remaining
    return Frame(
        version=version,
        codec_id=codec_id,
        names=names,
        shapes=shapes,
        body=reader.rest(),
        header_nbytes=header_nbytes,
        total_nbytes=n,
    )


def _write_frame(
    codec_id: int, names: Sequence[str], shapes: Sequence[tuple[int, ...]], body: bytes
) -> bytes:
    table = _encode_table(names, shapes)
    total = _PREFIX.size + len(table) + len(body) + _CRC.size
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, codec_id, total)
    crc = zlib.crc32(body, zlib.crc32(table, zlib.crc32(head)))
    return b"".join((head, table, body, _CRC.pack(crc)))


# --------------------------------------------------------------------------- #
# Input validation and splitting
# --------------------------------------------------------------------------- #


def as_float32_tensors(tensors: Mapping[str, Any]) -> Tensors:
    """Validate an update and return float32 views/copies in the same order.

    Names must be ``str``; values floating-point arrays (any shape) with only
    finite values. Anything else raises :class:`CodecError`.
    """
    if not isinstance(tensors, Mapping):
        raise CodecError(f"expected a mapping of name -> array, got {type(tensors).__name__}")
    out: Tensors = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise CodecError(f"tensor names must be str, got {type(name).__name__} {name!r}")
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            raise CodecError(
                f"tensor `{name}` has dtype {arr.dtype}; codecs take floating-point arrays"
            )
        with np.errstate(over="ignore"):
            # not ascontiguousarray: it turns 0-d arrays into shape (1,)
            arr32 = np.asarray(arr, dtype=np.float32, order="C")
        if not np.isfinite(arr32).all():
            raise CodecError(
                f"tensor `{name}` has NaN or Inf values (or exceeds the float32 range); "
                "refusing to encode"
            )
        out[name] = arr32
    return out


def split_flat(
    flat: np.ndarray, names: Sequence[str], shapes: Sequence[tuple[int, ...]]
) -> Tensors:
    """Cut a flat float32 vector into named tensors (views into ``flat``)."""
    out: Tensors = {}
    start = 0
    for name, shape in zip(names, shapes, strict=True):
        n = _numel(shape)
        out[name] = flat[start : start + n].reshape(shape)
        start += n
    return out


# --------------------------------------------------------------------------- #
# The codec ABC
# --------------------------------------------------------------------------- #


class Codec(abc.ABC):
    """Encode a named set of tensors to bytes and back.

    ``decode(encode(x))`` equals ``reconstruct(x)`` bit for bit; both return
    float32 arrays with the original shapes and names, in the original order.
    """

    name: ClassVar[str]
    wire_id: ClassVar[int]
    config_cls: ClassVar[type]
    #: True for a codec that drops or coarsens coordinates by design (ComPEFT), False for
    #: the dense baseline. A compressing codec can only carry deltas against what the
    #: receiver holds; full weights travel dense.
    compresses: ClassVar[bool]

    def encode(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        """Serialise ``tensors`` into one self-describing, checksummed message."""
        arrays = as_float32_tensors(tensors)
        if len(arrays) > MAX_TENSORS:
            raise CodecError(f"{len(arrays)} tensors; one message holds at most {MAX_TENSORS}")
        names = list(arrays)
        shapes = [tuple(a.shape) for a in arrays.values()]
        body = self._encode_body(list(arrays.values()))
        return _write_frame(self.wire_id, names, shapes, body)

    def decode(
        self, data: bytes | bytearray | memoryview, *, max_elements: int | None = None
    ) -> Tensors:
        """Parse a message written by :meth:`encode` of this codec.

        Raises :class:`CodecError` on truncated, corrupted, foreign or
        wrong-version input, or when the message declares more than
        ``max_elements`` coordinates (default :data:`DEFAULT_MAX_ELEMENTS`).
        """
        frame = read_frame(data, max_elements)
        if frame.codec_id != self.wire_id:
            writer = _BY_WIRE_ID.get(frame.codec_id)
            label = repr(writer.name) if writer else f"with unknown id {frame.codec_id}"
            raise CodecError(f"message was written by codec {label}, not {self.name!r}")
        reader = WireReader(frame.body, f"{self.name} body")
        sizes = frame.sizes
        try:
            flat = self._decode_body(reader, sizes)
        except CodecError:
            raise
        except (ValueError, IndexError, OverflowError, struct.error) as exc:
            # Every read is bounds-checked; this net keeps the contract (only
            # CodecError escapes) should a forged body reach an unchecked corner.
            raise CodecError(f"malformed {self.name} body: {exc}") from exc
        reader.expect_end()
        return split_flat(flat, frame.names, frame.shapes)

    def reconstruct(self, tensors: Mapping[str, np.ndarray]) -> Tensors:
        """What ``decode(encode(tensors))`` returns, computed without bytes."""
        arrays = as_float32_tensors(tensors)
        flat = self._reconstruct_flat(list(arrays.values()))
        return split_flat(flat, list(arrays), [tuple(a.shape) for a in arrays.values()])

    # -- hooks ---------------------------------------------------------------

    @abc.abstractmethod
    def _encode_body(self, arrays: list[np.ndarray]) -> bytes:
        """Body bytes for validated, C-contiguous float32 ``arrays``."""

    @abc.abstractmethod
    def _decode_body(self, reader: WireReader, sizes: list[int]) -> np.ndarray:
        """Flat float32 vector of ``sum(sizes)`` values; must consume the whole body."""

    @abc.abstractmethod
    def _reconstruct_flat(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Flat float32 vector equal to what ``_decode_body`` yields for ``_encode_body``."""

    def __repr__(self) -> str:
        config = getattr(self, "config", None)
        return f"{type(self).__name__}({config!r})" if config is not None else type(self).__name__


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

_REGISTRY: dict[str, type[Codec]] = {}
_BY_WIRE_ID: dict[int, type[Codec]] = {}

C = TypeVar("C", bound=type[Codec])


def register_codec(name: str, config_cls: type) -> Callable[[C], C]:
    """Class decorator registering a codec under ``name`` with its config dataclass.

    The class must define a unique ``wire_id`` (0-255) and ``compresses``, and accept
    its config as the only constructor argument.
    """

    def decorator(cls: C) -> C:
        wire_id = getattr(cls, "wire_id", None)
        if not isinstance(wire_id, int) or not 0 <= wire_id <= 255:
            raise TypeError(f"codec {cls.__name__} needs an int `wire_id` in [0, 255]")
        if not isinstance(getattr(cls, "compresses", None), bool):
            raise TypeError(f"codec {cls.__name__} needs a bool `compresses`")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"codec name {name!r} is already registered")
        other = _BY_WIRE_ID.get(wire_id)
        if other is not None and other is not cls:
            raise ValueError(f"codec wire id {wire_id} is already used by {other.name!r}")
        cls.name = name
        cls.config_cls = config_cls
        _REGISTRY[name] = cls
        _BY_WIRE_ID[wire_id] = cls
        return cls

    return decorator


def available_codecs() -> list[str]:
    """Names of the registered codecs, in registration order."""
    return list(_REGISTRY)


def codec_class(name: str) -> type[Codec]:
    """The codec class registered under ``name`` (``ConfigError`` when unknown)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(available_codecs())
        raise ConfigError("codec", f"unknown codec {name!r}; known: {known}") from None


def make_codec(name: str, **kwargs: Any) -> Codec:
    """Build the codec registered as ``name`` from its config fields.

    ``make_codec("compeft", density=0.05)`` is ``CompeftCodec(CompeftConfig(density=0.05))``.
    """
    cls = codec_class(name)
    try:
        config = cls.config_cls(**kwargs)
    except TypeError as exc:
        raise ConfigError("codec", f"bad options for codec {name!r}: {exc}") from exc
    codec: Codec = cls(config)  # type: ignore[call-arg]
    return codec


def decode_any(data: bytes | bytearray | memoryview, *, max_elements: int | None = None) -> Tensors:
    """Decode a message from whichever registered codec wrote it.

    Every codec stores what decoding needs, so the default-configured codec of
    the right kind reads any message of that kind.
    """
    frame = read_frame(data, max_elements)
    cls = _BY_WIRE_ID.get(frame.codec_id)
    if cls is None:
        raise CodecError(f"message was written by an unknown codec (id {frame.codec_id})")
    codec: Codec = cls(cls.config_cls())  # type: ignore[call-arg]
    return codec.decode(data, max_elements=max_elements)


# --------------------------------------------------------------------------- #
# Coordinator-side check
# --------------------------------------------------------------------------- #


def _name_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_compatible(
    decoded: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    client_id: int | str,
) -> None:
    """Reject an update whose names or shapes differ from ``expected``, or with NaN/Inf.

    Raises :class:`fedpeft.errors.UpdateRejected` naming the first offending
    tensors; returns ``None`` when the update can be aggregated.
    """
    missing = [n for n in expected if n not in decoded]
    if missing:
        raise UpdateRejected(client_id, f"missing tensor(s) {_name_list(missing)}")
    extra = [n for n in decoded if n not in expected]
    if extra:
        raise UpdateRejected(client_id, f"unexpected tensor(s) {_name_list(extra)}")
    for name, want in expected.items():
        value = np.asarray(decoded[name])
        if tuple(value.shape) != tuple(want):
            raise UpdateRejected(
                client_id,
                f"tensor `{name}` has shape {tuple(value.shape)}, expected {tuple(want)}",
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise UpdateRejected(client_id, f"tensor `{name}` has non-float dtype {value.dtype}")
        if not np.isfinite(value).all():
            raise UpdateRejected(client_id, f"tensor `{name}` contains NaN or Inf")
