"""Simulated dropouts for secure aggregation: clients that vanish mid-protocol.

A wrapper around any backend (in-process, Ray). Each round a seeded ``rate`` of the
cohort is chosen — at the key-advertising stage, from the cohort the tasks name — and
those clients stop answering at the chosen point:

* ``after_masking`` (the hardest case): they train and send their masked input, then
  never answer the unmask stage — their input is in the sum, so the coordinator must
  rebuild their self masks from their neighbours' shares;
* ``before_masking``: they advertise keys and share them, then vanish before training —
  the coordinator must rebuild their pairwise masks from their secret-key shares.

The coordinator's code sees only missing answers (an error result), exactly as with a
device that lost its connection; it never learns the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedpeft.protocol.messages import Tensors, TrainResult, TrainTask

VANISHED = "vanished (simulated dropout)"


class DropoutBackend:
    def __init__(self, inner: Any, rate: float, stage: str, seed: int) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        if stage not in ("after_masking", "before_masking"):
            raise ValueError(f"unknown dropout stage {stage!r}")
        self.inner = inner
        self.rate = rate
        self.stage = stage
        self.seed = seed
        self.vanished: dict[int, set[int]] = {}  # round -> clients that vanish

    def _plan(self, tasks: Sequence[TrainTask]) -> None:
        round_num = tasks[0].round
        cohort = sorted(t.client_id for t in tasks)
        count = round(self.rate * len(cohort))
        rng = np.random.default_rng([self.seed, round_num, 0xD0])
        chosen: list[int] = [int(c) for c in rng.choice(cohort, size=count, replace=False)]
        self.vanished = {round_num: {int(c) for c in chosen}}

    def _drops(self, task: TrainTask) -> bool:
        gone = task.client_id in self.vanished.get(task.round, set())
        if not gone:
            return False
        if self.stage == "after_masking":
            return task.kind == "secagg_unmask"
        return task.kind in ("train", "secagg_unmask")

    def initial_state(self) -> Tensors:
        return self.inner.initial_state()  # type: ignore[no-any-return]

    def run(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None = None
    ) -> list[TrainResult]:
        if tasks and tasks[0].kind == "secagg_advertise":
            self._plan(tasks)
        live = [t for t in tasks if not self._drops(t)]
        results = list(self.inner.run(live, on_result)) if live else []
        for task in tasks:
            if self._drops(task):
                result = TrainResult(task.round, task.client_id, error=VANISHED)
                results.append(result)
                if on_result is not None:
                    on_result(result)
        return results

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return self.inner.evaluate(params)  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.inner.shutdown()
