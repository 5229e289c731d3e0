"""Under SecAgg nothing derived from one client's data is held by the coordinator — in
simulation as in a deployment (issue 26, finding 1).

The adversary is the coordinator itself, reading everything it keeps after a run: every
file of the run folder outside ``clients/`` (the checkpoint included) and every result
that crossed the backend into the engine. Each client's own update and its error-feedback
residual (the coordinates compression did not send: ~90 % of its update at density 0.1)
must not be recoverable from any of it. Runs through ``run_simulation`` with model-free
clients whose updates are known exactly (:class:`NumpyClientApp`), for a dense, a
compressed and a distributed-DP compressed job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpeft.coordinator.engine import EngineHooks
from fedpeft.rundir import CLIENTS_DIR, RunDir
from fedpeft.simulation import run_simulation
from fedpeft.simulation.client_store import ClientStore
from tests.conftest import NumpyClientApp, small_job

SHAPES = {"lora_A": (16, 40), "lora_B": (40, 16), "head": (3,)}
CLIENTS = 6
CASES: dict[str, dict[str, Any]] = {
    "dense": {"codec.name": "dense"},
    "compeft": {"codec.name": "compeft", "codec.density": 0.1},
    "compeft+dp": {
        "codec.name": "compeft",
        "codec.density": 0.1,
        "dp.mode": "distributed",
        "dp.noise_multiplier": 0.5,
        "dp.delta": 1e-5,
        "dp.clip": 1.0,
    },
}


class Recorder:
    """Every result that reaches the engine, from one shared model-free client app."""

    def __init__(self, cfg: Any) -> None:
        self.app = NumpyClientApp(cfg)
        self.app.SHAPES = dict(SHAPES)
        self.results: list[Any] = []

    def __call__(self, _name: str) -> Recorder:
        return self

    def initial_state(self) -> Any:
        return self.app.initial_state()

    def train(self, task: Any) -> Any:
        result = self.app.train(task)
        if task.kind == "train":
            result.num_examples = 0 if task.secagg else len(task.indices)
        return result

    def evaluate(self, params: Any) -> dict[str, float]:
        return {}


def coordinator_arrays(run: Path) -> list[tuple[str, np.ndarray]]:
    """Every tensor in the run folder outside ``clients/``."""
    from safetensors.numpy import load_file

    out = []
    for path in run.rglob("*.safetensors"):
        if CLIENTS_DIR in path.relative_to(run).parts[:1]:
            continue
        out.extend(load_file(str(path)).items())
    return out


def coordinator_numbers(run: Path) -> list[float]:
    """Every number in the run folder's JSON and JSON-lines files outside ``clients/``."""
    numbers: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))

    for path in list(run.rglob("*.json")) + list(run.rglob("*.jsonl")):
        if CLIENTS_DIR in path.relative_to(run).parts[:1]:
            continue
        for line in (
            path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        ):
            if line.strip():
                walk(json.loads(line))
    return numbers


def matches(held: np.ndarray, secret: np.ndarray, where: np.ndarray) -> float:
    """Share of the coordinates ``where`` at which ``held`` equals ``secret``."""
    if held.shape != secret.shape or not where.any():
        return 0.0
    tol = 1e-6 * max(1e-12, float(np.abs(secret[where]).max()))
    return float(np.mean(np.abs(held[where] - secret[where]) <= tol))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_coordinator_holds_no_client_update_or_residual(
    tmp_path: Path, tiny_text_file: Path, case: str
) -> None:
    cfg = small_job(tiny_text_file, tmp_path / "run", 2, clients=CLIENTS).replace(
        {
            "federation.clients_per_round": CLIENTS,
            "secagg.enabled": True,
            "codec.error_feedback": True,
            **CASES[case],
        }
    )
    recorder = Recorder(cfg)
    hooks = EngineHooks(on_client_done=recorder.results.append)  # what reaches the engine
    run_simulation(cfg, app_factory=recorder, hooks=hooks, export=False)
    run = Path(cfg.output)
    assert [r["round"] for r in RunDir(run).read_metrics()] == [1, 2]

    # the clients' own state: one entry per client, each with its residual when compressed
    store = ClientStore(run / CLIENTS_DIR)
    owners = sorted(int(p.name) for p in (run / CLIENTS_DIR).iterdir())
    assert owners == list(range(CLIENTS))
    secrets: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, value, where secret)
    for cid in owners:
        update = recorder.app.update_of(cid)
        for name, value in update.items():
            secrets.append((name, value, value != 0))
        # the state it started its last task from, and the one it holds now
        assert len(store.versions(cid)) == 2
        for version in store.versions(cid):
            residual = store.load(cid, version).residual
            if CASES[case]["codec.name"] == "compeft":
                assert residual is not None, "error feedback kept nothing on the client"
                for name, value in residual.items():
                    secrets.append((name, value, value != 0))

    # everything the coordinator holds: files outside clients/, and the results it got
    held = coordinator_arrays(run)
    assert held, "the coordinator's checkpoint holds tensors"
    for name, secret, where in secrets:
        for held_name, value in held:
            if held_name.endswith(name) or value.shape == secret.shape:
                share = matches(value, secret, where)
                assert share < 0.5, f"{held_name} reproduces a client's {name} ({share:.0%})"
    numbers = np.asarray(coordinator_numbers(run))
    for _name, secret, where in secrets:
        values = secret[where][:32]
        found = np.isin(np.round(values, 7), np.round(numbers, 7)).mean() if values.size else 0
        assert found < 0.5
    # and no result brought a client's state to the engine
    for result in recorder.results:
        assert result.state is None or (result.state.held is None and result.state.residual is None)
