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

A run folder holds one run, named by the ``run_id`` in ``meta.json``. A fresh run refuses
a folder that holds another run (:meth:`RunDir.claim`) unless forced, which removes the
old run's files first (:meth:`RunDir.clear`: only the names above, nothing else in the
folder); a run continues in its folder only when the ids agree (:meth:`RunDir.check_own`).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
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
META_FILE = "meta.json"
#: What a run writes in its folder (the DP ledger ``privacy.db`` included); the folder
#: holds a run when any of these is there, and ``--force`` removes exactly these.
RUN_FILES = (
    "config.toml",
    META_FILE,
    "metrics.jsonl",
    STATE_FILE,
    SUMMARY_FILE,
    "curves.png",
    "privacy.db",
    "privacy.db-wal",
    "privacy.db-shm",
    "privacy.db-journal",
)
#: a simulation's virtual clients keep their own state here (fedpeft.simulation.client_store)
CLIENTS_DIR = "clients"
RUN_FOLDERS = ("adapter", "checkpoint", ".checkpoint.old", ".checkpoint.tmp", CLIENTS_DIR)


def new_run_id() -> str:
    """A fresh run's id (16 hex digits), kept in ``meta.json``."""
    return secrets.token_hex(8)


class RunFolderInUse(ConfigError):
    """``--output`` holds another run: nothing was written; ``--force`` replaces it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            "--output",
            f"{path} holds another run ({why}); choose another folder, or pass --force "
            "to replace it",
        )


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


#: the key a strict-JSON record lists its non-finite values under
NONFINITE_KEY = "nonfinite"


def strict_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` made strict JSON: every NaN or ±Inf float (at any depth) becomes null,
    and ``nonfinite`` lists where they were (``eval_loss``, ``rejected.3``), so a reader
    can tell a missing value from a non-finite one. Numpy scalars become Python numbers."""
    where: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        if hasattr(value, "item") and callable(value.item):  # a numpy scalar
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            where.append(path)
            return None
        return value

    out = {k: v for k, v in clean(record, "").items() if k != NONFINITE_KEY}
    earlier = record.get(NONFINITE_KEY)
    if isinstance(earlier, list):  # a record cleaned before keeps what it listed
        where = [*(str(w) for w in earlier), *where]
    if where:
        out[NONFINITE_KEY] = sorted(set(where))
    return out


def dumps_strict(record: Mapping[str, Any], **kwargs: Any) -> str:
    """``record`` as strict JSON (:func:`strict_json`); never a bare NaN or Infinity."""
    return json.dumps(strict_json(record), allow_nan=False, **kwargs)


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

    # ---- which run the folder holds ------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether any file or folder a run writes is here."""
        return any((self.path / n).exists() for n in (*RUN_FILES, *RUN_FOLDERS))

    def run_id(self) -> str | None:
        """The id of the run held here (None: no ``meta.json``, an unreadable one, or a
        run written before runs had ids)."""
        try:
            meta = json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return None
        run_id = meta.get("run_id") if isinstance(meta, dict) else None
        return str(run_id) if run_id else None

    def describe(self) -> str:
        """What the held run is, in a few words, for an error message."""
        try:
            meta = json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError):
            return "files of a run, no readable meta.json"
        if not isinstance(meta, dict):
            return "files of a run, no readable meta.json"
        parts = [f"run {meta['run_id']}" if meta.get("run_id") else "a run without an id"]
        if meta.get("task"):
            parts.append(f"task {meta['task']}")
        if meta.get("deployment"):
            parts.append(f"deployment {meta['deployment']}")
        return ", ".join(parts)

    def check_claim(self, run_id: str, *, force: bool = False) -> None:
        """Refuse (writing nothing) a fresh run ``run_id`` here when the folder holds
        another run and ``force`` is off. The same id is the same run restarting."""
        if force or not self.holds_run() or self.run_id() == run_id:
            return
        raise RunFolderInUse(self.path, self.describe())

    def claim(self, run_id: str, *, force: bool = False) -> None:
        """:meth:`check_claim`, then with ``force`` remove the other run's files."""
        self.check_claim(run_id, force=force)
        if self.holds_run() and self.run_id() != run_id:
            self.clear()

    def check_own(self, run_id: str | None) -> None:
        """Refuse to continue run ``run_id`` here unless the folder holds that run."""
        if not self.holds_run():
            raise ConfigError("run", f"{self.path} holds no run to continue")
        held = self.run_id()
        if run_id is not None and held is not None and held != run_id:
            raise RunFolderInUse(self.path, f"{self.describe()}, not run {run_id}")

    def clear(self) -> None:
        """Remove the files a run writes (:data:`RUN_FILES`, :data:`RUN_FOLDERS`) and
        nothing else."""
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)

    def create(self, config: JobConfig, meta: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "config.toml", dump_toml(config).encode())
        atomic_write_bytes(self.path / META_FILE, json.dumps(dict(meta), indent=2).encode())

    def config(self) -> JobConfig:
        if not (self.path / "config.toml").is_file():
            raise ConfigError("run", f"{self.path} is not a fedpeft run folder (no config.toml)")
        return load_config(self.path / "config.toml")

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.path / META_FILE).read_text()))

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """One metrics line, strict JSON (non-finite values as null, listed in
        ``nonfinite``)."""
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(dumps_strict(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        body = "".join(dumps_strict(r, sort_keys=True) + "\n" for r in records)
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
