"""The chain downlink: each round's change of the global adapter is compressed once (with
server error feedback) and clients catch up from the chain of those deltas.

Checked here: the wire format (round trip, every truncation rejected), that every
client's copy of the global adapter is bit-identical to the coordinator's, that first
contacts start from their own initial adapter (digest checked), that what compression
drops is carried to later rounds, the fallback to full weights for a long chain, and
resume from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.aggregation import make_strategy
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.compression.chain import (
    apply_chain,
    decode_chain,
    encode_chain,
    is_chain,
    params_digest,
)
from fedpeft.config import JobConfig
from fedpeft.coordinator.engine import RoundEngine
from fedpeft.coordinator.sampling import ClientSampler
from fedpeft.errors import CodecError, ConfigError
from fedpeft.protocol.codecs import apply_downlink, downlink_codec, uplink_codec
from fedpeft.protocol.messages import ClientState, TrainResult, TrainTask
from fedpeft.rundir import RunDir
from fedpeft.simulation.inprocess import InProcessBackend

SHAPES = {"lora_A": (8, 16), "lora_B": (16, 8), "head.weight": (2, 16), "head.bias": (2,)}


@settings(max_examples=60, deadline=None)
@given(
    base=st.integers(0, 2**32 - 1),
    digest=st.binary(min_size=16, max_size=16),
    deltas=st.lists(st.binary(max_size=40), max_size=5),
)
def test_chain_wire_round_trip_and_truncation(
    base: int, digest: bytes, deltas: list[bytes]
) -> None:
    payload = encode_chain(base, digest, deltas)
    assert is_chain(payload)
    chain = decode_chain(payload)
    assert (chain.base_version, chain.base_digest, chain.deltas) == (base, digest, deltas)
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode_chain(payload[:cut])
    with pytest.raises(CodecError, match="trailing"):
        decode_chain(payload + b"x")


def test_params_digest_sees_names_shapes_and_values() -> None:
    a = {"x": np.zeros((2, 3), np.float32), "y": np.ones(4, np.float32)}
    assert params_digest(a) == params_digest(dict(reversed(list(a.items()))))
    assert params_digest(a) != params_digest({**a, "x": np.zeros((3, 2), np.float32)})
    assert params_digest(a) != params_digest({"z": a["x"], "y": a["y"]})
    changed = {**a, "y": a["y"].copy()}
    changed["y"][0] = np.nextafter(np.float32(1), np.float32(2))
    assert params_digest(a) != params_digest(changed)


class HoldingClientApp:
    """A model-free client that keeps what it holds (as LoraClientApp does): it applies
    the downlink to its held copy (or its own initial adapter), "trains" by adding a seeded
    step, and records the adapter it started from."""

    def __init__(self, cfg: JobConfig, initial_shift: float = 0.0) -> None:
        self.cfg = cfg
        self.downlink = downlink_codec(cfg.codec)
        self.uplink = uplink_codec(cfg.codec)
        rng = np.random.default_rng(0)
        self.initial = {
            k: (rng.standard_normal(s) + initial_shift).astype(np.float32)
            for k, s in SHAPES.items()
        }
        self.started_from: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def initial_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.initial.items()}

    def train(self, task: TrainTask) -> TrainResult:
        try:
            held = apply_downlink(self.downlink, task, self.initial)
        except (ValueError, CodecError) as exc:
            return TrainResult(task.round, task.client_id, error=str(exc))
        self.started_from[(task.round, task.client_id)] = held
        rng = np.random.default_rng([task.round, task.client_id])
        delta = {
            k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in held.items()
        }
        return TrainResult(
            task.round,
            task.client_id,
            num_examples=5,
            payload=self.uplink.encode(delta),
            state=ClientState(version=task.version, held=held),
        )

    def evaluate(self, params: Any) -> dict[str, float]:
        return {}


def chain_engine(
    tmp_path: Path, app: HoldingClientApp, cfg: JobConfig, *, coordinator_app: Any = None
) -> RoundEngine:
    fed = cfg.federation
    run = RunDir(cfg.output)
    if not run.path.exists():
        run.create(cfg, {"task": "classification", "label_names": ["a", "b"]})
    return RoundEngine(
        backend=InProcessBackend(lambda _name: coordinator_app or app),
        strategy=make_strategy(fed),
        sampler=ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, 0),
        shards=[np.arange(3) for _ in range(fed.clients)],
        uplink=uplink_codec(cfg.codec),
        downlink=downlink_codec(cfg.codec),
        run=run,
        rounds=fed.rounds,
        seed=0,
        chain_downlink=True,
    )


def chain_job(tmp_path: Path, rounds: int = 6, **extra: Any) -> JobConfig:
    return JobConfig().replace(
        {
            "output": str(tmp_path / "run"),
            "federation.clients": 12,
            "federation.clients_per_round": 4,
            "federation.rounds": rounds,
            "codec.name": "compeft",
            "codec.downlink": "chain",
            "codec.downlink_density": 0.25,
            **extra,
        }
    )


def test_every_client_holds_the_coordinators_adapter_bit_for_bit(tmp_path: Path) -> None:
    cfg = chain_job(tmp_path)
    app = HoldingClientApp(cfg)
    engine = chain_engine(tmp_path, app, cfg)
    engine.start_fresh()
    versions = [engine.state.params]
    full = len(FULL_WEIGHTS_CODEC.encode(engine.state.params))
    records = []
    for round_num in range(1, cfg.federation.rounds + 1):
        records.append(engine.run_round(round_num))
        versions.append(engine.state.params)
    for (round_num, _cid), held in app.started_from.items():
        expected = versions[round_num - 1]
        for k in expected:
            np.testing.assert_array_equal(held[k], expected[k])
    # round 1 sends nothing but the chain header (everyone starts from its own initial)
    assert records[0]["bytes_down"] < 100 * cfg.federation.clients_per_round
    assert all(r["bytes_down"] < full * cfg.federation.clients_per_round for r in records)
    assert all(0 < r["downlink_delta_bytes"] < full / 2 for r in records)


def test_server_error_feedback_carries_what_compression_dropped(tmp_path: Path) -> None:
    """The global adapter plus the server residual is exactly where the strategy put it:
    compression delays part of the change, it never loses it."""
    cfg = chain_job(tmp_path, rounds=4)
    app = HoldingClientApp(cfg)
    engine = chain_engine(tmp_path, app, cfg)
    engine.start_fresh()
    exact = {k: v.astype(np.float64) for k, v in engine.state.params.items()}
    for round_num in range(1, 5):
        engine.run_round(round_num)
        # FedAvg with server lr 1: the exact global moves by the mean decoded update
        cohort = [c for (r, c) in app.started_from if r == round_num]
        steps = []
        for cid in cohort:
            rng = np.random.default_rng([round_num, cid])
            raw = {
                k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32)
                for k, v in exact.items()
            }
            steps.append(app.uplink.decode(app.uplink.encode(raw)))
        for k in exact:
            exact[k] = exact[k] + np.mean([s[k] for s in steps], axis=0)
        residual = engine.state.server_residual
        assert residual is not None
        for k in exact:
            np.testing.assert_allclose(engine.state.params[k] + residual[k], exact[k], atol=1e-5)
        assert any(np.abs(v).sum() > 0 for v in residual.values())  # something was delayed


def test_first_contact_with_another_initial_adapter_is_refused(tmp_path: Path) -> None:
    cfg = chain_job(tmp_path, rounds=1)
    coordinator = HoldingClientApp(cfg)
    other = HoldingClientApp(cfg, initial_shift=1.0)  # e.g. another seed: another init
    engine = chain_engine(tmp_path, other, cfg, coordinator_app=coordinator)
    engine.start_fresh()
    task = engine.make_task(1, 0)
    with pytest.raises(ValueError, match="initial adapter differs"):
        apply_downlink(other.downlink, task, other.initial)
    assert apply_downlink(coordinator.downlink, task, coordinator.initial).keys() == set(SHAPES)


def test_long_chain_falls_back_to_full_weights(tmp_path: Path) -> None:
    cfg = chain_job(tmp_path, rounds=3, **{"codec.downlink_density": 1.0})
    app = HoldingClientApp(cfg)
    engine = chain_engine(tmp_path, app, cfg)
    engine.start_fresh()
    for round_num in (1, 2, 3):
        engine.run_round(round_num)
    # density 1: each delta costs about the full weights, so a chain of two is larger
    task = engine.make_task(4, 99 % cfg.federation.clients)
    if task.state.held is None:
        assert not task.downlink_is_delta
        np.testing.assert_array_equal(
            FULL_WEIGHTS_CODEC.decode(task.downlink)["lora_A"], engine.state.params["lora_A"]
        )


def test_chain_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    cfg = chain_job(tmp_path, rounds=4)
    app = HoldingClientApp(cfg)
    engine = chain_engine(tmp_path, app, cfg)
    engine.start_fresh()
    engine.run_round(1)
    engine.run_round(2)
    again = chain_engine(tmp_path, app, cfg)
    again.resume()
    assert again.state.history == engine.state.history
    assert again.state.init_digest == engine.state.init_digest
    for k, v in engine.state.server_residual.items():  # type: ignore[union-attr]
        np.testing.assert_array_equal(again.state.server_residual[k], v)  # type: ignore[index]
    for cid in range(cfg.federation.clients):  # first contacts and returning clients
        task = again.make_task(3, cid)
        held = apply_downlink(app.downlink, task, app.initial)
        for k, v in engine.state.params.items():
            np.testing.assert_array_equal(held[k], v)
    first = again.make_task(3, next(c for c in range(12) if c not in engine.state.clients))
    chain = decode_chain(first.downlink)
    assert chain.base_version == 0 and len(chain.deltas) == 2
    held = apply_chain(app.downlink, app.initial, chain)
    np.testing.assert_array_equal(held["lora_A"], engine.state.params["lora_A"])


def test_chain_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"codec\.downlink_density"):
        JobConfig().replace({"codec.downlink_density": 0.0})
    with pytest.raises(ConfigError, match=r"codec\.downlink"):
        JobConfig().replace({"codec.downlink": "zip"})
