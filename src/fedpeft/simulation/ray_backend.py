"""Ray backend: a few long-lived workers serve hundreds of virtual clients.

A Ray actor is a whole Python process (~48 MiB before any model; 300 of them never
started on a 2-core machine), so we never make one actor per client. Each worker loads
the frozen backbone **once** and then swaps only the adapter weights, data shard and
client state per task. Tasks are dispatched to whichever worker is free; a worker that
dies is replaced and its task retried (``worker_retries``) — a failed task is reported,
never averaged. ``address`` joins an existing Ray cluster (``ray.init(address=...)``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fedpeft.errors import OptionalDependencyMissing
from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask

if TYPE_CHECKING:  # workers should not import torch unless their client app needs it
    from fedpeft.protocol.messages import AppFactory
    from fedpeft.training.loop import EvalSums

log = logging.getLogger(__name__)

CHUNKS_PER_WORKER = 4  # per round: amortise Ray round trips, keep load balanced


def _task_size(task: TrainTask) -> int:
    return 0 if task.indices is None else len(task.indices)


def _deliver(
    chunk: list[TrainResult],
    results: list[TrainResult],
    on_result: Callable[[TrainResult], None] | None,
) -> None:
    """Add a chunk's results to the round's, telling ``on_result`` of each."""
    for result in chunk:
        results.append(result)
        if on_result is not None:
            on_result(result)


def require_ray() -> Any:
    if importlib.util.find_spec("ray") is None:
        raise OptionalDependencyMissing("ray", "sim")
    import ray

    return ray


class _Worker:
    """The actor body: holds one client app (one backbone) for its whole life."""

    def __init__(self, app_factory: AppFactory, name: str) -> None:
        self.name = name
        self.app = app_factory(name)

    def ready(self) -> str:
        return self.name

    def initial_state(self) -> Tensors:
        return self.app.initial_state()

    def train_many(self, tasks: list[TrainTask]) -> list[TrainResult]:
        return [self.app.train(task) for task in tasks]

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return self.app.evaluate(params)

    def evaluate_part(self, params: Tensors, part: int, parts: int) -> EvalSums | None:
        """One slice of the evaluation set, or None when the app cannot split it."""
        split = getattr(self.app, "evaluate_part", None)
        return None if split is None else split(params, part, parts)  # type: ignore[no-any-return]


class RayBackend:
    def __init__(
        self,
        app_factory: AppFactory,
        *,
        workers: int = 2,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        address: str | None = None,
        retries: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        ray = require_ray()
        self.ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address:
                kwargs["address"] = address
            kwargs.update(init_kwargs or {})
            ray.init(**kwargs)
        self.app_factory = app_factory
        self.retries = retries
        self._actor_cls = ray.remote(
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0
        )(_Worker)
        self._serial = 0
        # secure aggregation: a client's stages of one round run on one worker, whose
        # memory holds the client's protocol secrets between stages ((round, client) -> slot)
        self._pins: dict[tuple[int, int], int] = {}
        self.actors = [self._spawn() for _ in range(workers)]
        ray.get([a.ready.remote() for a in self.actors])  # surface start-up errors now

    def _spawn(self) -> Any:
        self._serial += 1
        return self._actor_cls.remote(self.app_factory, f"ray-{self._serial}")

    def initial_state(self) -> Tensors:
        return self.ray.get(self.actors[0].initial_state.remote())  # type: ignore[no-any-return]

    def run(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None = None
    ) -> list[TrainResult]:
        """Run every task; tasks go out in chunks, a few per worker per round.

        One Ray call per task costs a scheduling round trip and one serialisation of the
        shared downlink per client; a chunk pickles the (identical) global weights once
        and amortises the round trip, while a few chunks per worker still balance load.
        """
        ray = self.ray
        if any(t.kind.startswith("secagg_") or t.secagg for t in tasks):
            return self._run_pinned(tasks, on_result)
        per_chunk = max(1, math.ceil(len(tasks) / (len(self.actors) * CHUNKS_PER_WORKER)))
        # Longest first (LPT): the big shards start at once and the small ones fill the
        # gaps, so no worker idles through the round's tail while another finishes a
        # large client (Dirichlet shards differ in size by 10x). Results are aggregated
        # in client order by the engine, so the order here changes no number.
        ordered = sorted(tasks, key=_task_size, reverse=True)
        queue = [list(ordered[i : i + per_chunk]) for i in range(0, len(ordered), per_chunk)]
        attempts = {t.client_id: 0 for t in tasks}
        idle = list(range(len(self.actors)))
        running: dict[Any, tuple[int, list[TrainTask]]] = {}
        results: list[TrainResult] = []

        def submit() -> None:
            while queue and idle:
                slot = idle.pop()
                chunk = queue.pop(0)
                running[self.actors[slot].train_many.remote(chunk)] = (slot, chunk)

        submit()
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            slot, chunk = running.pop(done[0])
            chunk_results, retry = self._collect(done[0], slot, chunk, attempts)
            if retry:
                queue.append(retry)
            idle.append(slot)
            _deliver(chunk_results, results, on_result)
            submit()
        return results

    def _collect(
        self, ref: Any, slot: int, chunk: list[TrainTask], attempts: dict[int, int]
    ) -> tuple[list[TrainResult], list[TrainTask]]:
        """A finished chunk's results, and the tasks to run again: a dead worker is
        replaced, and each of its clients is retried up to ``retries`` times, then reported
        failed; a task that raised is reported failed at once."""
        ray = self.ray
        try:
            return ray.get(ref), []
        except ray.exceptions.RayActorError as exc:
            log.warning("worker died running clients %s: %s", [t.client_id for t in chunk], exc)
            self.actors[slot] = self._spawn()
            failed: list[TrainResult] = []
            retry: list[TrainTask] = []
            for task in chunk:
                attempts[task.client_id] += 1
                if attempts[task.client_id] <= self.retries:
                    retry.append(task)
                else:
                    error = f"worker died: {type(exc).__name__}"
                    failed.append(TrainResult(task.round, task.client_id, error=error))
            return failed, retry
        except ray.exceptions.RayTaskError as exc:
            error = f"task failed: {exc}"
            return [TrainResult(t.round, t.client_id, error=error) for t in chunk], []

    def _run_pinned(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None
    ) -> list[TrainResult]:
        """Secure-aggregation stages: every (round, client) runs on the worker that holds
        its secrets, assigned round-robin when its keys are advertised (which balances the
        training stage too). A worker that dies takes its clients' secrets with it: they
        are reported as failed (the protocol treats them as dropped), never retried."""
        ray = self.ray
        if tasks and tasks[0].kind == "secagg_advertise":
            current = tasks[0].round
            self._pins = {k: v for k, v in self._pins.items() if k[0] == current}
            for i, task in enumerate(sorted(tasks, key=lambda t: t.client_id)):
                self._pins[(task.round, task.client_id)] = i % len(self.actors)
        per_slot: dict[int, list[TrainTask]] = {}
        for task in tasks:
            slot = self._pins.setdefault((task.round, task.client_id), 0)
            per_slot.setdefault(slot, []).append(task)
        # a few chunks per worker, each worker working through its own queue in order
        queues: dict[int, list[list[TrainTask]]] = {}
        for slot, mine in per_slot.items():
            size = max(1, math.ceil(len(mine) / CHUNKS_PER_WORKER))
            queues[slot] = [mine[i : i + size] for i in range(0, len(mine), size)]
        running: dict[Any, tuple[int, list[TrainTask]]] = {}
        for slot, queue in queues.items():
            chunk = queue.pop(0)
            running[self.actors[slot].train_many.remote(chunk)] = (slot, chunk)
        results: list[TrainResult] = []
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            slot, chunk = running.pop(done[0])
            try:
                chunk_results = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                log.warning("worker died holding clients %s: %s", [t.client_id for t in chunk], exc)
                if isinstance(exc, ray.exceptions.RayActorError):
                    self.actors[slot] = self._spawn()
                error = f"worker failed: {type(exc).__name__}"
                chunk_results = [TrainResult(t.round, t.client_id, error=error) for t in chunk]
            _deliver(chunk_results, results, on_result)
            if queues[slot]:
                chunk = queues[slot].pop(0)
                running[self.actors[slot].train_many.remote(chunk)] = (slot, chunk)
        return results

    def evaluate(self, params: Tensors) -> dict[str, float]:
        """Every worker evaluates one slice of the evaluation set at once, so evaluation
        uses all the workers' CPUs (one worker alone, with one CPU, left the rest idle
        between rounds); the sums add up to exactly the whole set's metrics. Apps that
        cannot split their evaluation run it whole on the first worker."""
        from fedpeft.training.loop import finish_eval

        ref = self.ray.put(params)  # one copy in the object store for every worker
        n = len(self.actors)
        parts = self.ray.get([a.evaluate_part.remote(ref, i, n) for i, a in enumerate(self.actors)])
        if any(p is None for p in parts):
            return self.ray.get(self.actors[0].evaluate.remote(ref))  # type: ignore[no-any-return]
        return finish_eval(parts)

    def shutdown(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._owns_ray:  # we started it: stop its helper processes too
            self.ray.shutdown()
