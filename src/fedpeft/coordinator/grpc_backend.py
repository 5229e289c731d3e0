"""The round engine's :class:`~fedpeft.coordinator.engine.Backend` over real clients.

Tasks go to connected client daemons through the :class:`~fedpeft.coordinator.handlers.Fleet`
(they pull them); results come back through PushResult. What the simulation ships inside
a task that a real client keeps itself — its data (``indices``), its error-feedback
residual, its held adapter, its SecAgg secrets — stays on the device: the daemon
substitutes its own. The coordinator still knows exactly which adapter each client holds
(it computes the same reconstruction from the downlink it sent), which is all a
compressed (delta) downlink needs.

Evaluation and the initial adapter run here, on the coordinator's own client app (it holds
the backbone and the evaluation data).

Rounds close on time: once ``min_fit_clients`` results are in, the others get a grace
period (``round_grace_factor`` times the median client time, at least
``round_grace_min_seconds``) and are then dropped as stragglers; ``round_timeout`` bounds
a round that never reaches its quorum. A client that disconnects (no heartbeat for
``liveness_seconds``) is dropped at once; a result that arrives after its round closed is
refused as late and counted. The engine's ``min_fit_clients`` decides whether the round
still counts. A result accepted before a coordinator crash is reused when the round runs
again. SecAgg stages wait for every client (the protocol has its own threshold).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec
from fedpeft.compression.chain import is_chain
from fedpeft.coordinator.handlers import Fleet, PendingTask, result_of
from fedpeft.protocol.codecs import apply_downlink
from fedpeft.protocol.messages import ClientApp, ClientState, Tensors, TrainResult, TrainTask
from fedpeft.protocol.version import STATE_MISMATCH

log = logging.getLogger(__name__)


class LiveClientSampler:
    """Samples ``per_round`` of the connected, ready clients, seeded by (seed, round).

    Waits until that many are ready (``wait_timeout`` None: forever); after a timeout it
    samples whoever is there and the engine's quorum decides.
    """

    def __init__(
        self, fleet: Fleet, per_round: int, seed: int, wait_timeout: float | None = None
    ) -> None:
        self.fleet, self.per_round, self.seed = fleet, per_round, seed
        self.wait_timeout = wait_timeout

    @property
    def rate(self) -> float:
        """Sampling rate q for an accountant: per_round over the registered clients."""
        return self.per_round / max(self.per_round, self.fleet.store.count_clients())

    def sample(self, round_num: int) -> list[int]:
        """The round's cohort. A round run again after a restart keeps first the clients
        whose results for it the store already accepted (they were acknowledged: their
        work is never dropped), then samples the rest of the ready clients."""
        kept = self.fleet.store.held_results(round_num)[: self.per_round]
        want = self.per_round - len(kept)
        if want <= 0:
            return sorted(kept)
        ready = [c for c in self.fleet.wait_ready(want, self.wait_timeout) if c not in kept]
        if len(ready) <= want:
            return sorted(kept + ready)
        rng = np.random.default_rng([self.seed, round_num, 0x5A4D])
        chosen = rng.choice(len(ready), size=want, replace=False)
        return sorted(kept + [ready[int(i)] for i in chosen])


class GrpcBackend:
    def __init__(
        self,
        fleet: Fleet,
        app: ClientApp,
        downlink: Codec,
        *,
        round_timeout: float = 14400.0,
        min_fit_clients: int | None = None,
    ) -> None:
        self.fleet = fleet
        self.app = app
        self.downlink = downlink
        self.round_timeout = round_timeout
        # None: the job's own federation.min_fit_clients, as sent to the daemons
        self.min_fit_clients = min_fit_clients or _job_min_fit(fleet.job_config)
        self._initial: Tensors | None = None

    def initial_state(self) -> Tensors:
        return self.app.initial_state()

    def _reconstruct(self, task: TrainTask) -> Tensors:
        """What the client holds after applying ``task``'s downlink (a chain from version
        0 starts at the initial adapter, which the client builds itself)."""
        if task.state.held is None and task.downlink_is_delta and is_chain(task.downlink):
            if self._initial is None:
                self._initial = self.app.initial_state()
            return apply_downlink(self.downlink, task, self._initial)
        return apply_downlink(self.downlink, task)

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return self.app.evaluate(params)

    def shutdown(self) -> None:
        pass

    # ---- one batch of tasks -------------------------------------------------------------
    def run(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None = None
    ) -> list[TrainResult]:
        fleet = self.fleet
        now = time.monotonic()
        deadline = now + self.round_timeout
        results: dict[int, TrainResult] = {}
        posted: dict[int, PendingTask] = {}
        for task in tasks:
            stored = fleet.store.get_result(task.round, task.kind, task.client_id)
            if stored is not None and _reusable(task):
                # accepted before a restart: counted once, not asked again
                log.info("round %d: reusing client %d's stored result", task.round, task.client_id)
                results[task.client_id] = self._complete(task, result_of(stored))
                continue
            if fleet.store.has_result(task.round, task.kind, task.client_id):
                fleet.store.forget_result(task.round, task.kind, task.client_id)
            posted[task.client_id] = fleet.post(task, deadline, now)
        # SecAgg stages wait for everyone: the protocol decides what a dropout costs
        quorum = min(self.min_fit_clients, len(tasks)) if all(map(_reusable, tasks)) else None
        close_at: float | None = None
        with fleet.changed:
            while True:
                now = time.monotonic()
                for cid, pending in list(posted.items()):
                    if cid in results:
                        continue
                    if pending.result is not None:
                        refreshed = self._maybe_resend(pending, deadline, now)
                        if refreshed is not None:
                            posted[cid] = refreshed
                            continue
                        results[cid] = self._complete(pending.task, pending.result)
                        continue
                    silent = now - fleet.last_seen.get(cid, -np.inf)
                    if silent > fleet.settings.liveness_seconds and not pending.uploading:
                        results[cid] = self._drop(pending, f"disconnected ({silent:.0f}s silent)")
                if len(results) == len(tasks) or now >= deadline:
                    break
                ok = sum(1 for r in results.values() if r.ok)
                if close_at is None and quorum is not None and ok >= quorum:
                    grace = self._grace(posted.values())
                    close_at = min(deadline, now + grace)
                    log.info(
                        "round %d: %d of %d results in (min_fit_clients %d): closing in %.0fs",
                        tasks[0].round,
                        ok,
                        len(tasks),
                        self.min_fit_clients,
                        grace,
                    )
                if close_at is not None and now >= close_at:
                    break
                fleet.changed.wait(min(1.0, (close_at or deadline) - now))
        why = (
            f"no result by the round deadline ({self.round_timeout:.0f}s)"
            if close_at is None or close_at >= deadline
            else "no result within the grace period after min_fit_clients results"
        )
        for cid, pending in posted.items():
            if cid not in results:
                results[cid] = self._drop(pending, why)
        for pending in posted.values():  # answered or not, nothing more is taken
            fleet.withdraw(pending.wire.task_id)
        fleet.collect_artifacts()
        ordered = [results[t.client_id] for t in tasks]
        if on_result is not None:
            for result in ordered:
                on_result(result)
        return ordered

    def _grace(self, posted: Iterable[PendingTask]) -> float:
        """How long the round still waits once its quorum is in: a multiple of the median
        time the answered clients took (post to result), at least the configured floor."""
        settings = self.fleet.settings
        took = [p.answered_at - p.posted_at for p in posted if p.answered_at is not None]
        median = float(np.median(took)) if took else 0.0
        return max(settings.round_grace_min_seconds, settings.round_grace_factor * median)

    def _drop(self, pending: PendingTask, why: str) -> TrainResult:
        task = pending.task
        self.fleet.withdraw(pending.wire.task_id, f"round {task.round} closed without it: {why}")
        self.fleet.metrics.results.labels("dropped").inc()
        log.warning("round %d: client %d dropped: %s", task.round, task.client_id, why)
        return TrainResult(task.round, task.client_id, error=f"straggler: {why}")

    def _maybe_resend(
        self, pending: PendingTask, deadline: float, now: float
    ) -> PendingTask | None:
        """A client that lacks the adapter a delta applies to gets full weights instead."""
        result, task = pending.result, pending.task
        if result is None or not (result.error or "").startswith(STATE_MISMATCH):
            return None
        if not task.downlink_is_delta:
            return None
        log.warning(
            "round %d: client %d %s; sending full weights", task.round, task.client_id, result.error
        )
        full = dataclasses.replace(
            task,
            downlink=FULL_WEIGHTS_CODEC.encode(self._reconstruct(task)),
            downlink_is_delta=False,
        )
        self.fleet.withdraw(pending.wire.task_id)
        return self.fleet.post(full, deadline, now)

    def _complete(self, task: TrainTask, result: TrainResult) -> TrainResult:
        """The result as the engine expects it: a trained client now holds the task's
        version (the engine records what that means from what it sent)."""
        if task.kind == "train" and result.ok:
            result.state = ClientState(version=task.version)
        return result


def _reusable(task: TrainTask) -> bool:
    """A stored result can stand in for a re-run task unless it belongs to a secure
    aggregation exchange: a restarted coordinator runs a fresh SecAgg+ instance, so every
    stage (and the masked update) is asked for again."""
    return not task.secagg and not task.kind.startswith("secagg_")


def _job_min_fit(job_config: dict[str, Any]) -> int:
    """``federation.min_fit_clients`` of the job the fleet serves (1 when not given)."""
    value = job_config.get("job", {}).get("federation", {}).get("min_fit_clients", 1)
    return value if isinstance(value, int) and value > 0 else 1
