"""The round engine's sum-only path (secure aggregation) with a model-free client app:
the mean it aggregates equals the plain mean up to quantisation, dropouts are survived,
too many dropouts fail the round cleanly, no single client's update is ever decoded on
the coordinator, and compressed masking sends ≥ 20x fewer bytes than dense fp32."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from conftest import NumpyClientApp, engine_for, secure_round
from conftest import engine_job as job
from fedpeft.coordinator.secure import SecureRound, auto_bits
from fedpeft.errors import ConfigError
from fedpeft.privacy.secagg.updates import SecureEncoding


def expected_mean(app: NumpyClientApp, clients: Sequence[int]) -> dict[str, np.ndarray]:
    weights = {c: float(app.num_examples(c)) for c in clients}
    total = sum(weights.values())
    return {
        k: sum(weights[c] * app.update_of(c)[k].astype(np.float64) for c in clients) / total
        for k in app.SHAPES
    }


def test_secure_round_aggregates_the_weighted_mean(tmp_path: Path) -> None:
    # Prepare
    cfg = job(tmp_path)
    app = NumpyClientApp(cfg)
    engine, spy = engine_for(cfg, app, secure=secure_round())
    # Execute
    record = engine.run_round(1)
    # Assert: the same mean FedAvg computes from the individual updates, to quantisation
    cohort = sorted({t.client_id for t in spy.tasks})
    want = expected_mean(app, cohort)
    step = 0.1 / record["secagg_levels"]
    for k, v in engine.state.params.items():
        np.testing.assert_allclose(v, want[k], atol=10 * step * 64 / 10)
    assert record["secagg_survivors"] == 6 and record["secagg_dropped"] == []
    assert record["clients_ok"] == 6
    for stage in ("advertise", "share", "train", "unmask"):
        assert record[f"secagg_{stage}_seconds"] >= 0
    # every protocol message is counted, not only the masked vectors
    # the masked inputs: the results of training tasks (they alone carry a state marker)
    masked = sum(len(r.payload) for r in spy.results if r.payload and r.state is not None)
    assert record["bytes_up"] > masked


@pytest.mark.parametrize("stage", ["after_masking", "before_masking"])
def test_dropouts_are_survived_and_recorded(tmp_path: Path, stage: str) -> None:
    cfg = job(tmp_path)
    app = NumpyClientApp(cfg)
    engine, spy = engine_for(cfg, app, secure=secure_round(), dropout=(0.34, stage))
    record = engine.run_round(1)
    assert len(record["secagg_dropped"]) == 2 and "round_failed" not in record
    cohort = sorted({t.client_id for t in spy.tasks})
    # after masking: the vanished clients' inputs are in the sum; before: they are not
    summed = (
        cohort if stage == "after_masking" else sorted(set(cohort) - set(record["secagg_dropped"]))
    )
    want = expected_mean(app, summed)
    for k, v in engine.state.params.items():
        np.testing.assert_allclose(v, want[k], atol=1e-4)


def test_below_threshold_fails_the_round_and_keeps_the_adapter(tmp_path: Path) -> None:
    cfg = job(tmp_path)
    app = NumpyClientApp(cfg)
    strict = SecureRound(
        tolerated_dropout=0.2, bits=40, clip_range=0.1, weight_cap=64, density=1.0, seed=0
    )
    engine, _ = engine_for(cfg, app, secure=strict, dropout=(0.5, "before_masking"))
    before = {k: v.copy() for k, v in engine.state.params.items()}
    record = engine.run_round(1)
    assert "round_failed" in record
    for k, v in engine.state.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_the_coordinator_never_holds_one_clients_update(tmp_path: Path) -> None:
    """What crosses to the coordinator: masked vectors that share no more coordinates with
    the client's own encoded input than chance, and no codec-decodable update."""
    from fedpeft.privacy.secagg import unpack
    from fedpeft.privacy.secagg.updates import encode_secure

    cfg = job(tmp_path)
    app = NumpyClientApp(cfg)
    engine, spy = engine_for(cfg, app, secure=secure_round(bits=24))
    engine.run_round(1)
    train_tasks = [t for t in spy.tasks if t.kind == "train"]
    enc = SecureEncoding.from_dict(train_tasks[0].settings.secagg_encoding)
    masked = {r.client_id: r for r in spy.results if r.state is not None}
    assert len(masked) == 6
    for cid, result in masked.items():
        plain, _, _ = encode_secure(
            app.update_of(cid), enc, app.num_examples(cid), np.random.default_rng(0)
        )
        # the masked vector sits somewhere inside the framed payload: no window of it may
        # match the plain encoding beyond chance (2^-24 per coordinate)
        body = result.payload[-((enc.length * enc.bits + 7) // 8) :]
        seen = unpack(body, enc.bits, enc.length)
        assert np.mean(seen == plain) < 0.05
        # and the raw bytes do not contain the client's float update
        assert app.update_of(cid)["lora_A"].tobytes()[:16] not in result.payload
    # the engine kept no per-client update: ClientState carries no plain delta
    for state in engine.state.clients.values():
        assert state.held is None or set(state.held) == set(app.SHAPES)


def test_compressed_masking_sends_at_least_20x_fewer_bytes(tmp_path: Path) -> None:
    big = {"lora_A": (64, 400), "lora_B": (400, 64), "head": (3,)}
    cfg_plain = job(tmp_path / "plain")
    plain_app = NumpyClientApp(cfg_plain)
    plain_app.SHAPES = big
    plain, _ = engine_for(cfg_plain, plain_app, secure=None)
    dense_bytes = plain.run_round(1)["bytes_up"]
    cfg = job(tmp_path / "sec", **{"codec.name": "compeft", "codec.density": 0.1})
    app = NumpyClientApp(cfg)
    app.SHAPES = big
    bits = auto_bits(True, 6)
    engine, _ = engine_for(cfg, app, secure=secure_round(bits=bits, density=0.1))
    record = engine.run_round(1)
    assert record["bytes_up"] * 20 <= dense_bytes, (record["bytes_up"], dense_bytes)
    assert record["secagg_bits_per_coordinate"] <= 0.1 * bits + 0.01
    # what was not sent stays with the client as error feedback, in the client's own
    # store; the coordinator's record of a client holds no residual
    from fedpeft.simulation.client_store import CLIENTS_DIR, ClientStore

    store = ClientStore(Path(cfg.output) / CLIENTS_DIR)
    assert engine.state.clients
    for cid, state in engine.state.clients.items():
        assert state.residual is None
        assert store.load(cid, state.version).residual is not None


def test_fedexp_gets_its_spread_through_the_sum(tmp_path: Path) -> None:
    cfg = job(tmp_path, **{"federation.strategy": "fedexp"})
    app = NumpyClientApp(cfg)
    engine, spy = engine_for(cfg, app, secure=secure_round())
    record = engine.run_round(1)
    cohort = sorted({t.client_id for t in spy.tasks})
    weights = np.array([app.num_examples(c) for c in cohort], float)
    p = weights / weights.sum()
    spread = sum(
        pi * sum(float(np.sum(v.astype(np.float64) ** 2)) for v in app.update_of(c).values())
        for pi, c in zip(p, cohort, strict=True)
    )
    mean = expected_mean(app, cohort)
    norm2 = sum(float(np.sum(v**2)) for v in mean.values())
    want_step = max(1.0, spread / (2 * (norm2 + 1e-3)))
    assert record["server_step"] == pytest.approx(want_step, rel=0.02)


def test_product_aggregation_is_refused_with_secagg(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lora_aggregation"):
        job(tmp_path, **{"secagg.enabled": True, "federation.lora_aggregation": "product"})
