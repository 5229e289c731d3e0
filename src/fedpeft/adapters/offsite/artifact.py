"""The emulator folder's ``offsite.json``, and the backbone hash it is checked against."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.adapters.offsite.layout import OffsiteLayout
from fedpeft.errors import ConfigError, ModelError
from fedpeft.models.registry import ARCHITECTURES, arch_spec

EMULATOR_FILE = "offsite.json"
EMULATOR_FORMAT = "fedpeft-offsite-emulator"
EMULATOR_VERSION = 1


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ModelError(f"no weight files (*.safetensors, pytorch_model*.bin) in {folder}")
    return files


def backbone_sha256(path: str) -> str:
    """SHA-256 over the backbone's weight files (``*.safetensors``, else ``*.bin``), in
    name order. ``path`` is a local folder or, where a hub is reachable, a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(path, allow_patterns=["*.safetensors", "*.bin", "*.json"])
            )
        except Exception as exc:  # any hub failure: offline, unknown id, network
            raise ModelError(f"cannot fetch `{path}` to hash its weights: {exc}") from exc
    digest = hashlib.sha256()
    for file in _weight_files(folder):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EmulatorInfo:
    """What ``offsite.json`` says about an emulator folder."""

    folder: Path
    layout: OffsiteLayout
    model_type: str
    backbone: str
    backbone_sha256: str
    distillation: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": EMULATOR_FORMAT,
            "version": EMULATOR_VERSION,
            "model_type": self.model_type,
            "blocks_path": arch_spec(self.model_type).blocks_path,
            "backbone": self.backbone,
            "backbone_sha256": self.backbone_sha256,
            **self.layout.to_json(),
            "distillation": self.distillation,
        }


def read_emulator(folder: str | Path, field: str = "--emulator") -> EmulatorInfo:
    """Read and check an emulator folder; problems name ``field`` and the file."""
    folder = Path(folder).expanduser()
    meta_file = folder / EMULATOR_FILE
    if not meta_file.is_file():
        raise ConfigError(
            field,
            f"{folder} is not an Offsite-Tuning emulator (no {EMULATOR_FILE}); build one "
            "with `fedpeft offsite build-emulator`",
        )
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != EMULATOR_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {EMULATOR_FORMAT!r}")
        if meta.get("version") != EMULATOR_VERSION:
            raise ValueError(f"version {meta.get('version')!r} (this fedpeft reads 1)")
        layout = OffsiteLayout(
            int(meta["num_layers"]), int(meta["adapter_blocks"]), tuple(meta["kept_middle"])
        )
        model_type = str(meta["model_type"])
        info = EmulatorInfo(
            folder.resolve(),
            layout,
            model_type,
            str(meta["backbone"]),
            str(meta["backbone_sha256"]),
            meta.get("distillation"),
        )
    except (ValueError, KeyError, TypeError, ConfigError, ModelError) as exc:
        raise ConfigError(field, f"{meta_file} is malformed: {exc}") from exc
    if model_type not in ARCHITECTURES:
        raise ConfigError(field, f"{meta_file}: unknown architecture `{model_type}`")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(field, f"{config_file} is missing")
    blocks = json.loads(config_file.read_text()).get("num_hidden_layers")
    if blocks is None:
        blocks = json.loads(config_file.read_text()).get("n_layer")
    if blocks != len(layout.emulator_blocks):
        raise ConfigError(
            field,
            f"{config_file} has {blocks} blocks but {EMULATOR_FILE} lists "
            f"{len(layout.emulator_blocks)}",
        )
    return info


def check_backbone(info: EmulatorInfo, model_path: str, field: str = "--emulator") -> None:
    """The emulator must have been built from this very backbone (same weight files)."""
    actual = backbone_sha256(model_path)
    if actual != info.backbone_sha256:
        raise ConfigError(
            field,
            f"{info.folder / EMULATOR_FILE} was built for backbone `{info.backbone}` "
            f"(sha256 {info.backbone_sha256[:12]}…), but the model is `{model_path}` "
            f"(sha256 {actual[:12]}…); pass the matching --model or rebuild the emulator",
        )


def emulator_weight_bytes(folder: str | Path) -> int:
    """Bytes of an emulator's weight files (what a client downloads besides the tokenizer)."""
    return sum(f.stat().st_size for f in _weight_files(Path(folder)))
