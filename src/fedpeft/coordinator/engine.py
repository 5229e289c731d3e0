"""The round engine: select → configure → collect → aggregate → record → checkpoint →
evaluate. It knows nothing of transport: a backend (in-process, Ray, gRPC) runs the
tasks and hands back results; a collection (plain, or SecAgg+) decides what of them the
coordinator sees; a privacy mechanism (none, central or distributed DP) configures the
clients, turns what was collected into the strategy's step and records what it spent.

Crash safety: each round's state (global adapter, server-optimizer moments, what each
client was sent, counters) is checkpointed atomically *before* the round's metrics line is
appended; a resumed run truncates metrics to the checkpoint and continues from the next
round (with seeded cohorts, the same ones; under central DP cohorts are fresh OS-entropy
draws, :func:`fedpeft.coordinator.sampling.from_entropy`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedpeft.aggregation import Strategy, UpdateBounds
from fedpeft.compression import Codec
from fedpeft.config import CALIBRATIONS
from fedpeft.coordinator.calibrate import Calibrator
from fedpeft.coordinator.checkpoint import (
    CHECKPOINT_DIR,
    EngineState,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from fedpeft.coordinator.collect import Collection, PlainCollection, RoundContext
from fedpeft.coordinator.downlink import make_downlink
from fedpeft.coordinator.privacy import BudgetSpent, NoPrivacy, PrivacyMechanism
from fedpeft.coordinator.sampling import ClientSampler, client_seed
from fedpeft.protocol.messages import ClientState, TaskSettings, Tensors, TrainResult, TrainTask
from fedpeft.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "Backend",
    "EngineHooks",
    "EngineState",
    "RoundEngine",
    "Sampler",
    "checkpoint_exists",
    "client_seed",
]


def nonfinite_tensor(tensors: Tensors) -> str | None:
    """The name of the first tensor holding NaN or ±Inf (None: all finite)."""
    for name, value in tensors.items():
        if not np.all(np.isfinite(value)):
            return name
    return None


class Backend(Protocol):
    """Runs client tasks somewhere (this process, Ray workers, remote devices)."""

    def initial_state(self) -> Tensors: ...

    def run(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None = None
    ) -> list[TrainResult]: ...

    def evaluate(self, params: Tensors) -> dict[str, float]: ...

    def shutdown(self) -> None: ...


class Sampler(Protocol):
    """Picks a round's cohort (the simulation's ClientSampler, the deployment's live
    sampler)."""

    def sample(self, round_num: int) -> list[int]: ...


@dataclass
class EngineHooks:
    """Progress callbacks (the CLI draws its display from these)."""

    on_round_start: Callable[[int, int], None] | None = None  # (round, cohort size)
    on_client_done: Callable[[TrainResult], None] | None = None
    on_round_end: Callable[[dict[str, Any]], None] | None = None


class RoundEngine:
    def __init__(
        self,
        *,
        backend: Backend,
        strategy: Strategy,
        sampler: Sampler | ClientSampler,
        shards: Sequence[np.ndarray | None],
        uplink: Codec,
        downlink: Codec,
        run: RunDir,
        rounds: int,
        seed: int,
        eval_every: int = 1,
        min_fit_clients: int = 1,
        ema_decay: float = 0.0,
        calibration: str = "none",
        calibration_clients: int = 0,
        client_config: Callable[[int], TaskSettings] | None = None,
        hooks: EngineHooks | None = None,
        collection: Collection | None = None,
        privacy: PrivacyMechanism | None = None,
        chain_downlink: bool = False,
        max_client_examples: int = 0,
    ) -> None:
        self.backend = backend
        self.strategy = strategy
        self.sampler = sampler
        self.shards = list(shards)
        self.uplink = uplink
        self.run_dir = run
        self.rounds = rounds
        self.seed = seed
        self.eval_every = eval_every
        self.min_fit_clients = min_fit_clients
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = ema_decay
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        # the job's settings of a round's tasks (Flower's on_fit_config_fn): the round
        # schedule's client learning rate, FedProx, FedLC
        self.client_config = client_config or (lambda _round: TaskSettings())
        self.hooks = hooks or EngineHooks()
        # what the coordinator sees of the updates (SecAgg+: only their sum) and what
        # privacy mechanism configures, aggregates and records each round
        self.collection = collection or PlainCollection()
        # under SecAgg the calibration statistics travel as one masked sum too
        self.calibrator = (
            Calibrator(calibration_clients, seed, self.collection)
            if calibration != "none"
            else None
        )
        self.privacy = privacy or NoPrivacy()
        self.collection.check_strategy(strategy)
        self.privacy.check_collection(not isinstance(self.collection, PlainCollection))
        self.stopped: str | None = None  # why run() ended before the last round
        self.state = EngineState()
        self.shapes: dict[str, tuple[int, ...]] = {}
        # what each client receives of the global adapter (fedpeft.coordinator.downlink)
        self.downlink = make_downlink(downlink, chain_downlink)
        # the most examples one client may report: given (the job resolves
        # federation.max_client_examples against its shards), else the strategy's bounds
        bounds = strategy.bounds or UpdateBounds()
        self.max_client_examples = max_client_examples or bounds.examples_cap()

    # ---- set-up and resume -------------------------------------------------------------
    def start_fresh(self) -> dict[str, float]:
        self.state = EngineState(params=self.backend.initial_state())
        self.downlink.start(self.state)
        self.shapes = {k: v.shape for k, v in self.state.params.items()}
        initial = self.backend.evaluate(self.state.params)
        self.save_checkpoint()
        return initial

    def resume(self) -> None:
        self.load_checkpoint()
        kept = [m for m in self.run_dir.read_metrics() if m.get("round", 0) <= self.state.round]
        self.run_dir.rewrite_metrics(kept)

    # ---- one round ---------------------------------------------------------------------
    def make_task(self, round_num: int, client_id: int) -> TrainTask:
        held = self.state.clients.get(client_id, ClientState())
        downlink, is_delta, held = self.downlink.payload(self.state, round_num, held)
        # the strategy may override fields of the job's settings for this client
        settings = self.client_config(round_num).replace(
            **self.strategy.configure_train(round_num, [client_id])
        )
        return TrainTask(
            round=round_num,
            client_id=client_id,
            seed=client_seed(self.seed, round_num, client_id),
            downlink=downlink,
            downlink_is_delta=is_delta,
            version=round_num - 1,
            state=held,
            indices=self.shards[client_id],
            settings=self.privacy.configure(settings),
        )

    def run_round(self, round_num: int) -> dict[str, Any]:
        start = time.perf_counter()
        cohort = self.sampler.sample(round_num)
        self.privacy.begin_round(round_num)
        if self.hooks.on_round_start:
            self.hooks.on_round_start(round_num, len(cohort))
        tasks = [self.make_task(round_num, cid) for cid in cohort]
        record, new_params = self._collect_and_aggregate(round_num, tasks)
        if new_params is not None:
            self.state.params = self.downlink.release(self.state, new_params, record)
            self._update_ema()
            record.update(self.strategy.train_metrics())
        else:
            log.warning("round %d failed: %s", round_num, record["round_failed"])
            self.downlink.skip(self.state)
        # the ledger is durable before this round's adapter is evaluated, checkpointed or
        # exported: a crash from here on can only over-count epsilon
        record.update(self.privacy.record_round(round_num, released=new_params is not None))
        self.state.round = round_num
        self.state.bytes_up_total += record["bytes_up"]
        self.state.bytes_down_total += record["bytes_down"]
        if self.calibrator is not None and round_num == self.rounds:
            record.update(self.calibrate(round_num))
        if self.strategy.configure_evaluate(round_num, self.eval_every, self.rounds):
            record.update(self._evaluate(round_num))
        record["bytes_up_total"] = self.state.bytes_up_total
        record["bytes_down_total"] = self.state.bytes_down_total
        record["round_seconds"] = time.perf_counter() - start
        self.save_checkpoint()  # before the metrics line: a crash never loses a logged round
        self.run_dir.append_metrics(record)
        if self.hooks.on_round_end:
            self.hooks.on_round_end(record)
        return record

    def _collect_and_aggregate(
        self, round_num: int, tasks: list[TrainTask]
    ) -> tuple[dict[str, Any], Tensors | None]:
        """The round's updates as the collection lets the coordinator see them, turned
        into the new global adapter by the privacy mechanism and the strategy (None: the
        round failed and the adapter stays). An aggregate that is not finite fails the
        round and leaves the adapter and the strategy's state as they were."""
        ctx = RoundContext(
            round_num=round_num,
            backend=self.backend,
            uplink=self.uplink,
            shapes=self.shapes,
            min_fit_clients=self.min_fit_clients,
            needs_sq_norm=self.strategy.needs_sq_norm,
            plan_encoding=self.privacy.secure_plan,
            on_result=self.hooks.on_client_done,
            max_examples=self.max_client_examples,
        )
        collected = self.collection.collect(ctx, tasks)
        # what each client that trained now holds, as the coordinator's own record of
        # what it sent (a client's state never comes back: it stays on the client)
        by_id = {t.client_id: t for t in tasks if t.kind == "train"}
        for cid in collected.trained:
            if cid in by_id:
                self.state.clients[cid] = self.downlink.held_after(self.state, by_id[cid])
        record = collected.record
        if collected.failed is not None:
            record["round_failed"] = collected.failed
            return record, None
        before = self.strategy.state_dict()  # the arrays are replaced, never written into
        new_params, info = self.privacy.aggregate(
            round_num, self.strategy, self.state.params, collected
        )
        record.update(info)
        bad = nonfinite_tensor(new_params)
        if bad is not None:
            self.strategy.load_state_dict(before)
            record["round_failed"] = (
                f"the aggregate is not finite in `{bad}`; global adapter unchanged"
            )
            return record, None
        return record, new_params

    def _evaluate(self, round_num: int) -> dict[str, Any]:
        metrics = self.backend.evaluate(self.output_params)
        record = dict(self.strategy.aggregate_evaluate(round_num, metrics))
        if self.state.calibrated_round == round_num:
            before = self.backend.evaluate(self._uncalibrated_params)
            record.update({f"uncalibrated_{k}": v for k, v in before.items()})
        return record

    @property
    def _uncalibrated_params(self) -> Tensors:
        if self.ema_decay > 0 and self.state.ema is not None:
            return self.state.ema
        return self.state.params

    @property
    def output_params(self) -> Tensors:
        """What is evaluated and exported: the server EMA when enabled, else the global;
        with the calibrated output layer when this round was calibrated. Training always
        continues from the plain global adapter."""
        params = self._uncalibrated_params
        if self.state.calibrated is not None and self.state.calibrated_round == self.state.round:
            return {**params, **self.state.calibrated}
        return params

    def calibrate(self, round_num: int) -> dict[str, Any]:
        """CCVR after the last round (:mod:`fedpeft.coordinator.calibrate`); its traffic
        counts toward the run's totals."""
        assert self.calibrator is not None
        base = self._uncalibrated_params
        out = self.calibrator.run(self.backend, round_num, base, self.shapes, self.shards)
        self.state.bytes_up_total += out.bytes_up
        self.state.bytes_down_total += out.bytes_down
        if out.tensors is not None:
            self.state.calibrated = out.tensors
            self.state.calibrated_round = round_num
        return out.record

    def _update_ema(self) -> None:
        """Polyak/EMA averaging of the global adapter over rounds (training never sees
        it): started at the first aggregated adapter, then ema ← d·ema + (1 − d)·θ."""
        if self.ema_decay <= 0:
            return
        params, d = self.state.params, self.ema_decay
        if self.state.ema is None:
            self.state.ema = {k: v.copy() for k, v in params.items()}
            return
        self.state.ema = {
            k: (d * self.state.ema[k].astype(np.float64) + (1 - d) * params[k]).astype(np.float32)
            for k in params
        }

    def run(self) -> list[dict[str, Any]]:
        """Run the remaining rounds; stop before a round the privacy budget cannot afford
        (``stopped`` says why). The budget is asked before every round, and a mechanism
        that knows a round's cost only once its noise is planned refuses it there
        (:class:`BudgetSpent`, before any client input exists)."""
        # how cohorts are drawn is the privacy mechanism's call (OS entropy when its
        # accounting claims amplification by sampling)
        self.sampler = self.privacy.cohort_sampler(self.sampler)
        records = []
        for round_num in range(self.state.round + 1, self.rounds + 1):
            reason = self.privacy.stop_reason(round_num)
            if reason is None:
                try:
                    records.append(self.run_round(round_num))
                    continue
                except BudgetSpent as exc:
                    reason = str(exc)
            self.stopped = reason
            log.warning("%s", reason)
            break
        return records

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        save_checkpoint(
            self.run_dir.path, self.state, self.strategy.state_dict(), self.downlink.keeps_history
        )

    def load_checkpoint(self) -> None:
        self.state, strategy_state = load_checkpoint(self.run_dir.path, self.downlink.keeps_history)
        self.strategy.load_state_dict(strategy_state)
        self.shapes = {k: v.shape for k, v in self.state.params.items()}
