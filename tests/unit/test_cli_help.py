"""The CLI explains itself: every config field once, every option with help, a panel and
its default; one flag per setting in every command, old spellings as hidden aliases;
``--print-config`` prints TOML that ``--config`` loads back."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fedpeft.cli import options
from fedpeft.cli.coordinator import serve
from fedpeft.cli.main import _register, app
from fedpeft.cli.simulate import SIMULATE_DEFAULTS, simulate
from fedpeft.cli.train import TRAIN_SECTIONS, train
from fedpeft.config import JobConfig, load_config

_register()
RUNNER = CliRunner()
#: name: (argv prefix, the decorated command, the config keys it has options for)
COMMANDS: dict[str, tuple[list[str], Any, list[str]]] = {
    "simulate": (["simulate"], simulate, options.job_keys()),
    "train": (["train"], train, options.job_keys(TRAIN_SECTIONS)),
    "serve": (
        ["coordinator", "serve"],
        serve,
        options.job_keys(without=options.SIMULATION_ONLY),
    ),
}
#: A valid value of every key that has an alias (a new alias needs one here).
ALIAS_VALUES = {
    "model.device": "cpu",
    "lora.r": "4",
    "data.max_length": "32",
    "data.max_train_examples": "7",
    "train.epochs": "2",
    "train.max_steps": "3",
    "train.threads": "2",
    "federation.clients": "50",
    "federation.min_fit_clients": "2",
    "secagg.tolerated_dropout": "0.2",
    "secagg.bits": "20",
    "secagg.clip_range": "0.1",
    "secagg.weight_cap": "5",
}


def command(name: str) -> Any:
    """The click command typer builds for ``name`` (typer's own Group/Option classes)."""
    group: Any = typer.main.get_command(app)
    for part in COMMANDS[name][0]:
        group = group.commands[part]
    return group


def param_keys(name: str) -> dict[str, str]:
    """``{parameter: config key}`` of a command's options, aliases included."""
    func = COMMANDS[name][1]
    return {param: o.key for o in func.job_options for param, _ in o.spellings}


def shown_defaults(name: str) -> dict[str, str]:
    """``{config key: default shown}`` of a command's visible job options."""
    keys = param_keys(name)
    return {keys[p.name]: p.show_default for p in command(name).params if p.name in keys}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_every_config_field_once(name: str) -> None:
    keys = param_keys(name)
    visible = [keys[p.name] for p in command(name).params if p.name in keys and not p.hidden]
    twice = [k for k, n in Counter(visible).items() if n > 1]
    assert not twice, f"{name}: config fields set by more than one visible option: {twice}"
    assert sorted(visible) == sorted(COMMANDS[name][2])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_a_panel_and_a_default(name: str) -> None:
    for param in command(name).params:
        if param.param_type_name != "option" or param.name == "help" or param.hidden:
            continue
        assert param.help and param.help.strip(), f"{name} {param.opts}: no help text"
        panel = getattr(param, "rich_help_panel", None)
        assert panel, f"{name} {param.opts}: no help panel"
        shown = param.required or isinstance(param.show_default, str)
        assert shown, f"{name} {param.opts}: default not shown"


def test_one_flag_per_setting_in_every_command() -> None:
    flags: dict[str, set[tuple[str, ...]]] = {}
    for name in COMMANDS:
        keys = param_keys(name)
        for param in command(name).params:
            if param.name in keys and not param.hidden:
                flags.setdefault(keys[param.name], set()).add(tuple(param.opts))
    spelled_twice = {key: opts for key, opts in flags.items() if len(opts) > 1}
    assert not spelled_twice


def test_option_default_is_the_one_the_command_uses() -> None:
    shown = shown_defaults("simulate")
    assert shown["train.lr"] == str(SIMULATE_DEFAULTS["train.lr"])
    assert shown["federation.rounds"] == str(JobConfig().federation.rounds)
    assert shown["data.max_eval_examples"] == str(SIMULATE_DEFAULTS["data.max_eval_examples"])


def test_serve_and_simulate_share_the_job_defaults() -> None:
    simulated, served = shown_defaults("simulate"), shown_defaults("serve")
    assert {k: v for k, v in served.items() if k != "output"} == {
        k: simulated[k] for k in served if k != "output"
    }
    assert SIMULATE_DEFAULTS == {**options.JOB_DEFAULTS, "output": "runs/simulate"}


def test_aliases_are_hidden_and_set_the_same_key() -> None:
    aliased = {key for key, flag in options.FLAGS.items() if flag.aliases}
    assert aliased == set(ALIAS_VALUES)
    for key in sorted(aliased):
        flag = options.FLAGS[key]
        name = "train" if key in COMMANDS["train"][2] else "simulate"
        value = ALIAS_VALUES[key]
        expected = _print_config(name, flag.name, value)
        for alias in flag.aliases:
            assert _print_config(name, alias, value) == expected, alias
        hidden = [p for p in command(name).params if set(p.opts) & set(flag.aliases)]
        assert hidden and all(p.hidden for p in hidden), key


def test_an_option_given_under_two_spellings_is_refused() -> None:
    result = RUNNER.invoke(app, ["train", "--lora-r", "4", "--rank", "4", "--print-config"])
    assert result.exit_code != 0
    assert "--lora-r and --rank" in str(result.exception)


def test_help_shows_panels_and_defaults() -> None:
    result = RUNNER.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for panel in ("Data", "Model", "Federation", "Training", "Compression", "Backend", "Output"):
        assert f"─ {panel} " in result.output, panel
    assert "Privacy & security" in result.output
    assert "[default: (100)]" in result.output  # --clients
    assert "--rank" not in result.output and "--data-max-length" not in result.output


def test_serve_help_has_the_job_groups_and_its_own() -> None:
    result = RUNNER.invoke(app, ["coordinator", "serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for panel in ("Model", "Data", "Federation", "Training", "Compression", "Server"):
        assert f"─ {panel}" in result.output, panel
    assert "Privacy & security" in result.output
    lines = [
        line
        for line in result.output.splitlines()
        if any(f in line for f in ("--secagg", "--dp-epsilon", "--strategy"))
    ]
    assert len(lines) == 3 and all("[default: " in line for line in lines), lines
    assert "--backend" not in result.output  # simulation only


def _serve(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[JobConfig, Any]:
    """``coordinator serve ARGS`` up to the call of ``serve_job``: its (cfg, opts)."""
    from fedpeft.coordinator import server

    seen: list[tuple[JobConfig, Any]] = []
    monkeypatch.setattr(server, "serve_job", lambda cfg, opts, **_: seen.append((cfg, opts)) or {})
    result = RUNNER.invoke(app, ["coordinator", "serve", "--state", "/tmp/s.db", *args])
    assert result.exit_code == 0, result.output
    return seen[0]


def test_serve_turns_its_options_into_the_job_and_serve_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg, opts = _serve(
        monkeypatch,
        *("--output", "/tmp/run", "--max-clients", "50", "--secagg", "--insecure-localhost"),
        *("--threads", "1", "--local-steps", "30", "--liveness-seconds", "40"),
    )
    expected = JobConfig().replace(
        {
            **options.JOB_DEFAULTS,
            "output": "/tmp/run",
            "federation.clients": 50,
            "secagg.enabled": True,
            "train.threads": 1,
            "train.max_steps": 30,
        }
    )
    assert cfg == expected
    assert (opts.host, opts.port, opts.insecure_localhost, opts.tls) == (
        "127.0.0.1",
        50051,
        True,
        None,
    )
    assert opts.fleet.max_clients == 50 and opts.fleet.liveness_seconds == 40.0


def test_serve_needs_an_output_or_a_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result = RUNNER.invoke(app, ["coordinator", "serve", "--state", "/tmp/s.db"])
    assert result.exit_code != 0 and "--output" in str(result.exception)
    path = tmp_path / "job.toml"
    path.write_text('output = "/tmp/from-file"\n[train]\nlr = 0.5\n')
    cfg, _ = _serve(monkeypatch, "--config", str(path))
    assert cfg == load_config(path)  # a file replaces the command's defaults


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
    assert options.parse_columns(value) == expected
