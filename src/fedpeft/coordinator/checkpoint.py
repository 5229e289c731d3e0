"""The engine's state and its checkpoint: written to a temporary folder and swapped in
whole, so a crash leaves either the previous checkpoint or the new one (a crash mid-swap
leaves ``.checkpoint.old``, which :func:`load_checkpoint` takes)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.compression.chain import decode_chain, encode_chain, params_digest
from fedpeft.errors import FedPeftError
from fedpeft.protocol.messages import ClientState, Tensors
from fedpeft.rundir import atomic_write_bytes

CHECKPOINT_DIR = "checkpoint"


@dataclass
class EngineState:
    round: int = 0
    params: Tensors = field(default_factory=dict)
    clients: dict[int, ClientState] = field(default_factory=dict)
    bytes_up_total: int = 0
    bytes_down_total: int = 0
    ema: Tensors | None = None  # server EMA of the global adapter (when enabled)
    # classifier calibration (CCVR) of the output layer, valid for round ``calibrated_round``
    calibrated: Tensors | None = None
    calibrated_round: int = -1
    # chain downlink: history[v] brings the global adapter from version v to v + 1 (b""
    # for a failed round: no change); the server error-feedback residual; the initial
    # adapter's digest (version 0, which clients build themselves)
    history: list[bytes] = field(default_factory=list)
    server_residual: Tensors | None = None
    init_digest: bytes = b""


def checkpoint_exists(path: str | Path) -> bool:
    return (Path(path) / CHECKPOINT_DIR / "engine.json").is_file()


def save_checkpoint(
    run_path: Path, state: EngineState, strategy_state: Tensors, chain: bool
) -> None:
    """Write the engine's state (and the strategy's) as ``run_path/checkpoint``."""
    final = run_path / CHECKPOINT_DIR
    tmp = run_path / f".{CHECKPOINT_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _save(tmp / "global.safetensors", state.params)
    _save(tmp / "strategy.safetensors", strategy_state)
    if state.ema is not None:
        _save(tmp / "ema.safetensors", state.ema)
    if state.calibrated is not None:
        _save(tmp / "calibrated.safetensors", state.calibrated)
    # what each client was sent, each distinct adapter once (under the chain downlink all
    # clients at one version hold the same one): the coordinator's record, never a
    # client's own state, which stays on the client
    sent: dict[str, np.ndarray] = {}
    client_held: dict[str, str] = {}
    digests: dict[int, str] = {}  # id of a held dict -> its digest (shared under the chain)
    for cid, cs in state.clients.items():
        if cs.held is None:
            continue
        digest = digests.get(id(cs.held)) or params_digest(cs.held).hex()
        digests[id(cs.held)] = digest
        client_held[str(cid)] = digest
        for name, value in cs.held.items():
            sent.setdefault(f"{digest}/{name}", value)
    _save(tmp / "sent.safetensors", sent)
    meta: dict[str, Any] = {
        "round": state.round,
        "bytes_up_total": state.bytes_up_total,
        "bytes_down_total": state.bytes_down_total,
        "client_versions": {str(cid): cs.version for cid, cs in state.clients.items()},
        "client_held": client_held,
        "calibrated_round": state.calibrated_round,
    }
    if chain:
        meta["init_digest"] = state.init_digest.hex()
        atomic_write_bytes(tmp / "chain.bin", encode_chain(0, bytes(16), state.history))
        if state.server_residual is not None:
            _save(tmp / "server_residual.safetensors", state.server_residual)
    atomic_write_bytes(tmp / "engine.json", json.dumps(meta).encode())
    _swap_in(tmp, final, run_path / f".{CHECKPOINT_DIR}.old")


def load_checkpoint(run_path: Path, chain: bool) -> tuple[EngineState, Tensors]:
    """The engine's state and the strategy's state from ``run_path/checkpoint``."""
    from safetensors.numpy import load_file

    folder = _checkpoint_folder(run_path)
    meta = json.loads((folder / "engine.json").read_text())
    adapters: dict[str, Tensors] = {}
    held: dict[str, str] = meta.get("client_held", {})
    if (folder / "sent.safetensors").is_file():
        for key, value in load_file(str(folder / "sent.safetensors")).items():
            digest, name = key.split("/", 1)
            adapters.setdefault(digest, {})[name] = value
    elif (folder / "clients.safetensors").is_file():  # written before sent.safetensors
        for key, value in load_file(str(folder / "clients.safetensors")).items():
            cid, kind, name = key.split("/", 2)
            if kind == "held":  # a client's residual is its own: not carried over
                adapters.setdefault(cid, {})[name] = value
                held[cid] = cid
    clients: dict[int, ClientState] = {
        int(cid): ClientState(version=v, held=adapters[held[cid]] if cid in held else None)
        for cid, v in meta["client_versions"].items()
    }
    state = EngineState(
        round=int(meta["round"]),
        params=dict(load_file(str(folder / "global.safetensors"))),
        ema=_load_optional(folder / "ema.safetensors"),
        clients=clients,
        bytes_up_total=int(meta["bytes_up_total"]),
        bytes_down_total=int(meta["bytes_down_total"]),
        calibrated=_load_optional(folder / "calibrated.safetensors"),
        calibrated_round=int(meta.get("calibrated_round", -1)),
    )
    if chain:
        chain_file = folder / "chain.bin"
        if not chain_file.is_file() or "init_digest" not in meta:
            raise FedPeftError(
                f"{folder} was not written with codec.downlink = chain; resume it with the "
                "downlink it was started with"
            )
        state.history = decode_chain(chain_file.read_bytes()).deltas
        state.init_digest = bytes.fromhex(meta["init_digest"])
        state.server_residual = _load_optional(folder / "server_residual.safetensors")
    return state, dict(load_file(str(folder / "strategy.safetensors")))


def _checkpoint_folder(run_path: Path) -> Path:
    folder = run_path / CHECKPOINT_DIR
    if (folder / "engine.json").is_file():
        return folder
    old = run_path / f".{CHECKPOINT_DIR}.old"  # crashed mid-swap
    if (old / "engine.json").is_file():
        return old
    raise FedPeftError(f"{run_path} has no checkpoint to resume from")


def _swap_in(tmp: Path, final: Path, old: Path) -> None:
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _save(path: Path, tensors: Tensors) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def _load_optional(path: Path) -> Tensors | None:
    from safetensors.numpy import load_file

    return dict(load_file(str(path))) if path.is_file() else None
