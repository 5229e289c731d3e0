"""Classifier calibration (CCVR) after the last round: clients report per-class feature
statistics under the output adapter; the output layer is retrained on virtual features
drawn from the merged class Gaussians (:mod:`fedpeft.aggregation.calibration`).

Under secure aggregation (the job's collection is a
:class:`~fedpeft.coordinator.secure.SecureRound`) the statistics travel through a secure
round of their own as sums — per class the example count, the feature sum and the sum of
feature outer products — and the coordinator learns only the cohort's totals, from which
the pooled count, mean and scatter (all CCVR needs) follow exactly up to the fixed point.
The output layer is found by name in the adapter (the architectures' ``output_layer``,
:data:`fedpeft.models.registry.ARCHITECTURES`), since no client names it in the clear.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpeft.aggregation import calibration as ccvr
from fedpeft.compression import FULL_WEIGHTS_CODEC
from fedpeft.coordinator.collect import Shapes, payload_of
from fedpeft.coordinator.sampling import client_seed
from fedpeft.coordinator.secure import SecureRound
from fedpeft.errors import UpdateRejected
from fedpeft.protocol.messages import ClientState, Tensors, TrainResult, TrainTask

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """What one calibration produced: the refitted output layer (None: it failed), its
    metrics and its traffic (not a round's)."""

    record: dict[str, Any]
    tensors: Tensors | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    stats: list[Tensors] = field(default_factory=list)


class Calibrator:
    """CCVR over every registered client, or a seeded sample of ``clients``; through
    secure aggregation when ``collection`` is a SecureRound (the job's collection)."""

    def __init__(self, clients: int, seed: int, collection: Any = None) -> None:
        self.clients = clients
        self.seed = seed
        self.secure = collection if isinstance(collection, SecureRound) else None

    def cohort(self, round_num: int, population: int) -> list[int]:
        k = self.clients
        if k <= 0 or k >= population:
            return list(range(population))
        rng = np.random.default_rng([self.seed, round_num, 0xCA1])
        return sorted(int(c) for c in rng.choice(population, size=k, replace=False))

    def run(
        self,
        backend: Any,
        round_num: int,
        base: Tensors,
        shapes: Shapes,
        shards: Sequence[np.ndarray | None],
    ) -> Calibration:
        start = time.perf_counter()
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
                indices=shards[cid],
                kind="feature_stats",
            )
            for cid in self.cohort(round_num, len(shards))
        ]
        if self.secure is not None:
            return self._run_secure(self.secure, backend, round_num, base, shapes, tasks, start)
        results = backend.run(tasks)
        out = Calibration(record={})
        out.bytes_up = sum(len(r.payload) for r in results)
        out.bytes_down = len(downlink) * len(tasks)
        modules = self._collect(results, shapes, out)
        if not out.stats or len(modules) != 1:
            why = "no usable statistics" if not out.stats else f"clients disagree on {modules}"
            out.record["calibration_failed"] = f"{why}; output layer left as trained"
            log.warning("calibration failed: %s", out.record["calibration_failed"])
            return out
        out.tensors = self._refit(base, modules.pop(), out.stats)
        out.record["calibration_seconds"] = time.perf_counter() - start
        return out

    def _run_secure(
        self,
        secure: SecureRound,
        backend: Any,
        round_num: int,
        base: Tensors,
        shapes: Shapes,
        tasks: list[TrainTask],
        start: float,
    ) -> Calibration:
        """The statistics' totals through a secure round; the same refit from them."""
        out = Calibration(record={})
        found = output_module(shapes)
        if isinstance(found, str):
            out.record["calibration_failed"] = f"{found}; output layer left as trained"
            log.warning("calibration failed: %s", out.record["calibration_failed"])
            return out
        module, (classes, dim) = found
        pooled, record = secure.sum_statistics(
            backend, round_num, tasks, module=module, classes=classes, dim=dim
        )
        out.record.update(record)
        out.bytes_up = int(record.get("calibration_bytes_up", 0))
        out.bytes_down = int(record.get("calibration_bytes_down", 0))
        if pooled is None:
            log.warning("calibration failed: %s", out.record.get("calibration_failed"))
            return out
        out.stats = [pooled]
        out.tensors = self._refit(base, module, out.stats)
        out.record["calibration_seconds"] = time.perf_counter() - start
        return out

    @staticmethod
    def _collect(results: list[TrainResult], shapes: Shapes, out: Calibration) -> set[str]:
        """Check each client's statistics; record what was used and who was refused."""
        modules: set[str] = set()
        rejected: dict[str, str] = {}
        for result in sorted(results, key=lambda r: r.client_id):
            try:
                tensors = payload_of(result, FULL_WEIGHTS_CODEC)
                modules.add(ccvr.check_feature_stats(tensors, shapes, result.client_id))
                out.stats.append(tensors)
            except UpdateRejected as exc:
                log.warning("calibration: %s", exc)
                rejected[str(result.client_id)] = exc.reason
        out.record.update(
            calibration_clients=len(out.stats),
            calibration_bytes_up=out.bytes_up,
            calibration_bytes_down=out.bytes_down,
        )
        if rejected:
            out.record["calibration_rejected"] = rejected
        return modules

    def _refit(self, base: Tensors, module: str, stats: list[Tensors]) -> Tensors:
        count, mean, cov = ccvr.merge_feature_stats(stats, module)
        features, labels = ccvr.sample_virtual_features(count, mean, cov, seed=self.seed)
        weight_key, bias_key = f"{module}.weight", f"{module}.bias"
        weight, bias = ccvr.fit_output_layer(
            base[weight_key], base.get(bias_key), features, labels, seed=self.seed
        )
        tensors = {weight_key: weight}
        if bias is not None:
            tensors[bias_key] = bias
        return tensors


def output_module(shapes: Shapes) -> tuple[str, tuple[int, int]] | str:
    """The adapter's output layer — its module name and weight shape (classes, features)
    — found by the architectures' ``output_layer`` names; or why it cannot be told."""
    from fedpeft.models.registry import ARCHITECTURES

    wanted = {spec.output_layer for spec in ARCHITECTURES.values()}
    found: list[tuple[str, tuple[int, int]]] = []
    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) != 2:
            continue
        module = key.removesuffix(".weight")
        plain = module.replace(".modules_to_save.default", "")
        if any(plain == w or plain.endswith("." + w) for w in wanted):
            found.append((module, (int(shape[0]), int(shape[1]))))
    if len(found) != 1:
        names = sorted(m for m, _ in found)
        return f"the adapter's output layer is not one trainable linear layer (found {names})"
    return found[0]
