"""Unit tests of fedpeft.compression: registry, ComPEFT details, wire format, error feedback."""

from __future__ import annotations

import math
import struct
import time
import zlib

import numpy as np
import pytest

from fedpeft.compression import (
    CompeftCodec,
    CompeftConfig,
    DenseCodec,
    DenseConfig,
    ScaleRule,
    Scope,
    available_codecs,
    check_compatible,
    decode_any,
    kept_count,
    make_codec,
    read_frame,
    wire_breakdown,
    wire_size_bits_floor,
)
from fedpeft.compression.base import _write_frame, write_varint
from fedpeft.compression.dense import bf16_round
from fedpeft.compression.feedback import add_residual, residual_of
from fedpeft.compression.golomb import (
    decode_gaps,
    encode_gaps,
    gaps_to_positions,
    positions_to_gaps,
    rice_bits,
    rice_parameter,
    rice_parameter_for_density,
)
from fedpeft.errors import CodecError, ConfigError, UpdateRejected


def lora_like_update(rng: np.random.Generator, layers: int = 4) -> dict[str, np.ndarray]:
    update = {}
    for i in range(layers):
        for proj in ("query", "value"):
            prefix = f"base_model.model.encoder.layer.{i}.attention.self.{proj}"
            update[f"{prefix}.lora_A.weight"] = rng.standard_normal((8, 384)).astype(np.float32)
            update[f"{prefix}.lora_B.weight"] = rng.standard_normal((384, 8)).astype(np.float32)
    return update


# -- registry ------------------------------------------------------------------


def test_registry_lists_both_codecs() -> None:
    assert {"dense", "compeft"} <= set(available_codecs())
    assert isinstance(make_codec("dense", dtype="fp16"), DenseCodec)
    codec = make_codec("compeft", density=0.05, scope="global", scale="alpha_std", alpha=2.0)
    assert isinstance(codec, CompeftCodec)
    assert codec.config.scope is Scope.GLOBAL and codec.config.scale is ScaleRule.ALPHA_STD
    assert CompeftConfig(scope="GLOBAL").scope is Scope.GLOBAL  # member names work too


def test_unknown_codec_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"`codec`.*known: .*dense.*compeft|known: .*compeft"):
        make_codec("zstd")


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("compeft", {"densty": 0.1}, "codec"),
        ("compeft", {"scope": "layerwise"}, "scope"),
        ("compeft", {"scale": "max"}, "scale"),
        ("compeft", {"alpha": 0.0}, "alpha"),
        ("compeft", {"alpha": float("nan")}, "alpha"),
        ("compeft", {"density": "0.1"}, "density"),
        ("dense", {"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_options_are_config_errors(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"`{field}`"):
        make_codec(name, **kwargs)


def test_density_as_percentage_gets_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"use 0\.1"):
        CompeftConfig(density=10)


# -- ComPEFT selection -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [
        (30, 0.1, 3),
        (10, 0.1, 1),
        (3, 0.5, 2),
        (7, 1.0, 7),
        (5, 1e-9, 1),
        (0, 0.5, 0),
        (1, 0.01, 1),
        (1_000_000, 0.1, 100_000),
        (100, 0.07, 7),
    ],
)
def test_kept_count(n: int, k: float, expected: int) -> None:
    assert kept_count(n, k) == expected


def test_ties_keep_lower_indices() -> None:
    codec = CompeftCodec(CompeftConfig(density=0.5))
    out = codec.reconstruct({"w": np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)})["w"]
    np.testing.assert_array_equal(out, [1.0, -1.0, 0.0, 0.0])


def test_zeros_are_never_kept() -> None:
    codec = CompeftCodec(CompeftConfig(density=0.75))
    x = np.array([0.0, 0.0, 0.0, -5.0], dtype=np.float32)
    out = codec.decode(codec.encode({"w": x}))["w"]
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, -5.0])
    assert np.count_nonzero(out) == 1  # min(ceil(0.75 * 4), nnz) = min(3, 1)


def test_all_zero_and_empty_tensors() -> None:
    codec = CompeftCodec()
    update = {"z": np.zeros((3, 4), np.float32), "e": np.zeros((0,), np.float32)}
    out = codec.decode(codec.encode(update))
    np.testing.assert_array_equal(out["z"], np.zeros((3, 4)))
    assert out["e"].shape == (0,)
    assert not np.signbit(out["z"]).any()


def test_mean_abs_scale_is_mean_of_kept_magnitudes() -> None:
    x = np.array([4.0, -2.0, 0.5, 0.1, 0.0, -0.2], dtype=np.float32)
    out = CompeftCodec(CompeftConfig(density=0.5)).reconstruct({"w": x})["w"]
    gamma = np.float32((4.0 + 2.0 + 0.5) / 3)
    np.testing.assert_array_equal(out, [gamma, -gamma, gamma, 0, 0, 0])


def test_alpha_std_scale_follows_the_paper() -> None:
    x = np.array([4.0, -2.0, 0.5, 0.1, 0.0, -0.2], dtype=np.float32)
    cfg = CompeftConfig(density=0.5, scale=ScaleRule.ALPHA_STD, alpha=2.0)
    out = CompeftCodec(cfg).reconstruct({"w": x})["w"]
    gamma = np.float32(2.0 * np.std(x.astype(np.float64)))
    np.testing.assert_array_equal(out, [gamma, -gamma, gamma, 0, 0, 0])


def test_norm_scale_keeps_the_update_norm() -> None:
    x = np.array([4.0, -2.0, 0.5, 0.1, 0.0, -0.2], dtype=np.float32)
    codec = CompeftCodec(CompeftConfig(density=0.5, scale=ScaleRule.NORM))
    out = codec.decode(codec.encode({"w": x}))["w"]
    gamma = np.float32(np.sqrt((16 + 4 + 0.25 + 0.01 + 0.04) / 3))
    np.testing.assert_array_equal(out, [gamma, -gamma, gamma, 0, 0, 0])
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(x), rel=1e-6)
    # larger than the least-squares γ (mean |τ_kept|) whenever anything is dropped
    assert gamma > np.float32((4.0 + 2.0 + 0.5) / 3)
    assert make_codec("compeft", scale="norm").config.scale is ScaleRule.NORM  # type: ignore[attr-defined]


def test_config_accepts_exactly_the_codec_scale_rules() -> None:
    from fedpeft.config import CodecSettings

    for rule in ScaleRule:
        assert CodecSettings(name="compeft", scale=rule.value).scale == rule.value
    with pytest.raises(ConfigError, match=r"codec\.scale"):
        CodecSettings(scale="median")


def test_codecs_declare_whether_they_compress() -> None:
    from fedpeft.compression import codec_class
    from fedpeft.config import CodecSettings

    assert {name: codec_class(name).compresses for name in available_codecs()} == {
        "compeft": True,
        "dense": False,
    }
    assert CodecSettings(name="compeft").compresses and not CodecSettings().compresses


def test_global_scope_shares_top_k_and_scale() -> None:
    update = {"big": np.full(4, 10.0, np.float32), "small": np.full(4, 0.1, np.float32)}
    per_tensor = CompeftCodec(CompeftConfig(density=0.5)).reconstruct(update)
    global_ = CompeftCodec(CompeftConfig(density=0.5, scope=Scope.GLOBAL)).reconstruct(update)
    assert np.count_nonzero(per_tensor["small"]) == 2
    np.testing.assert_array_equal(global_["big"], np.full(4, 10.0))  # all 4 kept globally
    np.testing.assert_array_equal(global_["small"], np.zeros(4))


def test_order_and_shapes_are_preserved() -> None:
    update = {"b": np.ones((2, 3, 1), np.float32), "a": np.float32(-2.0), "c": np.ones((0, 5))}
    for codec in (CompeftCodec(), DenseCodec()):
        out = codec.decode(codec.encode(update))
        assert list(out) == ["b", "a", "c"]
        assert [v.shape for v in out.values()] == [(2, 3, 1), (), (0, 5)]
        assert all(v.dtype == np.float32 for v in out.values())


def test_non_finite_input_is_refused() -> None:
    for codec in (CompeftCodec(), DenseCodec()):
        with pytest.raises(CodecError, match="NaN or Inf"):
            codec.encode({"w": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(CodecError, match="dtype int64"):
        CompeftCodec().encode({"w": np.arange(3)})


# -- Golomb–Rice ---------------------------------------------------------------


def test_rice_round_trip_and_cost() -> None:
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(100_000, size=5_000, replace=False))
    gaps = positions_to_gaps(positions)
    b = rice_parameter(gaps)
    assert b == rice_parameter_for_density(0.05) == 4
    assert all(rice_bits(gaps, b) <= rice_bits(gaps, c) for c in range(12))
    remainders, unary = encode_gaps(gaps, b)
    assert len(remainders) + len(unary) == math.ceil(len(gaps) * b / 8) + math.ceil(
        (rice_bits(gaps, b) - len(gaps) * b) / 8
    )
    decoded = decode_gaps(remainders, unary, len(gaps), b, 100_000)
    np.testing.assert_array_equal(gaps_to_positions(decoded), positions)


def test_rice_decoder_rejects_inconsistent_blocks() -> None:
    gaps = np.array([3, 0, 7, 1], dtype=np.int64)
    remainders, unary = encode_gaps(gaps, 1)
    with pytest.raises(CodecError, match="terminators"):
        decode_gaps(remainders, unary, 3, 1, 100)
    with pytest.raises(CodecError, match="beyond"):
        decode_gaps(remainders, unary, 4, 1, 10)
    with pytest.raises(CodecError, match="remainder block"):
        decode_gaps(remainders + b"\x00", unary, 4, 1, 100)
    with pytest.raises(CodecError, match="trailing"):
        decode_gaps(remainders, unary + b"\x00", 4, 1, 100)


# -- wire format -----------------------------------------------------------------


def test_bits_per_coordinate_near_the_entropy_floor() -> None:
    rng = np.random.default_rng(1)
    update = {"w": rng.standard_normal(1_000_000).astype(np.float32)}
    for k in (0.01, 0.05, 0.1, 0.2):
        data = CompeftCodec(CompeftConfig(density=k)).encode(update)
        parts = wire_breakdown(data)
        floor_bits = wire_size_bits_floor(1_000_000, k)
        assert (parts["positions"] + parts["signs"]) * 8 <= 1.05 * floor_bits
        assert parts["header"] + parts["scales"] < 64
    data = CompeftCodec(CompeftConfig(density=0.1)).encode(update)
    assert 4_000_000 / len(data) >= 40


def test_header_stays_small_for_many_lora_tensors() -> None:
    update = lora_like_update(np.random.default_rng(2), layers=24)  # 96 tensors
    data = CompeftCodec(CompeftConfig(density=0.1)).encode(update)
    frame = read_frame(data)
    raw_names = sum(len(name) for name in update)
    assert frame.header_nbytes < raw_names / 4


def test_messages_are_self_describing() -> None:
    update = lora_like_update(np.random.default_rng(3), layers=1)
    for codec in (make_codec("compeft", density=0.2, scope="global"), make_codec("dense")):
        data = codec.encode(update)
        assert data[:4] == b"FPC1" and data[4] == 1
        out = decode_any(data)
        for name in update:
            np.testing.assert_array_equal(out[name], codec.reconstruct(update)[name])


def _reframe(data: bytes, **changes: int) -> bytes:
    """Rewrite prefix fields and fix the checksum, as a forger would."""
    magic, version, codec_id, total = struct.unpack_from("<4sBBQ", data)
    version = changes.get("version", version)
    codec_id = changes.get("codec_id", codec_id)
    head = struct.pack("<4sBBQ", magic, version, codec_id, total) + data[14:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def test_clear_errors_for_each_failure() -> None:
    codec = CompeftCodec()
    data = codec.encode({"w": np.arange(10, dtype=np.float32)})
    cases = [
        (b"", "bad magic"),
        (b"FP", "truncated"),
        (b"PK\x03\x04" + data[4:], "bad magic"),
        (b'{"w": [1, 2, 3]}', "bad magic"),
        (data[:-1], "truncated"),
        (data + b"\x00", "trailing"),
        (data[:-5] + bytes([data[-5] ^ 1]) + data[-4:], "checksum mismatch"),
        (_reframe(data, version=2), "unsupported version 2"),
        (_reframe(data, codec_id=1), "written by codec 'dense'"),
        (_reframe(data, codec_id=99), "unknown id 99"),
    ]
    for bad, message in cases:
        with pytest.raises(CodecError, match=message):
            codec.decode(bad)
    with pytest.raises(CodecError, match="expected bytes"):
        codec.decode("FPC1")  # type: ignore[arg-type]


def test_forged_huge_shape_is_refused_before_allocating() -> None:
    # A valid compeft body keeping nothing: flags, one γ, m = 0, b = 0, unary length 0.
    body = bytes([1]) + struct.pack("<f", 0.0) + b"\x00\x00\x00"
    data = _write_frame(CompeftCodec.wire_id, ["w"], [(10**12,)], body)
    with pytest.raises(CodecError, match="coordinates"):
        CompeftCodec().decode(data)
    small = _write_frame(CompeftCodec.wire_id, ["w"], [(10,)], body)
    np.testing.assert_array_equal(CompeftCodec().decode(small)["w"], np.zeros(10))
    with pytest.raises(CodecError, match="coordinates"):
        CompeftCodec().decode(small, max_elements=5)


def _frame_with_table(encoding: int, table: bytes, body: bytes = b"") -> bytes:
    length = bytearray()
    write_varint(length, len(table))
    total = 14 + 1 + len(length) + len(table) + len(body) + 4
    head = struct.pack("<4sBBQ", b"FPC1", 1, CompeftCodec.wire_id, total)
    head += bytes([encoding]) + bytes(length) + table + body
    return head + struct.pack("<I", zlib.crc32(head))


def test_forged_tables_are_refused() -> None:
    many = bytearray()
    write_varint(many, 1 << 20)
    many += b"\x00\x00" * 8
    bomb = zlib.compress(b"\x00" * (20 << 20), 9)
    cases = [
        (_frame_with_table(0, bytes(many)), "tensor count"),
        (_frame_with_table(1, bomb), "inflates beyond"),
        (_frame_with_table(1, b"not zlib"), "does not inflate"),
        (_frame_with_table(7, b""), "table encoding"),
        (_frame_with_table(0, b"\x02\x01a\x00\x01a\x00"), "appears twice"),
        (_frame_with_table(0, b"\x01\x02\xff\xfe\x00"), "utf-8"),
    ]
    for data, message in cases:
        with pytest.raises(CodecError, match=message):
            CompeftCodec().decode(data)


def test_dense_fp16_overflow_is_refused() -> None:
    with pytest.raises(CodecError, match="float16 range"):
        DenseCodec(DenseConfig("fp16")).encode({"w": np.array([7e4], np.float32)})


def test_bf16_rounds_to_nearest_even() -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8)], np.float32)
    np.testing.assert_array_equal(bf16_round(x), [1.0, 1 + 2**-6, 1 + 2**-7, -1.0])
    codec = DenseCodec(DenseConfig("bf16"))
    np.testing.assert_array_equal(codec.decode(codec.encode({"x": x}))["x"], bf16_round(x))


@pytest.mark.slow
def test_one_million_coordinates_encode_decode_fast() -> None:
    update = {"w": np.random.default_rng(4).standard_normal(1 << 20).astype(np.float32)}
    codec = CompeftCodec(CompeftConfig(density=0.1))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        codec.decode(codec.encode(update))
        times.append(time.perf_counter() - start)
    assert sorted(times)[2] < 0.1


# -- check_compatible --------------------------------------------------------------


def test_check_compatible() -> None:
    expected = {"a": (2, 3), "b": (4,)}
    good = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    assert check_compatible(good, expected, client_id=7) is None
    cases = [
        ({"a": good["a"]}, "missing tensor.*`b`"),
        ({**good, "c": np.zeros(1)}, "unexpected tensor.*`c`"),
        ({**good, "a": np.zeros((3, 2), np.float32)}, r"`a` has shape \(3, 2\), expected \(2, 3\)"),
        ({**good, "b": np.array([1, np.inf, 0, 0], np.float32)}, "`b` contains NaN or Inf"),
        ({**good, "b": np.array([1, np.nan, 0, 0], np.float32)}, "`b` contains NaN or Inf"),
    ]
    for update, reason in cases:
        with pytest.raises(UpdateRejected, match=reason) as info:
            check_compatible(update, expected, client_id=7)
        assert info.value.client_id == 7


# -- error feedback ----------------------------------------------------------------


def test_error_feedback_accumulates_and_telescopes() -> None:
    rng = np.random.default_rng(5)
    codec = CompeftCodec(CompeftConfig(density=0.05))
    residual = {"w": np.zeros((20, 10), np.float32)}
    updates = [{"w": rng.standard_normal((20, 10)).astype(np.float32)} for _ in range(6)]
    sent_total = np.zeros((20, 10), np.float64)
    for update in updates:
        corrected = add_residual(update, residual)
        sent = codec.decode(codec.encode(corrected))
        residual = residual_of(corrected, sent)
        sent_total += sent["w"]
    # Everything not sent yet is in the residual: sum(sent) + residual == sum(updates).
    np.testing.assert_allclose(
        sent_total + residual["w"], sum(u["w"].astype(np.float64) for u in updates), atol=1e-4
    )
