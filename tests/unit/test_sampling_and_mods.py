"""Client sampling (fixed / Poisson) and the client-side update chain."""

from __future__ import annotations

import numpy as np
import pytest

from fedpeft.client.mods import ModContext, apply_mods, clip_mod, reject_nonfinite
from fedpeft.client.update import UpdateSender
from fedpeft.config import CodecSettings
from fedpeft.coordinator.sampling import ClientSampler
from fedpeft.errors import ConfigError, UpdateRejected
from fedpeft.protocol.codecs import uplink_codec
from fedpeft.protocol.messages import ClientState, Tensors, TrainTask
from fedpeft.tensors import l2_norm


def test_fixed_sampling_is_deterministic_and_exact() -> None:
    s = ClientSampler(100, 10, "fixed", seed=3)
    a, b = s.sample(4), s.sample(4)
    assert a == b and len(a) == 10 and len(set(a)) == 10
    assert s.sample(5) != a
    assert all(0 <= c < 100 for c in a)


def test_poisson_sampling_rate() -> None:
    s = ClientSampler(1000, 100, "poisson", seed=0)
    sizes = [len(s.sample(r)) for r in range(1, 41)]
    assert s.rate == 0.1
    assert 90 < np.mean(sizes) < 110
    assert len(set(sizes)) > 1  # the cohort size varies


def test_sampler_rejects_more_per_round_than_clients() -> None:
    with pytest.raises(ConfigError, match=r"federation\.clients_per_round"):
        ClientSampler(5, 6, "fixed", 0)


def _ctx() -> ModContext:
    return ModContext(client_id=7, round=1, num_examples=10, state=ClientState())


def test_clip_scales_to_norm() -> None:
    delta = {"a": np.full(4, 3.0, np.float32), "b": np.full(9, 4.0, np.float32)}
    ctx = _ctx()
    out = apply_mods([clip_mod(1.0)], delta, ctx)
    assert l2_norm(out) == pytest.approx(1.0, rel=1e-5)
    assert ctx.info["clip_factor"] < 1
    small = {"a": np.full(1, 0.1, np.float32)}
    assert apply_mods([clip_mod(1.0)], small, _ctx())["a"][0] == np.float32(0.1)


def test_nonfinite_update_is_refused_with_client_id() -> None:
    with pytest.raises(UpdateRejected, match="client 7"):
        reject_nonfinite({"a": np.array([1.0, np.nan], np.float32)}, _ctx())


def _sender(decay: float = 1.0) -> UpdateSender:
    settings = CodecSettings(
        name="compeft", density=0.25, error_feedback=True, feedback_decay=decay
    )
    return UpdateSender(uplink_codec(settings), [], settings)


def _send(sender: UpdateSender, delta: Tensors, ctx: ModContext) -> bytes:
    task = TrainTask(ctx.round, ctx.client_id, 0, b"", False, 0, ctx.state)
    return sender.encode(task, delta, ctx)


def test_error_feedback_carries_dropped_mass() -> None:
    sender = _sender()
    codec = sender.uplink
    rng = np.random.default_rng(0)
    delta = {"w": rng.normal(size=64).astype(np.float32)}
    ctx = _ctx()
    _send(sender, delta, ctx)
    residual = ctx.state.residual
    assert residual is not None
    recon = codec.reconstruct(delta)
    np.testing.assert_allclose(residual["w"], delta["w"] - recon["w"], atol=1e-6)
    # next round: residual is added before encoding
    payload = _send(sender, delta, ctx)
    corrected = {"w": delta["w"] + residual["w"]}
    assert np.array_equal(codec.decode(payload)["w"], codec.reconstruct(corrected)["w"])


def test_error_feedback_decay_adds_a_fraction_of_the_residual() -> None:
    sender = _sender(decay=0.5)
    codec = sender.uplink
    rng = np.random.default_rng(1)
    delta = {"w": rng.normal(size=64).astype(np.float32)}
    ctx = _ctx()
    _send(sender, delta, ctx)  # no residual yet
    residual = ctx.state.residual
    assert residual is not None
    payload = _send(sender, delta, ctx)
    corrected = {"w": (delta["w"] + 0.5 * residual["w"]).astype(np.float32)}
    assert np.array_equal(codec.decode(payload)["w"], codec.reconstruct(corrected)["w"])
    # the new residual is what this encoding dropped of the corrected update
    np.testing.assert_allclose(
        ctx.state.residual["w"], corrected["w"] - codec.reconstruct(corrected)["w"], atol=1e-6
    )
    # decay 0 is no error feedback at all
    sender0, ctx0 = _sender(decay=0.0), _ctx()
    _send(sender0, delta, ctx0)
    assert np.array_equal(
        codec.decode(_send(sender0, delta, ctx0))["w"], codec.reconstruct(delta)["w"]
    )
