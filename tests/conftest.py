"""Shared fixtures: tiny datasets, the packaged MiniLM, paths to ../shared/data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fedpeft.config import JobConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that need ../shared/data skip without it)")
    return path


POSITIVE = [
    "a wonderful, moving film",
    "great acting and a lovely story",
    "i loved every minute",
    "brilliant and funny",
    "a joy to watch",
    "superb direction, warm heart",
]
NEGATIVE = [
    "a dull, boring mess",
    "terrible acting and a bad plot",
    "i hated every minute",
    "awful and tedious",
    "a waste of time",
    "clumsy, ugly and long",
]


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 `<label> <text>` lines, two classes (sentiment), deterministic."""
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    lines = []
    for i in range(4):
        for p, n in zip(POSITIVE, NEGATIVE, strict=True):
            lines.append(f"1 {p} {i}")
            lines.append(f"0 {n} {i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def small_job(data: Path, out: Path, rounds: int, **federation: Any) -> JobConfig:
    """A 4-client IID federation, 2 clients per round, with ``data`` as both training and
    evaluation set; ``federation`` adds ``federation.<key>`` settings."""
    from fedpeft.config import JobConfig

    settings: dict[str, Any] = {
        "data.train": str(data),
        "data.eval": str(data),
        "output": str(out),
        "federation.clients": 4,
        "federation.clients_per_round": 2,
        "federation.rounds": rounds,
        "federation.partition": "iid",
    }
    settings.update({f"federation.{key}": value for key, value in federation.items()})
    return JobConfig().replace(settings)


def run_records(
    cfg: JobConfig, app_factory: Callable[[str], Any], resume: bool = False
) -> list[dict[str, Any]]:
    """Run the simulation in process (no export) and return its metrics.jsonl records."""
    from fedpeft.rundir import RunDir
    from fedpeft.simulation import run_simulation

    run_simulation(cfg, resume=resume, app_factory=app_factory, export=False)
    return RunDir(cfg.output).read_metrics()


class NumpyClientApp:
    """A client app without a model: each client's "training" adds a fixed, seeded update
    (client-specific) to the weights it holds, so tests of the round engine, secure
    aggregation and DP know every update exactly. It sends through the real
    :class:`~fedpeft.client.update.UpdateSender` (codec, DP clip, masking)."""

    def __init__(self, cfg: JobConfig, name: str = "numpy", scale: float = 0.01) -> None:
        from fedpeft.client.mods import reject_nonfinite
        from fedpeft.client.update import UpdateSender
        from fedpeft.protocol.codecs import uplink_codec

        self.cfg = cfg
        self.name = name
        self.scale = scale
        self.SHAPES: dict[str, tuple[int, ...]] = {"lora_A": (4, 6), "lora_B": (6, 4), "head": (3,)}
        self.sender = UpdateSender(uplink_codec(cfg.codec), [reject_nonfinite], cfg.codec)
        self.sent: dict[tuple[int, int], Any] = {}  # (round, client) -> the update it trained

    def initial_state(self) -> dict[str, Any]:
        import numpy as np

        return {k: np.zeros(s, np.float32) for k, s in self.SHAPES.items()}

    def update_of(self, client_id: int) -> dict[str, Any]:
        import numpy as np

        rng = np.random.default_rng([7, client_id])
        return {
            k: (self.scale * rng.standard_normal(s)).astype(np.float32)
            for k, s in self.SHAPES.items()
        }

    def num_examples(self, client_id: int) -> int:
        return 10 + client_id

    def train(self, task: Any) -> Any:
        from fedpeft.client.mods import ModContext
        from fedpeft.protocol.codecs import apply_downlink, downlink_codec
        from fedpeft.protocol.messages import ClientState, TrainResult

        if task.kind.startswith("secagg_"):
            return self.sender.stage(task, self.name)
        apply_downlink(downlink_codec(self.cfg.codec), task, self.initial_state())
        delta = self.update_of(task.client_id)
        self.sent[(task.round, task.client_id)] = delta
        state = ClientState(version=task.version, residual=task.state.residual)
        # an honest client reports its shard's size (the engine caps it by the largest)
        n = len(task.indices) if task.indices is not None else self.num_examples(task.client_id)
        ctx = ModContext(task.client_id, task.round, n, state)
        # as LoraClientApp: under SecAgg the learning report travels masked, nothing clear
        payload = self.sender.encode(task, delta, ctx, {"train_loss": 1.0, "train_steps": 1.0})
        return TrainResult(
            task.round,
            task.client_id,
            num_examples=0 if task.secagg else n,
            payload=payload,
            metrics=self.sender.clear_metrics(task, {"train_loss": 1.0, **ctx.info}),
            state=state,
            worker=self.name,
        )

    def evaluate(self, params: dict[str, Any]) -> dict[str, float]:
        return {}


# ---- a round engine over NumpyClientApp (secure, private and plain rounds) -----------
ENGINE_CLIENTS = 8


def engine_job(tmp_path: Path, **settings: Any) -> JobConfig:
    """A small job for :func:`engine_for`: 8 clients, 6 per round, one round."""
    from fedpeft.config import JobConfig

    base: dict[str, Any] = {
        "output": str(tmp_path / "run"),
        "federation.clients": ENGINE_CLIENTS,
        "federation.clients_per_round": 6,
        "federation.rounds": 1,
    }
    base.update(settings)
    return JobConfig().replace(base)


class Spy:
    """A backend wrapper that keeps every task and result crossing it (the coordinator's
    whole view of the clients)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tasks: list[Any] = []
        self.results: list[Any] = []

    def initial_state(self) -> Any:
        return self.inner.initial_state()

    def run(self, tasks: Any, on_result: Callable[[Any], None] | None = None) -> list[Any]:
        self.tasks.extend(tasks)
        out = list(self.inner.run(tasks, on_result))
        self.results.extend(out)
        return out

    def evaluate(self, params: Any) -> dict[str, float]:
        return {}

    def shutdown(self) -> None:
        pass


def engine_for(
    cfg: JobConfig,
    app: NumpyClientApp,
    *,
    secure: Any = None,
    dropout: tuple[float, str] | None = None,
    privacy: Any = None,
) -> tuple[Any, Spy]:
    """A started RoundEngine over ``app`` in-process (``secure``: a SecureRound;
    ``dropout``: (rate, stage) of simulated dropouts; ``privacy``: a mechanism)."""
    import numpy as np

    from fedpeft.aggregation import make_strategy
    from fedpeft.coordinator.engine import RoundEngine
    from fedpeft.coordinator.sampling import ClientSampler
    from fedpeft.protocol.codecs import downlink_codec, uplink_codec
    from fedpeft.rundir import RunDir
    from fedpeft.simulation.client_store import CLIENTS_DIR, stateful_factory
    from fedpeft.simulation.dropout import DropoutBackend
    from fedpeft.simulation.inprocess import InProcessBackend

    # each client's own state stays on the client side, as in run_simulation
    backend: Any = InProcessBackend(
        stateful_factory(lambda _name: app, Path(cfg.output) / CLIENTS_DIR)
    )
    if dropout is not None:
        backend = DropoutBackend(backend, dropout[0], dropout[1], seed=0)
    spy = Spy(backend)
    fed = cfg.federation
    run = RunDir(cfg.output)
    run.create(cfg, {"task": "classification", "label_names": ["a", "b"]})
    engine = RoundEngine(
        backend=spy,
        strategy=make_strategy(fed),
        sampler=ClientSampler(fed.clients, fed.clients_per_round, fed.sampling, 0),
        shards=[np.arange(10 + c) for c in range(fed.clients)],  # num_examples(c) each
        uplink=uplink_codec(cfg.codec),
        downlink=downlink_codec(cfg.codec),
        run=run,
        rounds=fed.rounds,
        seed=0,
        collection=secure,
        privacy=privacy,
    )
    engine.start_fresh()
    return engine, spy


def secure_round(bits: int = 40, density: float = 1.0, clip: float = 0.1) -> Any:
    from fedpeft.coordinator.secure import SecureRound

    return SecureRound(
        tolerated_dropout=0.34,
        bits=bits,
        clip_range=clip,
        weight_cap=64,
        density=density,
        seed=0,
    )
