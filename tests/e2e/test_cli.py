"""The console script: bad input gives one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDPEFT, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--model", "nope"], "nope"),
        (["train", "--data", "/no/such/file.txt"], "/no/such/file.txt"),
        (["train", "--lora-r", "0"], "lora.r"),
        (["train", "--max-length", "0"], "data.max_length"),
        (
            ["simulate", "--clients", "3", "--clients-per-round", "5"],
            "federation.clients_per_round",
        ),
        (["simulate", "--codec", "compeft", "--density", "10"], "codec.density"),
        (["simulate", "--codec", "compeft", "--scale", "l2"], "codec.scale"),
        (["simulate", "--strategy", "fedexq"], "federation.strategy"),
        (["simulate", "--resume", "/no/such/run"], "/no/such/run"),
        (["export", "/no/such/run", "--out", "/tmp/x"], "/no/such/run"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_empty_dataset_and_wrong_columns(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run("train", "--data", str(empty))
    assert proc.returncode == 2 and str(empty) in proc.stderr
    csv = tmp_path / "d.csv"
    csv.write_text("sentence,target\nhello,1\n")
    proc = run("train", "--data", str(csv))
    assert proc.returncode == 2 and "text" in proc.stderr


def test_debug_shows_traceback() -> None:
    proc = run("--debug", "train", "--model", "nope")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_help_lists_commands() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("train", "export", "simulate"):
        assert cmd in proc.stdout
