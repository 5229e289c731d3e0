"""A run folder: resolved config, metrics.jsonl, adapter state, checkpoints, curves.

Layout::

    run/
      config.toml              the resolved JobConfig (what produced everything below)
      metrics.jsonl            one JSON object per line (per round, or per logged step)
      meta.json                task, label names, backbone path
      adapter_state.safetensors  the final adapter as named tensors
      adapter/                 the final adapter in PEFT format (PeftModel.from_pretrained)
      checkpoint/              the last completed round (a federated job resumes from it):
                               global / strategy / ema / clients .safetensors, engine.json
      summary.json             initial and final metrics, bytes, wall time (federated job)
      curves.png               accuracy and loss vs round (federated job)

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file under its real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.config import JobConfig, dump_toml, load_config
from fedpeft.errors import ConfigError

if TYPE_CHECKING:  # torch loads only where tensors are written or read
    import torch

STATE_FILE = "adapter_state.safetensors"
SUMMARY_FILE = "summary.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class RunDir:
    """Reads and writes one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def create(self, config: JobConfig, meta: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.toml", dump_toml(config).encode())
        atomic_write_bytes(self.path / "meta.json", json.dumps(dict(meta), indent=2).encode())

    def config(self) -> JobConfig:
        if not (self.path / "config.toml").is_file():
            raise ConfigError("run", f"{self.path} is not a fedpeft run folder (no config.toml)")
        return load_config(self.path / "config.toml")

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.path / "meta.json").read_text()))

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.metrics_path, body.encode())

    def summary(self) -> dict[str, Any]:
        """The job's summary so far (empty when there is none yet)."""
        path = self.path / SUMMARY_FILE
        return dict(json.loads(path.read_text())) if path.is_file() else {}

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_bytes(self.path / SUMMARY_FILE, json.dumps(dict(summary), indent=2).encode())

    def save_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        save_tensors(self.path / STATE_FILE, tensors)

    def load_state(self) -> dict[str, torch.Tensor]:
        path = self.path / STATE_FILE
        if not path.is_file():
            raise ConfigError("run", f"{self.path} holds no adapter state ({STATE_FILE})")
        return load_tensors(path)
