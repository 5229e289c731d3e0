"""The chaos soak of ``bench/grpc_load.py --chaos`` as a test: asyncio clients against a
real coordinator process on 127.0.0.1 (real gRPC, real SQLite), some of them hostile
(hostile metrics, huge example counts, NaN/Inf and mis-shaped tensors, scaled updates,
malformed and oversized streams, replays, guessed credentials, squatters, stallers).

The soak itself is the adversary and the checker: it recomputes every committed round's
global adapter from the results the state database accepted and fails on any difference,
on an acknowledged push missing from the store, on a metrics line lost or overwritten, on
an honest client that was given work and never counted, or on an error an honest client
should never see. Mutations tried against it are listed in docs/deployment.md's soak
section and in the report of the session that wrote it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "grpc_load.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def soak(tmp_path: Path, *flags: str, timeout: float) -> dict[str, Any]:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--chaos", "--port", str(free_port()), "--heartbeat", "1",
         "--ready-within", "3", "--workdir", str(tmp_path / "work"), "--output", str(out),
         *flags],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert out.exists(), proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_a_small_hostile_fleet_cannot_bend_a_round(tmp_path: Path) -> None:
    """A handful of clients, one hostile participant and one squatter, two rounds."""
    result = soak(
        tmp_path, "--clients", "8", "--rounds", "2", "--hostile-fraction", "0.25",
        "--kill-after-round", "0", "--client-kill-fraction", "0", timeout=120,
    )  # fmt: skip
    check = result["check"]
    assert check["problems"] == [] and check["client_errors"] == [], check
    assert check["rounds_checked"] == 2 and check["max_abs_difference"] == 0.0
    assert check["acknowledged_not_in_store"] == 0 and check["honest_starved"] == []
    assert result["roles"] == {"honest": 6, "hostile": 1, "squatter": 1}
    assert result["passed"] and result["coordinator"]["exit_code"] == 0


@pytest.mark.slow
def test_the_soak_survives_a_coordinator_kill_and_client_kills(tmp_path: Path) -> None:
    """40 clients, 15% hostile, random client kills, SIGKILL of the coordinator after
    round 2 and a restart on the same state database and run folder."""
    result = soak(
        tmp_path, "--clients", "40", "--rounds", "5", "--hostile-fraction", "0.15",
        "--kill-after-round", "2", "--client-kill-fraction", "0.1", timeout=600,
    )  # fmt: skip
    check = result["check"]
    assert result["coordinator"]["killed"]
    assert check["problems"] == [] and check["client_errors"] == [], check
    assert check["rounds_checked"] == 5 and check["max_abs_difference"] == 0.0
    assert check["acknowledged_not_in_store"] == 0 and check["honest_starved"] == []
    assert check["squatter_registrations_left_in_store"] == []
    assert result["passed"]
