"""An operator cannot lose a run, with real ``fedpeft`` processes: ``train``, ``simulate``
and ``coordinator serve`` refuse an ``--output`` that holds another run (exit 2, one line
naming the folder and ``--force``, the folder byte for byte as it was); a port in use, a
corrupt state database, missing TLS files and a one-label classification job exit 2 with
one line naming the port or file and leave no state behind."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import JobConfig
from fedpeft.coordinator.checkpoint import EngineState, save_checkpoint
from fedpeft.rundir import RunDir

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]
OTHER_RUN = "0123456789abcdef"


def fedpeft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDPEFT, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line_exit_2(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def other_run(tmp_path: Path) -> Path:
    """A finished simulate run of another job: config, meta, metrics, checkpoint,
    summary and an exported adapter file."""
    out = tmp_path / "other-run"
    cfg = JobConfig().replace({"output": str(out), "federation.rounds": 1})
    run = RunDir(out)
    run.create(cfg, {"run_id": OTHER_RUN, "task": "classification", "label_names": ["a", "b"]})
    run.append_metrics({"round": 1, "clients_ok": 5, "bytes_up": 1, "bytes_down": 1})
    save_checkpoint(out, EngineState(round=1, params={"w": np.ones(3, np.float32)}), {}, False)
    run.write_summary({"rounds": 1})
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    return out


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def serve_args(data: Path, state: Path, out: Path, *extra: str) -> list[str]:
    return [
        "coordinator", "serve", "--model", "minilm", "--eval-data", str(data),
        "--insecure-localhost", "--port", "0", "--enrollment-token", "t0ken",
        "--state", str(state), "--output", str(out), *extra,
    ]  # fmt: skip


# ---- another run in --output ----------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        ["train", "--epochs", "1"],
        ["simulate", "--clients", "4", "--clients-per-round", "2", "--rounds", "1"],
    ],
    ids=["train", "simulate"],
)
def test_a_fresh_run_refuses_an_output_holding_another_run(
    command: list[str], other_run: Path, tiny_text_file: Path
) -> None:
    before = snapshot(other_run)
    proc = fedpeft(
        *command, "--data", str(tiny_text_file), "--eval-data", str(tiny_text_file),
        "--output", str(other_run),
    )  # fmt: skip
    one_line_exit_2(proc, str(other_run), "--force", OTHER_RUN)
    assert snapshot(other_run) == before


def test_serve_refuses_an_output_holding_another_run_and_leaves_no_state(
    other_run: Path, tiny_text_file: Path, tmp_path: Path
) -> None:
    before = snapshot(other_run)
    state = tmp_path / "state" / "state.db"
    proc = fedpeft(*serve_args(tiny_text_file, state, other_run))
    one_line_exit_2(proc, str(other_run), "--force")
    assert snapshot(other_run) == before
    assert not (tmp_path / "state").exists()  # no empty state database left behind


def test_simulate_resume_takes_no_force(other_run: Path) -> None:
    proc = fedpeft("simulate", "--resume", str(other_run), "--force")
    one_line_exit_2(proc, "--force")


# ---- operational failures ----------------------------------------------------------------------
def test_serve_port_in_use_names_the_port_and_leaves_no_file(
    taken_port: int, tiny_text_file: Path, tmp_path: Path
) -> None:
    args = serve_args(tiny_text_file, tmp_path / "st" / "state.db", tmp_path / "run")
    args[args.index("--port") + 1] = str(taken_port)
    proc = fedpeft(*args)
    one_line_exit_2(proc, "--port", str(taken_port), "in use")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_serve_metrics_port_in_use_names_it_and_leaves_no_file(
    taken_port: int, tiny_text_file: Path, tmp_path: Path
) -> None:
    args = serve_args(
        tiny_text_file, tmp_path / "state.db", tmp_path / "run", "--metrics-port", str(taken_port)
    )
    proc = fedpeft(*args)
    one_line_exit_2(proc, "--metrics-port", str(taken_port))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["serve", "status"])
def test_a_corrupt_state_database_is_named_and_kept(
    command: str, tiny_text_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(b"\x00garbage, not SQLite" * 100)
    before = snapshot(tmp_path)
    if command == "serve":
        proc = fedpeft(*serve_args(tiny_text_file, state, tmp_path / "run"))
    else:
        proc = fedpeft("coordinator", "status", "--state", str(state))
    one_line_exit_2(proc, str(state))
    assert snapshot(tmp_path) == before


def test_missing_tls_files_are_named(tiny_text_file: Path, tmp_path: Path) -> None:
    args = serve_args(tiny_text_file, tmp_path / "state.db", tmp_path / "run")
    args.remove("--insecure-localhost")
    missing = tmp_path / "no-such-cert.pem"
    proc = fedpeft(
        *args, "--host", "127.0.0.1", "--tls-cert", str(missing), "--tls-key", str(missing)
    )
    one_line_exit_2(proc, str(missing))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    ca = tmp_path / "no-such-ca.pem"
    proc = fedpeft(
        "client", "run", "--coordinator", "example.org:443", "--tls-ca", str(ca),
        "--data", str(tiny_text_file), "--state", str(tmp_path / "client"),
    )  # fmt: skip
    one_line_exit_2(proc, str(ca))


# ---- one label -------------------------------------------------------------------------------
@pytest.fixture
def one_label_file(tmp_path: Path) -> Path:
    path = tmp_path / "one-label.txt"
    path.write_text("".join(f"spam buy cheap pills number {i}\n" for i in range(8)))
    return path


@pytest.mark.parametrize("command", ["train", "simulate", "serve"])
def test_a_one_label_classification_job_is_refused(
    command: str, one_label_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    data = ["--data", str(one_label_file), "--eval-data", str(one_label_file)]
    if command == "train":
        proc = fedpeft("train", *data, "--output", str(out))
    elif command == "simulate":
        proc = fedpeft(
            "simulate", *data, "--clients", "2", "--clients-per-round", "2",
            "--partition", "iid", "--output", str(out),
        )  # fmt: skip
    else:
        proc = fedpeft(*serve_args(one_label_file, tmp_path / "state.db", out))
    one_line_exit_2(proc, str(one_label_file), "'spam'", "at least two labels")
    assert not out.exists() and not (tmp_path / "state.db").exists()


# ---- --force -----------------------------------------------------------------------------------
@pytest.mark.slow  # a real (tiny) training run: ~20 s on two busy cores
def test_train_force_replaces_the_other_run(other_run: Path, tiny_text_file: Path) -> None:
    (other_run / "notes.txt").write_text("the operator's own file")
    proc = fedpeft(
        "train", "--data", str(tiny_text_file), "--eval-data", str(tiny_text_file),
        "--max-length", "16", "--threads", "1", "--output", str(other_run), "--force",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = RunDir(other_run)
    assert run.run_id() not in (None, OTHER_RUN)
    assert not (other_run / "checkpoint").exists()  # the old run's resumable state is gone
    assert not (other_run / "summary.json").exists()
    assert [r["step"] for r in run.read_metrics()][-1] > 0
    assert (other_run / "notes.txt").read_text() == "the operator's own file"
