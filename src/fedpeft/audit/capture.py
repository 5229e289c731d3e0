"""What the coordinator holds of a round, captured while a real job runs.

The audit plays an honest-but-curious coordinator: it runs the user's job through the
same :class:`~fedpeft.coordinator.job.Job` as ``fedpeft simulate`` and keeps, per round,
exactly what the engine's :class:`~fedpeft.coordinator.collect.Collection` hands the
engine — each client's decoded update in a plain round, the decoded sum and the round's
record under SecAgg+. It wraps the job's collection (habit 3: wrap, don't subclass the
engine); nothing is read from a client's memory.

One thing the engine keeps is left out on purpose: the per-client ``ClientState``. A
simulation ships it with each task so any worker can serve any virtual client, but in a
deployment it stays on the client's device; an attack on it would measure the simulator,
not the coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpeft.aggregation import ClientUpdate
from fedpeft.coordinator.collect import Collected, Collection, PlainCollection, RoundContext
from fedpeft.protocol.messages import TrainTask

if TYPE_CHECKING:
    from fedpeft.config import JobConfig
    from fedpeft.coordinator.engine import EngineHooks
    from fedpeft.privacy.secagg.updates import SecureSum


@dataclass
class RoundView:
    """What the coordinator holds after collecting one round."""

    round_num: int
    #: the clients it sampled (it chose them) and the learning rate it sent each
    cohort: list[int]
    lr: dict[int, float | None]
    #: the round's record as the collection returned it (counts, bytes, client means)
    record: dict[str, Any]
    #: plain round: each usable client's decoded update
    updates: dict[int, ClientUpdate] | None = None
    #: secure round: the decoded sum of the survivors' updates, and how many it holds
    total: SecureSum | None = None
    summed_clients: int = 0
    failed: str | None = None

    @property
    def secure(self) -> bool:
        return self.updates is None


@dataclass
class Observer:
    """Collects one :class:`RoundView` per collected round."""

    views: list[RoundView] = field(default_factory=list)

    def keep(self, ctx: RoundContext, tasks: Sequence[TrainTask], out: Collected) -> None:
        updates = None
        if out.updates is not None:
            updates = {u.client_id: u for u in out.updates}
        self.views.append(
            RoundView(
                round_num=ctx.round_num,
                cohort=[t.client_id for t in tasks],
                lr={t.client_id: t.settings.lr for t in tasks},
                record=dict(out.record),
                updates=updates,
                total=out.total,
                summed_clients=out.clients,
                failed=out.failed,
            )
        )


class ObservedPlainCollection(PlainCollection):
    """The plain collection, each round's decoded updates kept by ``observer``. A
    subclass, not a wrapper: the engine and the privacy mechanisms tell a plain round
    from a secure one by this type."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def collect(self, ctx: RoundContext, tasks: Sequence[TrainTask]) -> Collected:
        out = super().collect(ctx, tasks)
        self.observer.keep(ctx, tasks, out)
        return out


class ObservedCollection:
    """Any other collection (SecAgg+), what it returns to the engine kept by
    ``observer``; every other attribute is the wrapped collection's."""

    def __init__(self, inner: Collection, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer

    def check_strategy(self, strategy: Any) -> None:
        self.inner.check_strategy(strategy)

    def collect(self, ctx: RoundContext, tasks: Sequence[TrainTask]) -> Collected:
        out = self.inner.collect(ctx, tasks)
        self.observer.keep(ctx, tasks, out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def observe(collection: Collection | None, observer: Observer) -> Collection:
    """The job's collection (None: plain) with what it hands the engine kept."""
    if collection is None or type(collection) is PlainCollection:
        return ObservedPlainCollection(observer)
    return ObservedCollection(collection, observer)


@dataclass
class ObservedJob:
    """A job run under observation: the coordinator's views, the ground truth the
    attacks are scored against (each client's shard and the training labels) and the
    run's summary."""

    views: list[RoundView]
    shards: list[np.ndarray]
    labels: np.ndarray | None  # None: not a classification job
    label_names: list[str] | None
    summary: dict[str, Any]
    seconds: float


def run_observed(
    cfg: JobConfig, *, hooks: EngineHooks | None = None, force: bool = False
) -> ObservedJob:
    """Run ``cfg`` as ``fedpeft simulate`` does (same job, shards, sampler and backend)
    and keep what the coordinator holds each round."""
    from fedpeft.data import ClassificationData
    from fedpeft.simulation.run import make_shards, run_simulation
    from fedpeft.training.setup import load_job_data

    started = time.perf_counter()
    shards, meta = make_shards(cfg)  # the ground truth: run_simulation deals the same ones
    observer = Observer()
    summary = run_simulation(
        cfg,
        hooks=hooks,
        force=force,
        export=True,  # the released adapter: what membership inference attacks
        wrap_collection=lambda collection: observe(collection, observer),
    )
    train = load_job_data(cfg).train
    labels = np.asarray(train.labels) if isinstance(train, ClassificationData) else None
    return ObservedJob(
        views=observer.views,
        shards=[np.asarray(s) for s in shards],
        labels=labels,
        label_names=meta.get("label_names"),
        summary=summary,
        seconds=time.perf_counter() - started,
    )
