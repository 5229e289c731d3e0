"""Update compression: the codec interface, ComPEFT, dense baselines, error feedback.

Every codec turns a named set of float tensors into one self-describing,
versioned, checksummed message and back::

    from fedpeft.compression import make_codec

    codec = make_codec("compeft", density=0.05)
    data = codec.encode(update)          # bytes on the wire
    decoded = codec.decode(data)         # == codec.reconstruct(update), bit for bit

Codecs register themselves by name (``register_codec``), like PEFT tuners;
``available_codecs()`` lists them, and ``codec.name`` in a job's config is
validated against them. Each codec declares whether it ``compresses`` (callers
never compare names). Decoding failures are always
:class:`fedpeft.errors.CodecError`; a coordinator then calls
:func:`check_compatible` to reject updates with wrong names, shapes or NaN/Inf.
"""

from fedpeft.compression.base import (
    DEFAULT_MAX_ELEMENTS,
    FORMAT_VERSION,
    MAGIC,
    Codec,
    Frame,
    Tensors,
    available_codecs,
    check_compatible,
    codec_class,
    decode_any,
    make_codec,
    read_frame,
    register_codec,
)
from fedpeft.compression.compeft import (
    CompeftCodec,
    CompeftConfig,
    ScaleRule,
    Scope,
    kept_count,
    wire_breakdown,
    wire_size_bits_floor,
)
from fedpeft.compression.dense import WIRE_DTYPES, DenseCodec, DenseConfig

#: Full adapter weights (first contact, dense downlink) always travel as dense fp32, so a
#: client can rebuild them exactly whatever codec the job uses for updates.
FULL_WEIGHTS_CODEC: Codec = make_codec("dense", dtype="fp32")

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "FORMAT_VERSION",
    "FULL_WEIGHTS_CODEC",
    "MAGIC",
    "WIRE_DTYPES",
    "Codec",
    "CompeftCodec",
    "CompeftConfig",
    "DenseCodec",
    "DenseConfig",
    "Frame",
    "ScaleRule",
    "Scope",
    "Tensors",
    "available_codecs",
    "check_compatible",
    "codec_class",
    "decode_any",
    "kept_count",
    "make_codec",
    "read_frame",
    "register_codec",
    "wire_breakdown",
    "wire_size_bits_floor",
]
