"""The CLI explains itself: every config field once, every option with help, a panel and
its default; ``--print-config`` prints TOML that ``--config`` loads back."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fedpeft.cli import common
from fedpeft.cli.main import _register, app
from fedpeft.cli.simulate import SIMULATE_DEFAULTS, simulate
from fedpeft.cli.train import TRAIN_SECTIONS, train
from fedpeft.config import JobConfig, load_config

_register()
RUNNER = CliRunner()
COMMANDS = {"simulate": (simulate, None), "train": (train, TRAIN_SECTIONS)}


def command(name: str) -> Any:
    """The click command typer builds for ``name`` (typer's own Group/Option classes)."""
    group: Any = typer.main.get_command(app)
    return group.commands[name]


def option_config_keys(name: str) -> list[str]:
    """The config key behind each option of a command (hand-written and generated)."""
    func, _ = COMMANDS[name]
    explicit = common.option_keys(func.__wrapped__)  # type: ignore[attr-defined]
    generated = {p: key for p, (key, _) in func.generated_options.items()}  # type: ignore[attr-defined]
    keys = []
    for param in command(name).params:
        key = explicit.get(param.name or "") or generated.get(param.name or "")
        if key is not None:
            keys.append(key)
    return keys


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_config_field_once(name: str) -> None:
    _, sections = COMMANDS[name]
    keys = option_config_keys(name)
    twice = [k for k, n in Counter(keys).items() if n > 1]
    assert not twice, f"{name}: config fields set by more than one option: {twice}"
    missing = sorted(set(common.config_fields(sections)) - set(keys))
    assert not missing, f"{name}: config fields without an option: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_a_panel_and_a_default(name: str) -> None:
    for param in command(name).params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert param.help and param.help.strip(), f"{name} {param.opts}: no help text"
        panel = getattr(param, "rich_help_panel", None)
        assert panel, f"{name} {param.opts}: no help panel"
        assert isinstance(param.show_default, str), f"{name} {param.opts}: default not shown"


def test_option_default_is_the_one_the_command_uses() -> None:
    shown = {p.name: p.show_default for p in command("simulate").params}
    assert shown["lr"] == str(SIMULATE_DEFAULTS["train.lr"])
    assert shown["rounds"] == str(JobConfig().federation.rounds)
    assert shown["max_eval_examples"] == str(SIMULATE_DEFAULTS["data.max_eval_examples"])


def test_help_shows_panels_and_defaults() -> None:
    result = RUNNER.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for panel in ("Data", "Model", "Federation", "Training", "Compression", "Backend", "Output"):
        assert f"─ {panel} " in result.output, panel
    assert "Privacy & security" in result.output
    assert "[default: (100)]" in result.output  # --clients


def _print_config(*args: str) -> str:
    result = RUNNER.invoke(app, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


def test_print_config_is_toml_that_config_accepts(tmp_path: Path) -> None:
    text = _print_config("simulate", "--clients", "20", "--clients-per-round", "5", "--rounds", "2")
    data: dict[str, Any] = tomllib.loads(text)
    assert data["federation"]["clients"] == 20 and data["federation"]["rounds"] == 2
    path = tmp_path / "exp.toml"
    path.write_text(text)
    cfg = load_config(path)
    expected = JobConfig().replace(
        {
            **SIMULATE_DEFAULTS,
            "federation.clients": 20,
            "federation.clients_per_round": 5,
            "federation.rounds": 2,
        }
    )
    assert cfg == expected
    # and --config reads it back unchanged
    assert _print_config("simulate", "--config", str(path)) == text


def test_generated_options_and_columns_reach_the_config() -> None:
    text = _print_config(
        "simulate",
        "--dp-clip",
        "0.5",
        "--data-header",
        "false",
        "--text-column",
        "1,2",
        "--label-column",
        "0",
        "--lora-target-modules",
        "query",
        "--lora-target-modules",
        "value",
        "--schedule",
        "constant",
        "--warmup-ratio",
        "0.0",
    )
    data = tomllib.loads(text)
    assert data["dp"]["clip"] == 0.5
    assert data["data"]["header"] is False
    assert data["data"]["text_column"] == [1, 2] and data["data"]["label_column"] == 0
    assert data["lora"]["target_modules"] == ["query", "value"]
    assert data["train"]["schedule"] == "constant" and data["train"]["warmup_ratio"] == 0.0


def test_train_print_config_and_field_errors() -> None:
    data = tomllib.loads(_print_config("train", "--text-column", "title,description"))
    assert data["data"]["text_column"] == ["title", "description"]
    assert "federation" in data  # the whole job config, loadable by --config
    result = RUNNER.invoke(app, ["train", "--data-header", "maybe", "--print-config"])
    assert result.exit_code != 0
    assert "data.header" in str(result.exception)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("text", "text"), ("2", 2), ("title,description", ["title", "description"]), ("1, 2", [1, 2])],
)
def test_parse_columns(value: str, expected: object) -> None:
    assert common.parse_columns(value) == expected
