"""Tiered Offsite-Tuning: which clients train on the full backbone, that they really do
(and that the others never load it), the tier each result reports, the config and the
flag — on a tiny random BERT (the federated runs are in tests/integration/test_offsite.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedpeft.adapters import load_trainable_state, trainable_state
from fedpeft.adapters.offsite import build_emulator, build_plugin_model
from fedpeft.client.factory import app_factory, full_model_clients, job_tiers
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.config import JobConfig
from fedpeft.coordinator.collect import client_metrics
from fedpeft.errors import ConfigError
from fedpeft.models.registry import Task
from fedpeft.protocol.codecs import uplink_codec
from fedpeft.protocol.messages import ClientState, TrainResult, TrainTask
from fedpeft.training.encode import encode
from fedpeft.training.loop import train_local
from fedpeft.training.setup import load_job_data
from unit.test_offsite import make_tiny_backbone, offsite_job


# ---- the tier draw ---------------------------------------------------------------------------
@given(
    clients=st.integers(1, 500),
    fraction=st.floats(0.0, 1.0, allow_nan=False),
    seed=st.integers(0, 2**31 - 1),
)
def test_full_model_clients_is_a_seeded_share(clients: int, fraction: float, seed: int) -> None:
    chosen = full_model_clients(clients, fraction, seed)
    assert len(chosen) == min(clients, int(np.floor(fraction * clients + 0.5)))
    assert all(0 <= c < clients for c in chosen)
    assert full_model_clients(clients, fraction, seed) == chosen  # deterministic


def test_full_model_clients_examples() -> None:
    assert full_model_clients(4, 0.0, 0) == frozenset()
    assert full_model_clients(4, 1.0, 0) == frozenset(range(4))
    assert len(full_model_clients(4, 0.5, 0)) == 2
    assert len(full_model_clients(10, 0.25, 0)) == 3  # 2.5 rounds up
    # the draw depends on the seed (not always the first ids)
    draws = {full_model_clients(20, 0.25, seed) for seed in range(5)}
    assert len(draws) > 1 and frozenset(range(5)) not in draws


# ---- config and flag -------------------------------------------------------------------------
@pytest.mark.parametrize("value", [-0.1, 1.5, "half"])
def test_bad_fraction_names_the_field(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"federation\.full_model_fraction"):
        JobConfig().replace({"federation.full_model_fraction": value})


def test_fraction_needs_an_offsite_job() -> None:
    with pytest.raises(ConfigError, match=r"federation\.full_model_fraction.*offsite"):
        JobConfig().replace({"federation.full_model_fraction": 0.5})


def test_flag_is_a_simulation_option() -> None:
    from fedpeft.cli.coordinator import serve
    from fedpeft.cli.simulate import simulate

    flags = {flag for o in simulate.job_options for _, flag in o.spellings}  # type: ignore[attr-defined]
    served = {o.key for o in serve.job_options}  # type: ignore[attr-defined]
    assert "--full-model-fraction" in flags
    assert "federation.full_model_fraction" not in served  # a daemon declares its own tier


# ---- the tier of each result -----------------------------------------------------------------
def test_tier_metrics_pass_the_coordinators_allow_list() -> None:
    """What the round line counts comes from the client's metrics through the allow-list;
    out-of-range values are still dropped."""
    sent = {"tier_full": 1.0, "tier_emulator": 0.0, "train_loss": 0.5}
    kept, dropped = client_metrics(TrainResult(1, 3, num_examples=4, metrics=sent))
    assert kept == sent and dropped == 0
    kept, dropped = client_metrics(
        TrainResult(1, 3, num_examples=4, metrics={"tier_full": 7.0, "tier_emulator": -1.0})
    )
    assert kept == {} and dropped == 2


# ---- the app: full-tier clients train on the full backbone -----------------------------------
@pytest.fixture(scope="module")
def tiered_job(tmp_path_factory: pytest.TempPathFactory, tiny_text_file: Path) -> JobConfig:
    root = tmp_path_factory.mktemp("tiers")
    backbone = make_tiny_backbone(root / "bert", "bert")
    build_emulator(str(backbone), root / "emu", adapter_blocks=1, keep_middle=2)
    return offsite_job(
        backbone,
        root / "emu",
        **{
            "data.train": str(tiny_text_file),
            "train.max_steps": 3,
            "train.batch_size": 8,
            "train.lr": 1e-2,
            "federation.clients": 4,
            "federation.clients_per_round": 2,
            "federation.partition": "iid",
            "federation.full_model_fraction": 0.5,
        },
    )


def _task(app: Any, client_id: int) -> TrainTask:
    return TrainTask(
        round=1,
        client_id=client_id,
        seed=11,
        downlink=FULL_WEIGHTS_CODEC.encode(app.initial_state()),
        downlink_is_delta=False,
        version=0,
        state=ClientState(),
        indices=np.arange(16),
    )


def _delta(app: Any, result: TrainResult) -> dict[str, np.ndarray]:
    assert result.ok, result.error
    return uplink_codec(app.cfg.codec).decode(result.payload)


def test_full_tier_client_trains_on_the_full_backbone(tiered_job: JobConfig) -> None:
    """Adversary: an app that says `tier_full` but trains on the emulator anyway. The
    full-tier update must equal training the adapter inside the full backbone (rebuilt
    here independently), and differ from the emulator-tier update of the same task."""
    from fedpeft.client.offsite import OffsiteClientApp

    full = sorted(job_tiers(tiered_job))
    emulator_only = OffsiteClientApp(tiered_job)  # no full-model clients
    tiered = OffsiteClientApp(tiered_job, full_model=frozenset(full))
    cid = full[0]

    on_emulator = emulator_only.train(_task(emulator_only, cid))
    on_full = tiered.train(_task(tiered, cid))
    assert emulator_only._plugin is None  # emulator-tier training never loads the backbone

    # the same training, by hand, on the owner's plug-in model
    data = load_job_data(tiered_job)
    plugin = build_plugin_model(tiered_job, Task.CLASSIFICATION, data.label_names)
    load_trainable_state(plugin.model, tiered.initial_state())
    before = {k: v.clone() for k, v in trainable_state(plugin.model).items()}
    shard = encode(plugin.tokenizer, data.train, tiered_job.data.max_length).subset(np.arange(16))
    train_local(plugin.model, shard, tiered_job.train, seed=11)
    by_hand = {k: (v - before[k]).numpy() for k, v in trainable_state(plugin.model).items()}

    got_full, got_emulator = _delta(tiered, on_full), _delta(emulator_only, on_emulator)
    assert set(got_full) == set(got_emulator) == set(by_hand)  # one cohort: same tensors
    for name in by_hand:
        torch.testing.assert_close(
            torch.from_numpy(got_full[name]), torch.from_numpy(by_hand[name])
        )
    assert any(not np.allclose(got_full[k], got_emulator[k]) for k in by_hand)
    assert on_full.metrics["tier_full"] == 1.0 and on_full.metrics["tier_emulator"] == 0.0
    assert on_emulator.metrics["tier_full"] == 0.0
    assert on_emulator.metrics["tier_emulator"] == 1.0


def test_factory_gives_the_jobs_tiers_and_emulator_tier_never_loads_the_backbone(
    tiered_job: JobConfig,
) -> None:
    app = app_factory(tiered_job)("w0")
    others = [c for c in range(4) if c not in job_tiers(tiered_job)]
    for cid in others:
        result = app.train(_task(app, cid))
        assert result.metrics["tier_emulator"] == 1.0
    assert app._plugin is None
    result = app.train(_task(app, sorted(job_tiers(tiered_job))[0]))
    assert result.metrics["tier_full"] == 1.0 and app._plugin is not None
    # after a full-tier task the app trains on the emulator again
    assert app.model is not app.plugin().model
    assert app.train(_task(app, others[0])).metrics["tier_emulator"] == 1.0
