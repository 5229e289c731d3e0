"""Property tests of the codecs: round trips, ComPEFT semantics, corruption never decodes."""

from __future__ import annotations

import struct
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fedpeft.compression import (
    CompeftCodec,
    CompeftConfig,
    DenseCodec,
    DenseConfig,
    ScaleRule,
    Scope,
    kept_count,
    make_codec,
)
from fedpeft.compression.base import MAGIC
from fedpeft.errors import CodecError, ConfigError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7)
# A small pool of values makes ties and zeros common; free floats cover the rest.
POOL = [0.0, 0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -3.0, 1e-3]


@st.composite
def float_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    width = 32 if dtype == np.float32 else 16
    free = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=width)
    elements = st.one_of(free, st.sampled_from(POOL))
    return draw(hnp.arrays(dtype, SHAPES, elements=elements))


TENSORS = st.dictionaries(st.text(max_size=12), float_arrays(), max_size=5)
DENSITIES = st.one_of(
    st.sampled_from([0.01, 0.1, 0.25, 0.5, 1.0]),
    st.floats(0.0, 1.0, exclude_min=True),
)


@st.composite
def compeft_codecs(
    draw: st.DrawFn, dense_below: st.SearchStrategy[int] = st.just(0)
) -> CompeftCodec:
    return CompeftCodec(
        CompeftConfig(
            density=draw(DENSITIES),
            scope=draw(st.sampled_from(list(Scope))),
            scale=draw(st.sampled_from(list(ScaleRule))),
            alpha=draw(st.sampled_from([0.5, 1.0, 2.5])),
            dense_below=draw(dense_below),
        )
    )


def compeft_dense_codecs() -> st.SearchStrategy[CompeftCodec]:
    """ComPEFT that sends tensors below a size limit exactly (``dense_below``)."""
    return compeft_codecs(dense_below=st.integers(1, 64))


CODECS = st.one_of(
    compeft_codecs(),
    compeft_dense_codecs(),
    st.sampled_from([DenseCodec(DenseConfig(d)) for d in ("fp32", "fp16", "bf16")]),
)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw float32 bit pattern (so -0.0 != +0.0 and equality is exact)."""
    return np.asarray(a, dtype=np.float32).reshape(-1).view(np.uint32)


def assert_bitwise_equal(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> None:
    assert list(x) == list(y)
    for name in x:
        assert x[name].dtype == np.float32 and y[name].dtype == np.float32
        assert x[name].shape == y[name].shape
        np.testing.assert_array_equal(bits(x[name]), bits(y[name]))


# -- an independent ComPEFT reference: a full stable sort, no partitioning ------


def reference_compeft(tensors: dict[str, np.ndarray], cfg: CompeftConfig) -> dict[str, np.ndarray]:
    names = list(tensors)
    flats = [np.asarray(tensors[n], dtype=np.float32).reshape(-1) for n in names]
    groups = (
        [[i] for i in range(len(names))]
        if cfg.scope is Scope.PER_TENSOR
        else [list(range(len(names)))]
    )
    outs = [np.zeros_like(f) for f in flats]
    for group in groups:
        tau = np.concatenate([flats[i] for i in group]) if group else np.zeros(0, np.float32)
        order = np.argsort(-np.abs(tau), kind="stable")  # ties: lower index first
        chosen = order[: kept_count(tau.size, cfg.density)]
        chosen = chosen[tau[chosen] != 0]  # zeros are never kept
        if chosen.size == 0:
            gamma = 0.0
        elif cfg.scale is ScaleRule.MEAN_ABS:
            gamma = float(np.mean(np.abs(tau[chosen]).astype(np.float64)))
        elif cfg.scale is ScaleRule.NORM:
            gamma = float(np.sqrt(np.sum(tau.astype(np.float64) ** 2) / chosen.size))
        else:
            gamma = cfg.alpha * float(np.std(tau.astype(np.float64)))
        dense = np.zeros(tau.size, dtype=np.float64)
        dense[chosen] = np.sign(tau[chosen]) * gamma
        start = 0
        for i in group:
            outs[i] = dense[start : start + flats[i].size]
            start += flats[i].size
    return {n: outs[i].reshape(np.shape(tensors[n])) for i, n in enumerate(names)}


# -- round trips ---------------------------------------------------------------


@SETTINGS
@given(codec=CODECS, tensors=TENSORS)
def test_decode_of_encode_equals_reconstruct_bitwise(codec, tensors) -> None:
    data = codec.encode(tensors)
    assert_bitwise_equal(codec.decode(data), codec.reconstruct(tensors))


@SETTINGS
@given(codec=CODECS, tensors=TENSORS)
def test_encoding_is_deterministic(codec, tensors) -> None:
    copy = {name: np.array(value, copy=True) for name, value in tensors.items()}
    assert codec.encode(tensors) == codec.encode(copy)


@SETTINGS
@given(codec=compeft_codecs(), tensors=TENSORS)
def test_compeft_matches_paper_definition(codec, tensors) -> None:
    got = codec.reconstruct(tensors)
    want = reference_compeft(tensors, codec.config)
    for name in tensors:
        # Same support and signs exactly; γ up to float32 rounding of the mean.
        np.testing.assert_array_equal(np.sign(got[name]), np.sign(want[name]))
        np.testing.assert_allclose(got[name], want[name], rtol=2e-7, atol=0)


@SETTINGS
@given(codec=compeft_codecs(), tensors=TENSORS)
def test_compeft_ternary_and_kept_count(codec, tensors) -> None:
    decoded = codec.decode(codec.encode(tensors))
    k = codec.config.density
    for value in decoded.values():
        assert np.unique(value).size <= 3
        assert np.unique(np.abs(value[value != 0])).size <= 1  # one γ per tensor
    if codec.config.scope is Scope.GLOBAL:
        gammas = {float(np.abs(v[v != 0]).max()) for v in decoded.values() if v.any()}
        assert len(gammas) <= 1
    if codec.config.scale is ScaleRule.ALPHA_STD:
        return  # alpha·std(τ) may be 0 (constant τ): then nothing survives decoding
    if codec.config.scope is Scope.PER_TENSOR:
        for name, value in tensors.items():
            x = np.asarray(value, dtype=np.float32)
            expected = min(kept_count(x.size, k), int(np.count_nonzero(x)))
            assert np.count_nonzero(decoded[name]) == expected
    else:
        flat = [np.asarray(v, dtype=np.float32).reshape(-1) for v in tensors.values()]
        n = sum(f.size for f in flat)
        nnz = sum(int(np.count_nonzero(f)) for f in flat)
        total = sum(int(np.count_nonzero(v)) for v in decoded.values())
        assert total == min(kept_count(n, k), nnz)


@SETTINGS
@given(codec=compeft_dense_codecs(), tensors=TENSORS)
def test_compeft_small_tensors_exact_the_rest_as_the_paper(codec, tensors) -> None:
    decoded = codec.decode(codec.encode(tensors))
    limit = codec.config.dense_below
    small = {n for n, v in tensors.items() if 0 < np.size(v) < limit}
    for name in small:
        want = np.asarray(tensors[name], dtype=np.float32)
        np.testing.assert_array_equal(bits(decoded[name]), bits(want))
    # the other tensors are compressed exactly as if the small ones were not there
    rest = {n: v for n, v in tensors.items() if n not in small}
    want_rest = reference_compeft(rest, codec.config)
    for name in rest:
        np.testing.assert_array_equal(np.sign(decoded[name]), np.sign(want_rest[name]))
        np.testing.assert_allclose(decoded[name], want_rest[name], rtol=2e-7, atol=0)


def test_dense_below_is_validated() -> None:
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ConfigError, match="dense_below"):
            CompeftConfig(dense_below=bad)


@SETTINGS
@given(
    x=hnp.arrays(np.float32, st.integers(1, 400), elements=st.floats(-100, 100, width=32)),
    k=DENSITIES,
)
def test_kept_count_is_ceil_k_n_for_nonzero_inputs(x, k) -> None:
    x = np.where(x == 0, np.float32(1.0), x)
    codec = CompeftCodec(CompeftConfig(density=k))
    decoded = codec.decode(codec.encode({"w": x}))["w"]
    assert np.count_nonzero(decoded) == kept_count(x.size, k)
    assert np.count_nonzero(decoded) == min(x.size, max(1, int(np.ceil(k * x.size - 1e-9))))


@SETTINGS
@given(tensors=TENSORS)
def test_dense_fp32_is_lossless(tensors) -> None:
    codec = DenseCodec(DenseConfig("fp32"))
    decoded = codec.decode(codec.encode(tensors))
    for name, value in tensors.items():
        np.testing.assert_array_equal(bits(decoded[name]), bits(value))


@SETTINGS
@given(tensors=TENSORS)
def test_dense_half_precisions_within_rounding_error(tensors) -> None:
    fp16 = DenseCodec(DenseConfig("fp16")).decode(DenseCodec(DenseConfig("fp16")).encode(tensors))
    bf16 = DenseCodec(DenseConfig("bf16")).decode(DenseCodec(DenseConfig("bf16")).encode(tensors))
    for name, value in tensors.items():
        x = np.asarray(value, dtype=np.float32)
        np.testing.assert_array_equal(fp16[name], x.astype(np.float16).astype(np.float32))
        # Half an ulp: 2**-11 relative for fp16, 2**-8 for bf16, plus half a subnormal step.
        assert np.all(np.abs(fp16[name] - x) <= np.abs(x) * 2.0**-11 + 2.0**-25)
        assert np.all(np.abs(bf16[name] - x) <= np.abs(x) * 2.0**-8 + 2.0**-134)


# -- corruption ----------------------------------------------------------------


@st.composite
def encoded_messages(draw: st.DrawFn) -> bytes:
    return draw(CODECS).encode(draw(TENSORS))


def decoder_for(data: bytes):
    return DenseCodec() if data[5] == DenseCodec.wire_id else CompeftCodec()


@SETTINGS
@given(data=encoded_messages(), where=st.integers(0, 10**6), flip=st.integers(1, 255))
def test_any_flipped_byte_raises_codec_error(data, where, flip) -> None:
    corrupted = bytearray(data)
    corrupted[where % len(data)] ^= flip
    with pytest.raises(CodecError):
        decoder_for(data).decode(bytes(corrupted))


@SETTINGS
@given(data=encoded_messages(), cut=st.integers(0, 10**6))
def test_any_truncation_raises_codec_error(data, cut) -> None:
    with pytest.raises(CodecError):
        decoder_for(data).decode(data[: cut % len(data)])


@SETTINGS
@given(junk=st.binary(max_size=300), with_magic=st.booleans(), codec=CODECS)
def test_random_bytes_raise_codec_error(junk, with_magic, codec) -> None:
    data = (MAGIC + junk) if with_magic else junk
    with pytest.raises(CodecError):
        codec.decode(data)


@SETTINGS
@given(data=encoded_messages(), where=st.integers(0, 10**6), value=st.integers(0, 255))
# found by CI: a one-entry tensor sent exactly (compeft dense section), forged 1.0 -> +Inf
@example(
    data=b"FPC1\x01\x02,\x00\x00\x00\x00\x00\x00\x00\x00\n\x01\x070\xc2\x80\xf0\x90"
    b"\x80\x80\x00\x08\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x80?\x92\xe0\xc0\xd1",
    where=25,
    value=127,
)
def test_forged_body_with_valid_checksum_never_leaks_other_errors(data, where, value) -> None:
    """An attacker can fix the CRC; decoding must still fail cleanly or stay well-formed."""
    body_start = 14
    assume(len(data) > body_start + 4)
    forged = bytearray(data[:-4])
    forged[body_start + where % (len(forged) - body_start)] = value
    forged += struct.pack("<I", zlib.crc32(bytes(forged)))
    try:
        decoded = decoder_for(data).decode(bytes(forged))
    except CodecError:
        return
    for value_ in decoded.values():
        assert value_.dtype == np.float32
        assert np.isfinite(value_).all()


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize("density", [0, 0.0, -0.1, 1.5, float("nan"), 10, float("inf"), True])
def test_bad_density_is_a_config_error(density) -> None:
    with pytest.raises(ConfigError, match="density"):
        CompeftConfig(density=density)
    with pytest.raises(ConfigError, match="density"):
        make_codec("compeft", density=density)


@SETTINGS
@given(tensors=TENSORS, density=st.floats(0.0, 1.0, exclude_min=True))
def test_norm_scale_keeps_the_l2_norm(tensors, density) -> None:
    codec = CompeftCodec(CompeftConfig(density=density, scale=ScaleRule.NORM))
    decoded = codec.decode(codec.encode(tensors))
    for name, value in tensors.items():
        x = np.asarray(value, dtype=np.float64)
        want = float(np.linalg.norm(x))
        got = float(np.linalg.norm(decoded[name].astype(np.float64)))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-30)
