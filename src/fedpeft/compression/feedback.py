"""Error feedback: remember what compression dropped and send it next round.

ComPEFT is a biased compressor: most coordinates of every update are zeroed
and the rest are rounded to ±γ. Error feedback (Seide et al. 2014; Karimireddy
et al. 2019, "EF-SGD") keeps, per client, the residual ``e`` of the last
compression and adds it to the next update before compressing::

    corrected = update + e            # apply()
    sent      = C(corrected)          # codec.encode / codec.reconstruct
    e         = corrected - sent      # record()

so every coordinate is eventually transmitted. :meth:`ErrorFeedback.compress`
does the three steps with a codec.

Persistence: :meth:`ErrorFeedback.state_dict` is a flat ``{key: float32 array}``
with keys ``"{client_id}/{tensor_name}"`` (split at the first ``/``, so tensor
names may contain ``/`` but string client ids may not). Client ids made only of
decimal digits (optionally with a leading ``-``) load back as ``int``; other ids
load back as ``str``. :meth:`save` / :meth:`load` write and read that dict as a
``safetensors`` file, so a device client keeps its residual across restarts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from fedpeft.compression.base import Codec, Tensors, as_float32_tensors
from fedpeft.errors import ConfigError, UpdateRejected

__all__ = ["ClientId", "ErrorFeedback", "add_residual", "check_decay", "residual_of"]

ClientId = int | str
_INT_ID = re.compile(r"-?[0-9]+")
_FORMAT = "fedpeft.error_feedback"
_FORMAT_VERSION = "1"


def _check_client_id(client_id: ClientId) -> None:
    if isinstance(client_id, bool) or not isinstance(client_id, (int, str)):
        raise ConfigError("client_id", f"must be an int or str, got {client_id!r}")
    if isinstance(client_id, str) and ("/" in client_id or not client_id):
        raise ConfigError("client_id", f"must be non-empty and free of '/', got {client_id!r}")


def _same_layout(
    client_id: ClientId, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], what: str
) -> None:
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if missing or extra:
        raise UpdateRejected(
            client_id,
            f"{what} tensors differ: missing {missing[:5]}, unexpected {extra[:5]} "
            "(call reset() when the adapter layout changes)",
        )
    for name, value in want.items():
        if got[name].shape != value.shape:
            raise UpdateRejected(
                client_id,
                f"tensor `{name}` has shape {got[name].shape}, {what} has {value.shape}",
            )


def add_residual(
    update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray], decay: float = 1.0
) -> Tensors:
    """``update + decay · residual`` as float32 (the corrected update that is compressed).

    ``decay`` < 1 carries only that fraction: with partial participation a residual is
    rounds old when its client returns, computed against a global adapter that has moved
    on since.
    """
    return {k: (v + decay * residual[k]).astype(np.float32) for k, v in update.items()}


def residual_of(corrected: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> Tensors:
    """What compression dropped: ``corrected − sent`` (float32), carried to the next round."""
    return {k: (v - sent[k]).astype(np.float32) for k, v in corrected.items()}


def check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ConfigError("feedback_decay", f"must be in [0, 1], got {decay!r}")
    return float(decay)


class ErrorFeedback:
    """Per-client residual memory for biased compressors (``decay``: see :func:`add_residual`)."""

    def __init__(self, decay: float = 1.0) -> None:
        self.decay = check_decay(decay)
        self._residuals: dict[ClientId, Tensors] = {}

    # -- the three steps -----------------------------------------------------

    def apply(self, client_id: ClientId, update: Mapping[str, np.ndarray]) -> Tensors:
        """``update + decay · residual`` (float32); just ``update`` for a client with none."""
        _check_client_id(client_id)
        update32 = as_float32_tensors(update)
        residual = self._residuals.get(client_id)
        if residual is None:
            return {name: value.copy() for name, value in update32.items()}
        _same_layout(client_id, update32, residual, "stored residual")
        return add_residual(update32, residual, self.decay)

    def record(
        self,
        client_id: ClientId,
        corrected_update: Mapping[str, np.ndarray],
        reconstructed: Mapping[str, np.ndarray],
    ) -> None:
        """Store ``corrected_update - reconstructed`` as the client's new residual."""
        _check_client_id(client_id)
        corrected = as_float32_tensors(corrected_update)
        sent = as_float32_tensors(reconstructed)
        _same_layout(client_id, sent, corrected, "corrected update")
        self._residuals[client_id] = residual_of(corrected, sent)

    def compress(
        self, client_id: ClientId, update: Mapping[str, np.ndarray], codec: Codec
    ) -> bytes:
        """Apply the residual, encode with ``codec``, record the new residual; return the bytes.

        The residual is computed from ``codec.decode`` of the bytes actually
        produced, i.e. exactly what the coordinator will see.
        """
        corrected = self.apply(client_id, update)
        data = codec.encode(corrected)
        self.record(client_id, corrected, codec.decode(data))
        return data

    # -- inspection ----------------------------------------------------------

    def residual(self, client_id: ClientId) -> Tensors | None:
        """A copy of the client's residual, or ``None`` when it has none."""
        residual = self._residuals.get(client_id)
        if residual is None:
            return None
        return {name: value.copy() for name, value in residual.items()}

    def reset(self, client_id: ClientId | None = None) -> None:
        """Forget one client's residual, or every client's when ``client_id`` is None."""
        if client_id is None:
            self._residuals.clear()
        else:
            self._residuals.pop(client_id, None)

    @property
    def clients(self) -> list[ClientId]:
        """Clients with a stored residual."""
        return list(self._residuals)

    def __len__(self) -> int:
        return len(self._residuals)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._residuals

    # -- persistence -----------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat ``{"{client_id}/{tensor_name}": float32 array}`` (copies)."""
        return {
            f"{client_id}/{name}": np.array(value, dtype=np.float32, order="C")
            for client_id, residual in self._residuals.items()
            for name, value in residual.items()
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace every residual by those in ``state`` (the layout of :meth:`state_dict`)."""
        residuals: dict[ClientId, Tensors] = {}
        for key, value in state.items():
            client_part, sep, name = key.partition("/")
            if not sep or not client_part:
                raise ConfigError("state", f"key {key!r} is not '<client_id>/<tensor_name>'")
            client_id: ClientId = (
                int(client_part) if _INT_ID.fullmatch(client_part) else client_part
            )
            residuals.setdefault(client_id, {})[name] = np.array(value, dtype=np.float32)
        self._residuals = residuals

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state to a safetensors file."""
        from safetensors.numpy import save_file

        save_file(
            self.state_dict(),
            os.fspath(path),
            metadata={"format": _FORMAT, "version": _FORMAT_VERSION},
        )

    def load(self, path: str | os.PathLike[str]) -> ErrorFeedback:
        """Replace the state by the one saved at ``path``; returns ``self``."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(os.fspath(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != _FORMAT:
            raise ConfigError("path", f"{os.fspath(path)!r} is not an error-feedback state file")
        self.load_state_dict(load_file(os.fspath(path)))
        return self
