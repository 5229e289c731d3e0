"""In-process backend: one client app in this process serves every virtual client in turn.

For tests and tiny runs; no Ray needed. Results are identical to the Ray backend for the
same seed and thread count (tasks carry their own seeds and state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedpeft.protocol.messages import AppFactory, Tensors, TrainResult, TrainTask


class InProcessBackend:
    def __init__(self, app_factory: AppFactory) -> None:
        self.app = app_factory("inprocess-0")

    def initial_state(self) -> Tensors:
        return self.app.initial_state()

    def run(
        self, tasks: Sequence[TrainTask], on_result: Callable[[TrainResult], None] | None = None
    ) -> list[TrainResult]:
        results = []
        for task in tasks:
            result = self.app.train(task)
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    def evaluate(self, params: Tensors) -> dict[str, float]:
        return self.app.evaluate(params)

    def shutdown(self) -> None:
        pass
