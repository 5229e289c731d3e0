"""``fedpeft init PATH`` writes a commented experiment file that loads and runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli.main import _register, app
from fedpeft.cli.simulate import SIMULATE_DEFAULTS
from fedpeft.config import JobConfig, load_config

_register()
RUNNER = CliRunner()
FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]


def test_init_writes_the_default_job_commented(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    result = RUNNER.invoke(app, ["init", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    expected = JobConfig().replace({**SIMULATE_DEFAULTS, "output": "runs/exp"})
    assert load_config(path) == expected
    assert "# federated rounds" in text  # each field's help, from the config dataclasses
    assert "[federation]  # Rounds, clients" in text
    assert "# eval =" in text  # unset fields stay visible, commented out
    printed = RUNNER.invoke(app, ["simulate", "--config", str(path), "--print-config"])
    assert printed.exit_code == 0
    reloaded = tmp_path / "again.toml"
    reloaded.write_text(printed.output)
    assert load_config(reloaded) == expected


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("keep me\n")
    result = RUNNER.invoke(app, ["init", str(path)])
    assert result.exit_code != 0 and "--force" in str(result.exception)
    assert path.read_text() == "keep me\n"
    assert RUNNER.invoke(app, ["init", str(path), "--force"]).exit_code == 0
    assert load_config(path).federation.rounds == JobConfig().federation.rounds
    bad = RUNNER.invoke(app, ["init", str(tmp_path / "exp.yaml")])
    assert bad.exit_code != 0 and ".toml" in str(bad.exception)


@pytest.mark.slow  # a real MiniLM federation in a subprocess: ~30 s idle, minutes when busy
def test_init_file_runs(tmp_path: Path, tiny_text_file: Path) -> None:
    path = tmp_path / "exp.toml"
    assert subprocess.run([*FEDPEFT, "init", str(path)], capture_output=True).returncode == 0
    out = tmp_path / "run"
    args = ["--rounds", "1", "--clients", "2", "--clients-per-round", "2"]
    args += ["--data", str(tiny_text_file), "--eval-data", str(tiny_text_file)]
    args += ["--tensorboard", str(tmp_path / "tb")]
    proc = subprocess.run(
        [*FEDPEFT, "simulate", "--config", str(path), *args, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1 and "final_eval_accuracy" in summary
    assert summary["eval_examples"] == 48 and summary["max_eval_examples"] == 500
    assert "evaluating on the first 500 held-out examples" in proc.stdout
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))  # TensorBoard scalars
