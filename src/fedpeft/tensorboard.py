"""TensorBoard scalars beside ``metrics.jsonl`` (``--tensorboard DIR`` on train and simulate).

Every numeric field of a metrics record becomes one scalar at the record's step (the
round for ``simulate``, the optimizer step for ``train``), so what TensorBoard plots is
exactly what ``metrics.jsonl`` holds. Written with ``tensorboardX`` (a pinned
dependency: no TensorFlow needed); ``tensorboard --logdir DIR`` reads the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fedpeft.errors import ConfigError

__all__ = ["ScalarLogger", "scalar_fields"]


def scalar_fields(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a metrics record (booleans and nested values skipped)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class ScalarLogger:
    """One TensorBoard event file under ``logdir``; a context manager that flushes on exit."""

    def __init__(self, logdir: str | Path, *, skip: tuple[str, ...] = ("round", "step")) -> None:
        path = Path(logdir)
        if path.exists() and not path.is_dir():
            raise ConfigError("--tensorboard", f"{path} exists and is not a folder")
        from tensorboardX import SummaryWriter

        self.path = path
        self.skip = skip
        self._writer = SummaryWriter(logdir=str(path))

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """Write every scalar field of ``record`` (except the step counters) at ``step``."""
        for key, value in scalar_fields(record).items():
            if key not in self.skip:
                self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> ScalarLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
