"""A run in which every round failed is an error: non-zero exit, the clients' error on one
line, the traceback only under ``--debug``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpeft.config import JobConfig
from fedpeft.coordinator.failures import RunFailed, check_run, failure_message
from fedpeft.protocol.messages import TrainResult, TrainTask
from fedpeft.simulation import run_simulation

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]


def rec(round_num: int, ok: int, rejected: dict[str, str] | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "round": round_num,
        "clients_sampled": ok + len(rejected or {}),
        "clients_ok": ok,
    }
    if rejected:
        record["rejected"] = rejected
    if ok == 0:
        record["round_failed"] = "0 usable updates < min_fit_clients=1; global adapter unchanged"
    return record


def test_a_run_with_one_good_round_is_no_failure() -> None:
    records = [rec(1, 0, {"0": "ValueError: x"}), rec(2, 1, {"1": "ValueError: x"})]
    assert failure_message(records) is None
    check_run(records)  # does not raise


def test_same_error_from_every_client_is_named_once() -> None:
    records = [
        rec(1, 0, {"0": "TypeError: bad client 0\ntrace", "3": "TypeError: bad client 3"}),
        rec(2, 0, {"2": "TypeError: bad client 2"}),
    ]
    with pytest.raises(RunFailed) as info:
        check_run(records)
    assert (
        str(info.value) == "all 2 round(s) failed: every client raised TypeError: bad client <id>"
    )


def test_mixed_errors_report_the_most_common() -> None:
    records = [rec(1, 0, {"0": "OSError: disk", "1": "ValueError: v", "2": "ValueError: v"})]
    message = failure_message(records)
    assert message == "all 1 round(s) failed; most common client error (2 of 3): ValueError: v"


class _BrokenApp:
    """A client app whose every training task fails the same way (no model loaded)."""

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(3, np.float32)}

    def train(self, task: TrainTask) -> TrainResult:
        return TrainResult(
            task.round,
            task.client_id,
            error=f"AttributeError: 'NoneType' has no attribute 'x' (client {task.client_id})",
        )

    def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
        return {}


def test_run_simulation_raises_after_the_first_round(tmp_path: Path, tiny_text_file: Path) -> None:
    cfg = JobConfig().replace(
        {
            "data.train": str(tiny_text_file),
            "output": str(tmp_path / "run"),
            "federation.clients": 4,
            "federation.clients_per_round": 2,
            "federation.rounds": 5,
            "federation.partition": "iid",
        }
    )
    with pytest.raises(RunFailed, match="every client raised AttributeError") as info:
        run_simulation(cfg, app_factory=lambda name: _BrokenApp(), export=False)
    assert "all 1 round(s) failed" in str(info.value)  # stopped: 4 more rounds would repeat it
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the failed round is still logged


@pytest.mark.slow  # two MiniLM processes' worth of start-up: ~30 s idle, 90 s on a busy box
def test_cli_exits_nonzero_with_the_clients_error(tmp_path: Path, tiny_text_file: Path) -> None:
    """Real MiniLM clients whose updates all overflow (lr 1e30) are all rejected."""
    args = [
        "simulate",
        "--data",
        str(tiny_text_file),
        "--eval-data",
        str(tiny_text_file),
        "--clients",
        "2",
        "--clients-per-round",
        "2",
        "--rounds",
        "3",
        "--partition",
        "iid",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--local-epochs",
        "3",
        "--max-length",
        "16",
        "--output",
        str(tmp_path / "run"),
    ]
    proc = subprocess.run([*FEDPEFT, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: all 1 round(s) failed: every client raised")
    assert "non-finite" in last
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_a_bug_is_one_line_and_exit_1_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], debug: bool
) -> None:
    """A programming error escaping the run (the client path no longer turns TypeError
    into "client rejected") is one line with exit code 1; --debug raises it whole."""
    import fedpeft.simulation
    from fedpeft.cli import main as cli_main

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'\nmore")

    monkeypatch.setattr(fedpeft.simulation, "run_simulation", broken)
    argv = [*(["--debug"] if debug else []), "simulate", "--output", "/tmp/unused"]
    if debug:
        with pytest.raises(TypeError):
            cli_main.main(argv)
        return
    with pytest.raises(SystemExit) as info:
        cli_main.main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: TypeError: unsupported operand type(s) for +")
    assert "--debug" in err[-1] and "more" not in err[-1]
