"""The simulated clients' own state, kept where a device would keep it: beside the
backend, never in the coordinator's hands.

A real client keeps what it carries between its rounds — the global adapter as it
reconstructed it, and its error-feedback residual (the unsent part of its own update) —
on its device. A virtual client's worker process is not its device (any worker may serve
any client), so :class:`ClientStore` keeps each virtual client's state in its own folder,
``<run>/clients/<client id>/``, and :class:`StatefulApp` wraps a worker's client app: it
loads the client's state into each task and saves what the app returns, and hands the
engine only the fact that the client now holds the task's version — no tensor. Nothing
in :mod:`fedpeft.coordinator` opens this folder; the coordinator's checkpoint holds none
of it.

**Which state a task gets.** Each saved state is named by the global version the client
holds in it (``v<version>.safetensors``). A task carries the version the coordinator
believes the client holds (``task.state.version``); the client loads exactly that one.
So when the coordinator never saw a result (a simulated dropout after training, a crash
before the round was committed), the client continues from the state the coordinator
knows, as if the lost round had not happened — the same state a resumed run gives it.
After a save the client keeps only two states: the one it started the task from and the
new one, the two the coordinator can believe it holds.

On a Ray cluster of several machines ``<run>/clients`` must be on storage every worker
can reach (as the run folder already is for the coordinator).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from fedpeft.protocol.messages import (
    AppFactory,
    ClientApp,
    ClientState,
    Tensors,
    TrainResult,
    TrainTask,
)
from fedpeft.rundir import CLIENTS_DIR

__all__ = ["CLIENTS_DIR", "ClientStore", "StatefulApp", "stateful_factory"]


class ClientStore:
    """Per-virtual-client state files under ``root`` (``<run>/clients``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, client_id: int) -> Path:
        return self.root / str(int(client_id))

    def path(self, client_id: int, version: int) -> Path:
        return self.folder(client_id) / f"v{int(version)}.safetensors"

    def versions(self, client_id: int) -> list[int]:
        folder = self.folder(client_id)
        if not folder.is_dir():
            return []
        out = []
        for p in folder.glob("v*.safetensors"):
            try:
                out.append(int(p.stem[1:]))
            except ValueError:
                continue
        return sorted(out)

    def load(self, client_id: int, version: int) -> ClientState:
        """The client's state at global ``version`` (a fresh state for version < 0)."""
        if version < 0:
            return ClientState()
        path = self.path(client_id, version)
        if not path.is_file():
            raise FileNotFoundError(
                f"virtual client {client_id} has no saved state for version {version} "
                f"({path}); was the run's clients/ folder removed?"
            )
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        held = {k[len("held/") :]: v for k, v in tensors.items() if k.startswith("held/")}
        residual = {
            k[len("residual/") :]: v for k, v in tensors.items() if k.startswith("residual/")
        }
        return ClientState(version=version, held=held or None, residual=residual or None)

    def save(self, client_id: int, state: ClientState, keep: int | None = None) -> None:
        """Write ``state`` atomically as its version's file; then drop every other saved
        version but ``keep`` (the one the task started from)."""
        from safetensors.numpy import save_file

        folder = self.folder(client_id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tensors: dict[str, np.ndarray] = {}
        for kind, part in (("held", state.held), ("residual", state.residual)):
            for name, value in (part or {}).items():
                tensors[f"{kind}/{name}"] = np.ascontiguousarray(value)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".v", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp)
            os.replace(tmp, self.path(client_id, state.version))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for version in self.versions(client_id):
            if version not in (state.version, keep):
                self.path(client_id, version).unlink(missing_ok=True)


class StatefulApp:
    """A worker's client app with each virtual client's state kept in a :class:`ClientStore`
    (see the module docstring). Results reach the engine without the client's tensors."""

    def __init__(self, inner: ClientApp, store: ClientStore) -> None:
        self.inner = inner
        self.store = store

    def initial_state(self) -> Tensors:
        return self.inner.initial_state()

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return self.inner.evaluate(params)

    def train(self, task: TrainTask) -> TrainResult:
        if task.kind != "train":  # protocol stages and statistics carry no client state
            return self.inner.train(task)
        start = task.state.version
        try:
            own = self.store.load(task.client_id, start)
        except FileNotFoundError as exc:
            return TrainResult(task.round, task.client_id, error=str(exc))
        result = self.inner.train(_with_state(task, own))
        if result.ok:  # it applied the downlink: it holds the task's version now
            new = result.state if result.state is not None else ClientState(task.version)
            self.store.save(task.client_id, new, keep=start)
            # the engine learns only that the client now holds this version
            result.state = ClientState(version=new.version)
        return result


def _with_state(task: TrainTask, state: ClientState) -> TrainTask:
    return dataclasses.replace(task, state=state)


def stateful_factory(factory: AppFactory, root: str | Path) -> AppFactory:
    """``factory`` whose apps keep each virtual client's state under ``root``."""
    root = Path(root)

    def build(name: str) -> ClientApp:
        return StatefulApp(factory(name), ClientStore(root))

    return build
