"""What every benchmark records beside its numbers: the machine and the code measured."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

MEASURED_FILES = (
    "src/fedpeft/simulation/ray_backend.py",
    "src/fedpeft/simulation/run.py",
    "src/fedpeft/coordinator/engine.py",
    "src/fedpeft/client/app.py",
)


def source_version(files: tuple[str, ...] = MEASURED_FILES) -> dict[str, Any]:
    """Which library code was measured (others may edit src/ while benchmarks run)."""

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=REPO)
        return proc.stdout.strip()

    return {
        "git_head": git("rev-parse", "HEAD"),
        "src_modified": git("status", "--porcelain", "--", "src").splitlines(),
        "sha256_12": {f: hashlib.sha256((REPO / f).read_bytes()).hexdigest()[:12] for f in files},
    }


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "psutil": psutil.__version__,
    }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunStamp:
    """Taken when a benchmark starts; :meth:`header` adds how it ended.

    The shared head of every report: name, start and finish time, machine, the measured
    source before and after (others may edit src/ meanwhile) and the load average.
    """

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.started = utc_now()
        self.source_before = source_version()
        self.load_start = os.getloadavg()

    def header(self, load_end: tuple[float, float, float] | None = None) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "started": self.started,
            "finished": utc_now(),
            "machine": machine_info(),
            "source_before": self.source_before,
            "source_after": source_version(),
            "load_avg_start": self.load_start,
            "load_avg_end": load_end if load_end is not None else os.getloadavg(),
        }


def command_line() -> str:
    """This process's command as run from the repository root (no machine paths)."""
    import sys

    def rel(arg: str) -> str:
        path = Path(arg)
        if path.is_absolute():
            try:
                return os.path.relpath(path, REPO)
            except ValueError:
                return arg
        return arg

    return " ".join(rel(a) for a in [sys.executable, *sys.argv])
