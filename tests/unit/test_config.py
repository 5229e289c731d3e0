"""Config validation names the field; TOML round-trips; flags override files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedpeft.aggregation import LORA_AGGREGATIONS, STRATEGIES
from fedpeft.compression import ScaleRule, available_codecs
from fedpeft.config import JobConfig, dump_toml, load_config
from fedpeft.data.partition import PARTITIONERS
from fedpeft.errors import ConfigError

BAD = [
    ({"lora.r": 0}, "lora.r"),
    ({"lora.r": -3}, "lora.r"),
    ({"data.max_length": 0}, "data.max_length"),
    ({"train.lr": -1.0}, "train.lr"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"train.schedule": "cosine"}, "train.schedule"),
    ({"train.optimizer": "lamb"}, "train.optimizer"),
    ({"train.momentum": 1.0}, "train.momentum"),
    (
        {"federation.clients": 10, "federation.clients_per_round": 20},
        "federation.clients_per_round",
    ),
    ({"federation.strategy": "fedsgd"}, "federation.strategy"),
    ({"federation.backend": "dask"}, "federation.backend"),
    ({"codec.density": 0.0}, "codec.density"),
    ({"codec.density": 10.0}, "codec.density"),
    ({"codec.feedback_decay": 1.5}, "codec.feedback_decay"),
    ({"codec.dense_below": -1}, "codec.dense_below"),
    ({"federation.server_momentum": 1.0}, "federation.server_momentum"),
    ({"codec.name": "zip"}, "codec.name"),
    ({"codec.downlink": "zip"}, "codec.downlink"),
    ({"codec.scale": "median"}, "codec.scale"),
    ({"codec.scope": "row"}, "codec.scope"),
    ({"codec.dtype": "fp8"}, "codec.dtype"),
    ({"federation.partition": "random"}, "federation.partition"),
    ({"federation.lora_aggregation": "mean"}, "federation.lora_aggregation"),
    # FedExP steps by unnoised update norms (its class declares needs_sq_norm)
    ({"federation.strategy": "fedexp", "dp.epsilon": 1.0}, "federation.strategy"),
    ({"model.device": "tpu"}, "model.device"),
    ({"lora.layers": -1}, "lora.layers"),
    ({"lora.layers": True}, "lora.layers"),
    ({"train.prefix_cache": "yes"}, "train.prefix_cache"),
    ({"train.prefix_cache_mb": 0}, "train.prefix_cache_mb"),
    ({"train.prefix_cache_dtype": "fp8"}, "train.prefix_cache_dtype"),
    (
        {"adapter.kind": "offsite", "adapter.emulator": "emu", "lora.layers": 2},
        "lora.layers",
    ),
]


@pytest.mark.parametrize(("overrides", "field"), BAD)
def test_invalid_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        JobConfig().replace(overrides)
    assert err.value.field == field
    assert f"`{field}`" in str(err.value)


def test_plug_in_names_are_read_from_their_registries() -> None:
    """Every registered strategy, partitioner, codec and scale rule is a valid setting."""
    config = JobConfig()
    for name in STRATEGIES:
        assert config.replace({"federation.strategy": name}).federation.strategy == name
    for name in PARTITIONERS:
        assert config.replace({"federation.partition": name}).federation.partition == name
    for name in LORA_AGGREGATIONS:
        fed = config.replace({"federation.lora_aggregation": name}).federation
        assert fed.lora_aggregation == name
    for name in available_codecs():
        codec = config.replace({"codec.name": name, "codec.downlink": name}).codec
        assert codec.downlink_mode == name
    for rule in ScaleRule:
        assert config.replace({"codec.scale": rule.value}).codec.scale == rule.value


def test_auto_downlink_follows_whether_the_codec_compresses() -> None:
    assert JobConfig().replace({"codec.name": "compeft"}).codec.downlink_mode == "chain"
    assert JobConfig().replace({"codec.name": "dense"}).codec.downlink_mode == "dense"


def test_config_imports_no_torch() -> None:
    code = "import sys, fedpeft.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = JobConfig().replace(
        {
            "federation.rounds": 7,
            "lora.target_modules": ["query"],
            "codec.error_feedback": True,
            "output": "x",
        }
    )
    path = tmp_path / "job.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path) == cfg


def test_unknown_field_and_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text("[federation]\nrouns = 3\n")
    with pytest.raises(ConfigError, match=r"federation\.rouns"):
        load_config(path)
    path.write_text("[federation]\nrounds = 'three'\n")
    with pytest.raises(ConfigError, match=r"federation\.rounds"):
        load_config(path)
    path.write_text("[federation\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")


def test_none_overrides_keep_file_values(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text("[federation]\nrounds = 9\n")
    cfg = load_config(path).replace(
        {"federation.rounds": None, "federation.clients": 20, "federation.clients_per_round": 4}
    )
    assert cfg.federation.rounds == 9
    assert cfg.federation.clients == 20


def test_readme_experiment_file_loads(tmp_path: Path) -> None:
    """The TOML example in docs/accuracy.md (the setting it reports) is a valid
    experiment file."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "docs" / "accuracy.md").read_text()
    match = re.search(r"```toml\n(.*?)```", readme, re.S)
    assert match is not None, "docs/accuracy.md has no TOML example"
    path = tmp_path / "exp.toml"
    path.write_text(match.group(1))
    cfg = load_config(path)
    assert cfg.federation.rounds == 67 and cfg.federation.clients_per_round == 3
    assert cfg.train.lr == 2e-3 and cfg.codec.name == "dense"
    assert cfg.federation.logit_adjustment == 1.0 and cfg.federation.calibration == "ccvr"
