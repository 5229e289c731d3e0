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
