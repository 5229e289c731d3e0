"""The round engine: select → configure → train → collect → decode/validate → aggregate →
checkpoint → evaluate. It knows nothing of transport: a backend (in-process, Ray, and
later gRPC) runs the tasks and hands back results.

Crash safety: each round's state (global adapter, server-optimizer moments, per-client
state, counters) is checkpointed atomically *before* the round's metrics line is
appended; a resumed run truncates metrics to the checkpoint and continues from the next
round, sampling the same cohorts with the same seeds.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedpeft.aggregation import AggregateStats, ClientUpdate, Strategy, weighted_metrics
from fedpeft.aggregation import calibration as ccvr
from fedpeft.compression import FULL_WEIGHTS_CODEC, Codec, check_compatible
from fedpeft.compression.chain import add_delta, decode_chain, encode_chain, params_digest
from fedpeft.config import CALIBRATIONS
from fedpeft.coordinator.sampling import ClientSampler
from fedpeft.coordinator.secure import SecureRound
from fedpeft.errors import CodecError, ConfigError, FedPeftError, UpdateRejected
from fedpeft.protocol.messages import ClientState, Tensors, TrainResult, TrainTask
from fedpeft.rundir import RunDir, atomic_write_bytes

if TYPE_CHECKING:
    from fedpeft.coordinator.dp import DpController

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


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


def client_seed(seed: int, round_num: int, client_id: int) -> int:
    """A per-(round, client) seed, independent of which worker runs the task."""
    return int(np.random.default_rng([seed, round_num, client_id]).integers(0, 2**31 - 1))


@dataclass
class EngineState:
    round: int = 0
    params: Tensors = field(default_factory=dict)
    clients: dict[int, ClientState] = field(default_factory=dict)
    bytes_up_total: int = 0
    bytes_down_total: int = 0
    ema: Tensors | None = None  # server EMA of the global adapter (when enabled)
    # classifier calibration (CCVR) of the output layer, valid for round ``calibrated_round``
    calibrated: Tensors | None = None
    calibrated_round: int = -1
    # chain downlink: history[v] brings the global adapter from version v to v + 1 (b""
    # for a failed round: no change); the server error-feedback residual; the initial
    # adapter's digest (version 0, which clients build themselves)
    history: list[bytes] = field(default_factory=list)
    server_residual: Tensors | None = None
    init_digest: bytes = b""


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
        client_config: dict[str, Any] | Callable[[int], dict[str, Any]] | None = None,
        hooks: EngineHooks | None = None,
        secure: SecureRound | None = None,
        privacy: DpController | None = None,
        chain_downlink: bool = False,
    ) -> None:
        self.backend = backend
        self.strategy = strategy
        self.sampler = sampler
        self.shards = list(shards)
        self.uplink = uplink
        self.downlink = downlink
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
        self.calibration = calibration
        self.calibration_clients = calibration_clients
        # Fixed settings for every task, or a function of the round (Flower's
        # on_fit_config_fn), e.g. a round-decayed client learning rate.
        if callable(client_config):
            self.client_config: Callable[[int], dict[str, Any]] = client_config
        else:
            fixed = dict(client_config or {})
            self.client_config = lambda _round: dict(fixed)
        self.hooks = hooks or EngineHooks()
        # secure aggregation (SecAgg+): rounds reveal only the sum of updates
        self.secure = secure
        if secure is not None and strategy.needs_individual_updates:
            raise ConfigError(
                "federation.lora_aggregation",
                f"{strategy.name} needs each client's update; secure aggregation gives the sum",
            )
        # client-level DP: clip, noise (here or on clients), account, ledger
        self.privacy = privacy
        self.stopped: str | None = None  # why run() ended before the last round
        self.state = EngineState()
        self.shapes: dict[str, tuple[int, ...]] = {}
        # Only a compressing downlink sends deltas; then the engine must know exactly what
        # each client holds (its reconstruction), which costs one adapter per client.
        self.delta_downlink = downlink.name != "dense"
        # the chain downlink (fedpeft.compression.chain): each round's change compressed
        # once with server error feedback; the global adapter is the sum of those deltas
        self.chain_downlink = chain_downlink
        if chain_downlink and not self.delta_downlink:
            raise ValueError("a chain downlink needs a compressing downlink codec")
        self._full_cache: tuple[int, bytes] | None = None

    # ---- set-up and resume -------------------------------------------------------------
    def start_fresh(self) -> dict[str, float]:
        self.state = EngineState(params=self.backend.initial_state())
        if self.chain_downlink:
            self.state.init_digest = params_digest(self.state.params)
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
        state = self.state.clients.get(client_id, ClientState())
        if self.chain_downlink:
            downlink, is_delta, state = self._chain_downlink(round_num, state)
        elif state.held is None or not self.delta_downlink:
            # First contact, or a dense downlink (a dense delta is as large as the weights):
            # full weights, dense fp32 — encoded once per round, the same bytes for all.
            downlink, is_delta = self._full_weights(round_num), False
        else:
            delta = {k: self.state.params[k] - state.held[k] for k in self.state.params}
            downlink, is_delta = self.downlink.encode(delta), True
        return TrainTask(
            round=round_num,
            client_id=client_id,
            seed=client_seed(self.seed, round_num, client_id),
            downlink=downlink,
            downlink_is_delta=is_delta,
            version=round_num - 1,
            state=state,
            indices=self.shards[client_id],
            config={
                **self.client_config(round_num),
                **self.strategy.configure_train(round_num, [client_id]),
                **({"dp_clip": self.privacy.clip} if self.privacy is not None else {}),
            },
        )

    def _chain_downlink(
        self, round_num: int, state: ClientState
    ) -> tuple[bytes, bool, ClientState]:
        """The deltas from the version the client holds (0, the initial adapter it builds
        itself, on first contact) to the current one — or the full fp32 weights when
        those are smaller (a long-absent client)."""
        base = state.version if state.held is not None else 0
        deltas = [d for d in self.state.history[base : round_num - 1] if d]
        payload = encode_chain(base, self.state.init_digest, deltas)
        full = self._full_weights(round_num)
        if len(payload) >= len(full):
            return full, False, state
        if state.held is None:
            state = ClientState(version=0, held=None, residual=state.residual)
        return payload, True, state

    def _broadcast(self, target: Tensors, record: dict[str, Any]) -> Tensors:
        """Chain downlink: move the global adapter toward the strategy's ``target`` by one
        compressed delta, keeping what compression dropped for the next round (server
        error feedback). Every client applies exactly this delta, so the new global
        adapter is bit-identical to every client's copy of it."""
        current = self.state.params
        residual = self.state.server_residual or {}
        want = {
            k: (target[k] - current[k] + residual.get(k, 0.0)).astype(np.float32) for k in current
        }
        encoded = self.downlink.encode(want)
        sent = self.downlink.decode(encoded)
        self.state.server_residual = {k: (want[k] - sent[k]).astype(np.float32) for k in want}
        self.state.history.append(encoded)
        record["downlink_delta_bytes"] = len(encoded)
        want_norm = math.sqrt(
            sum(float(np.square(v, dtype=np.float64).sum()) for v in want.values())
        )
        left = math.sqrt(
            sum(
                float(np.square(v, dtype=np.float64).sum())
                for v in self.state.server_residual.values()
            )
        )
        record["server_residual_ratio"] = left / want_norm if want_norm > 0 else 0.0
        return add_delta(current, sent)

    def _full_weights(self, round_num: int) -> bytes:
        if self._full_cache is None or self._full_cache[0] != round_num:
            self._full_cache = (round_num, FULL_WEIGHTS_CODEC.encode(self.state.params))
        return self._full_cache[1]

    @staticmethod
    def _payload(result: TrainResult, codec: Codec) -> Tensors:
        """The tensors a client sent, or UpdateRejected naming it (its error, bad bytes)."""
        if result.error is not None:
            raise UpdateRejected(result.client_id, result.error)
        try:
            return codec.decode(result.payload)
        except CodecError as exc:
            raise UpdateRejected(result.client_id, str(exc)) from exc

    def decode(self, result: TrainResult) -> ClientUpdate:
        """Decode and validate one update; raises UpdateRejected naming the client."""
        delta = self._payload(result, self.uplink)
        check_compatible(delta, self.shapes, result.client_id)  # names, shapes, NaN/Inf
        if result.num_examples <= 0:
            raise UpdateRejected(result.client_id, "reports no training examples")
        return ClientUpdate(
            result.client_id,
            result.num_examples,
            delta,
            {k: float(v) for k, v in result.metrics.items()},
        )

    def run_round(self, round_num: int) -> dict[str, Any]:
        start = time.perf_counter()
        cohort = self.sampler.sample(round_num)
        if self.hooks.on_round_start:
            self.hooks.on_round_start(round_num, len(cohort))
        tasks = [self.make_task(round_num, cid) for cid in cohort]
        if self.secure is not None:
            record, new_params = self._secure_round(round_num, tasks)
        else:
            record, new_params = self._plain_round(round_num, tasks)
        if new_params is not None:
            if self.chain_downlink:
                new_params = self._broadcast(new_params, record)
            self.state.params = new_params
            self._update_ema()
            record.update(self.strategy.train_metrics())
        else:
            log.warning("round %d failed: %s", round_num, record["round_failed"])
            if self.chain_downlink:
                self.state.history.append(b"")  # version round_num == version round_num - 1
        if self.privacy is not None:
            # the ledger is durable before this round's adapter is evaluated, checkpointed
            # or exported: a crash from here on can only over-count epsilon
            record.update(self.privacy.record_round(round_num, released=new_params is not None))
        self.state.round = round_num
        self.state.bytes_up_total += record["bytes_up"]
        self.state.bytes_down_total += record["bytes_down"]
        if self.calibration != "none" and round_num == self.rounds:
            record.update(self.calibrate(round_num))
        if self.strategy.configure_evaluate(round_num, self.eval_every, self.rounds):
            metrics = self.backend.evaluate(self.output_params)
            record.update(self.strategy.aggregate_evaluate(round_num, metrics))
            if self.state.calibrated_round == round_num:
                before = self.backend.evaluate(self._uncalibrated_params)
                record.update({f"uncalibrated_{k}": v for k, v in before.items()})
        record["bytes_up_total"] = self.state.bytes_up_total
        record["bytes_down_total"] = self.state.bytes_down_total
        record["round_seconds"] = time.perf_counter() - start
        self.save_checkpoint()  # before the metrics line: a crash never loses a logged round
        self.run_dir.append_metrics(record)
        if self.hooks.on_round_end:
            self.hooks.on_round_end(record)
        return record

    def _plain_round(
        self, round_num: int, tasks: list[TrainTask]
    ) -> tuple[dict[str, Any], Tensors | None]:
        """Every client's update reaches the coordinator, is decoded and validated."""
        bytes_down = sum(len(t.downlink) for t in tasks)
        results = self.backend.run(tasks, self.hooks.on_client_done)
        bytes_up = sum(len(r.payload) for r in results)
        updates: list[ClientUpdate] = []
        rejected: dict[int, str] = {}
        for result in sorted(results, key=lambda r: r.client_id):
            try:
                updates.append(self.decode(result))
            except UpdateRejected as exc:
                log.warning("round %d: %s", round_num, exc)
                rejected[result.client_id] = exc.reason
                continue
            if result.state is not None:
                self.state.clients[result.client_id] = result.state
        record = self._round_record(round_num, len(tasks), len(updates), rejected)
        record.update(bytes_up=bytes_up, bytes_down=bytes_down)
        if len(updates) < self.min_fit_clients:
            record["round_failed"] = (
                f"{len(updates)} usable updates < min_fit_clients={self.min_fit_clients}; "
                "global adapter unchanged"
            )
            return record, None
        record.update(weighted_metrics(updates))
        if self.privacy is not None:  # central DP: clip, sum, noise, uniform mean
            mean, info = self.privacy.noisy_mean([u.delta for u in updates], round_num)
            record.update(info)
            stats = AggregateStats(len(updates), float(len(updates)))
            return record, self.strategy.aggregate_mean(round_num, self.state.params, mean, stats)
        return record, self.strategy.aggregate_train(round_num, self.state.params, updates)

    def _secure_round(
        self, round_num: int, tasks: list[TrainTask]
    ) -> tuple[dict[str, Any], Tensors | None]:
        """SecAgg+: the coordinator sees masked vectors and decodes only their sum."""
        assert self.secure is not None
        dp = self.privacy
        distributed = dp is not None and dp.distributed
        with_sq_norm = self.strategy.name == "fedexp"
        levels, sigma = None, 0.0
        if dp is not None and distributed:
            density = self.secure.density
            dim = sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes.values())
            sent = dim if density >= 1.0 else max(1, math.ceil(density * dim))
            plan = dp.plan_distributed(bits=self.secure.bits, cohort=len(tasks), dim=sent)
            levels, sigma = plan.levels, plan.sigma
        enc = self.secure.encoding(
            round_num,
            len(tasks),
            self.shapes,
            with_sq_norm=with_sq_norm,
            uniform_weights=dp is not None,
            clip_range=dp.clip if dp is not None else None,
            levels=levels,
            noise_sigma=sigma,
        )
        outcome = self.secure.run(
            self.backend, round_num, tasks, enc, self.shapes, self.hooks.on_client_done
        )
        trained = [r for r in outcome.results if r.error is None]
        for result in trained:
            if result.state is not None:
                self.state.clients[result.client_id] = result.state
        record = self._round_record(round_num, len(tasks), len(outcome.survivors), outcome.rejected)
        masked_bytes = sum(len(r.payload) for r in trained)
        record.update(
            bytes_up=outcome.bytes_up,
            bytes_down=outcome.bytes_down,
            secagg_survivors=len(outcome.survivors),
            secagg_dropped=sorted(outcome.dropped),
            secagg_bits=enc.bits,
            secagg_levels=enc.levels,
            secagg_coordinates_sent=enc.sent,
            # bits on the wire per adapter coordinate, masked vectors only
            secagg_bits_per_coordinate=8.0 * masked_bytes / max(1, len(trained)) / enc.dim,
            **outcome.seconds,
        )
        if trained:  # clients' own reports (loss, clip share): plain means, no weights
            keys = sorted({k for r in trained for k in r.metrics})
            for key in keys:
                values = [float(r.metrics[key]) for r in trained if key in r.metrics]
                record[key] = float(np.mean(values))
        if outcome.failed is not None or outcome.total is None:
            record["round_failed"] = outcome.failed or "secure aggregation produced no sum"
            return record, None
        if len(outcome.survivors) < self.min_fit_clients:
            record["round_failed"] = (
                f"{len(outcome.survivors)} survivors < min_fit_clients={self.min_fit_clients}; "
                "global adapter unchanged"
            )
            return record, None
        total = outcome.total
        if dp is not None and not distributed:
            raise FedPeftError("central DP under secure aggregation: use dp.mode = distributed")
        stats = AggregateStats(len(outcome.survivors), total.total_weight, total.mean_sq_norm)
        if dp is not None:
            record.update(dp.round_info(survivors=len(outcome.survivors)))
        return record, self.strategy.aggregate_mean(round_num, self.state.params, total.mean, stats)

    @staticmethod
    def _round_record(
        round_num: int, sampled: int, ok: int, rejected: dict[int, str]
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "round": round_num,
            "clients_sampled": sampled,
            "clients_ok": ok,
            "clients_rejected": len(rejected),
        }
        if rejected:
            record["rejected"] = {str(k): v for k, v in rejected.items()}
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

    # ---- classifier calibration (CCVR) -------------------------------------------------
    def calibration_cohort(self, round_num: int) -> list[int]:
        """Every registered client, or a seeded sample of ``calibration_clients``."""
        n = len(self.shards)
        k = self.calibration_clients
        if k <= 0 or k >= n:
            return list(range(n))
        rng = np.random.default_rng([self.seed, round_num, 0xCA1])
        return sorted(int(c) for c in rng.choice(n, size=k, replace=False))

    def calibrate(self, round_num: int) -> dict[str, Any]:
        """CCVR after the last round: clients report per-class feature statistics under
        the output adapter; the output layer is retrained on virtual features drawn from
        the merged class Gaussians (:mod:`fedpeft.aggregation.calibration`)."""
        start = time.perf_counter()
        base = self._uncalibrated_params
        downlink = FULL_WEIGHTS_CODEC.encode(base)
        tasks = [
            TrainTask(
                round=round_num,
                client_id=cid,
                seed=client_seed(self.seed, round_num, cid),
                downlink=downlink,
                downlink_is_delta=False,
                version=round_num,
                state=ClientState(),
                indices=self.shards[cid],
                kind="feature_stats",
            )
            for cid in self.calibration_cohort(round_num)
        ]
        results = self.backend.run(tasks)
        bytes_up = sum(len(r.payload) for r in results)
        bytes_down = len(downlink) * len(tasks)
        self.state.bytes_up_total += bytes_up
        self.state.bytes_down_total += bytes_down
        stats: list[Tensors] = []
        modules: set[str] = set()
        rejected: dict[str, str] = {}
        for result in sorted(results, key=lambda r: r.client_id):
            try:
                tensors = self._payload(result, FULL_WEIGHTS_CODEC)
                modules.add(ccvr.check_feature_stats(tensors, self.shapes, result.client_id))
                stats.append(tensors)
            except UpdateRejected as exc:
                log.warning("calibration: %s", exc)
                rejected[str(result.client_id)] = exc.reason
        record: dict[str, Any] = {
            "calibration_clients": len(stats),
            "calibration_bytes_up": bytes_up,
            "calibration_bytes_down": bytes_down,
        }
        if rejected:
            record["calibration_rejected"] = rejected
        if not stats or len(modules) != 1:
            why = "no usable statistics" if not stats else f"clients disagree on {modules}"
            record["calibration_failed"] = f"{why}; output layer left as trained"
            log.warning("calibration failed: %s", record["calibration_failed"])
            return record
        module = modules.pop()
        count, mean, cov = ccvr.merge_feature_stats(stats, module)
        features, labels = ccvr.sample_virtual_features(count, mean, cov, seed=self.seed)
        weight_key, bias_key = f"{module}.weight", f"{module}.bias"
        weight, bias = ccvr.fit_output_layer(
            base[weight_key], base.get(bias_key), features, labels, seed=self.seed
        )
        self.state.calibrated = {weight_key: weight}
        if bias is not None:
            self.state.calibrated[bias_key] = bias
        self.state.calibrated_round = round_num
        record["calibration_seconds"] = time.perf_counter() - start
        return record

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
        """Run the remaining rounds; with a fixed DP noise and a budget, stop after the last
        round the budget affords (``stopped`` says why)."""
        records = []
        for round_num in range(self.state.round + 1, self.rounds + 1):
            if self.privacy is not None:
                reason = self.privacy.stop_reason(round_num)
                if reason is not None:
                    self.stopped = reason
                    log.warning("%s", reason)
                    break
            records.append(self.run_round(round_num))
        return records

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        from safetensors.numpy import save_file

        final = self.run_dir.path / CHECKPOINT_DIR
        tmp = self.run_dir.path / f".{CHECKPOINT_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file(_contiguous(self.state.params), str(tmp / "global.safetensors"))
        save_file(_contiguous(self.strategy.state_dict()), str(tmp / "strategy.safetensors"))
        if self.state.ema is not None:
            save_file(_contiguous(self.state.ema), str(tmp / "ema.safetensors"))
        if self.state.calibrated is not None:
            save_file(_contiguous(self.state.calibrated), str(tmp / "calibrated.safetensors"))
        client_tensors: dict[str, np.ndarray] = {}
        versions: dict[str, int] = {}
        for cid, cs in self.state.clients.items():
            versions[str(cid)] = cs.version
            for kind, tensors in (("held", cs.held), ("residual", cs.residual)):
                for name, value in (tensors or {}).items():
                    client_tensors[f"{cid}/{kind}/{name}"] = value
        save_file(_contiguous(client_tensors), str(tmp / "clients.safetensors"))
        meta = {
            "round": self.state.round,
            "bytes_up_total": self.state.bytes_up_total,
            "bytes_down_total": self.state.bytes_down_total,
            "client_versions": versions,
            "calibrated_round": self.state.calibrated_round,
        }
        if self.chain_downlink:
            meta["init_digest"] = self.state.init_digest.hex()
            atomic_write_bytes(tmp / "chain.bin", encode_chain(0, bytes(16), self.state.history))
            if self.state.server_residual is not None:
                save_file(
                    _contiguous(self.state.server_residual),
                    str(tmp / "server_residual.safetensors"),
                )
        atomic_write_bytes(tmp / "engine.json", json.dumps(meta).encode())
        old = self.run_dir.path / f".{CHECKPOINT_DIR}.old"
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)

    def load_checkpoint(self) -> None:
        from safetensors.numpy import load_file

        folder = self.run_dir.path / CHECKPOINT_DIR
        if not (folder / "engine.json").is_file():
            old = self.run_dir.path / f".{CHECKPOINT_DIR}.old"  # crashed mid-swap
            if (old / "engine.json").is_file():
                folder = old
            else:
                raise FedPeftError(f"{self.run_dir.path} has no checkpoint to resume from")
        meta = json.loads((folder / "engine.json").read_text())
        params = dict(load_file(str(folder / "global.safetensors")))
        self.strategy.load_state_dict(load_file(str(folder / "strategy.safetensors")))
        clients: dict[int, ClientState] = {
            int(cid): ClientState(version=v) for cid, v in meta["client_versions"].items()
        }
        for key, value in load_file(str(folder / "clients.safetensors")).items():
            cid, kind, name = key.split("/", 2)
            cs = clients[int(cid)]
            if kind == "held":
                cs.held = cs.held or {}
                cs.held[name] = value
            else:
                cs.residual = cs.residual or {}
                cs.residual[name] = value
        ema_file = folder / "ema.safetensors"
        calibrated_file = folder / "calibrated.safetensors"
        self.state = EngineState(
            round=int(meta["round"]),
            params=params,
            ema=dict(load_file(str(ema_file))) if ema_file.is_file() else None,
            clients=clients,
            bytes_up_total=int(meta["bytes_up_total"]),
            bytes_down_total=int(meta["bytes_down_total"]),
            calibrated=(
                dict(load_file(str(calibrated_file))) if calibrated_file.is_file() else None
            ),
            calibrated_round=int(meta.get("calibrated_round", -1)),
        )
        if self.chain_downlink:
            chain_file, residual_file = folder / "chain.bin", folder / "server_residual.safetensors"
            if not chain_file.is_file() or "init_digest" not in meta:
                raise FedPeftError(
                    f"{folder} was not written with codec.downlink = chain; resume it with the "
                    "downlink it was started with"
                )
            self.state.history = decode_chain(chain_file.read_bytes()).deltas
            self.state.init_digest = bytes.fromhex(meta["init_digest"])
            if residual_file.is_file():
                self.state.server_residual = dict(load_file(str(residual_file)))
        self.shapes = {k: v.shape for k, v in params.items()}


def _contiguous(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def checkpoint_exists(path: str | Path) -> bool:
    return (Path(path) / CHECKPOINT_DIR / "engine.json").is_file()
