"""One exception tree for fedpeft.

Library code raises these; the ``fedpeft`` console script turns them into one line on
stderr and exit code 2 (a traceback only with ``--debug``). The coordinator's gRPC
servicer turns a :class:`ProtocolError` into a gRPC status code, and nothing else
does.
"""

from __future__ import annotations


class FedPeftError(Exception):
    """Base class of every error fedpeft raises on purpose."""


class ConfigError(FedPeftError, ValueError):
    """A configuration value is invalid. The message names the field in backticks."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"`{field}`: {message}")


class DataError(FedPeftError, ValueError):
    """A dataset file is missing, malformed, empty or inconsistent."""


class ModelError(FedPeftError, ValueError):
    """A model name or path cannot be resolved or loaded."""


class CodecError(FedPeftError, ValueError):
    """Bytes on the wire cannot be decoded: truncated, corrupted, foreign or wrong version."""


class UpdateRejected(FedPeftError):
    """A client's update is unusable (NaN/Inf, wrong names or shapes) and is not aggregated."""

    def __init__(self, client_id: int | str, reason: str) -> None:
        self.client_id = client_id
        self.reason = reason
        super().__init__(f"update from client {client_id} rejected: {reason}")


class ProtocolError(FedPeftError):
    """A message arrived out of order, for a stale round, or from the wrong sender."""


class OptionalDependencyMissing(FedPeftError, ImportError):
    """An optional extra (ray, flwr, ...) is needed but not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"`{package}` is not installed; install it with: pip install 'fedpeft[{extra}]'"
        )
