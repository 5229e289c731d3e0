"""One exception tree for fedpeft.

Library code raises these; the CLI turns them into one clear line and exit
code 2 (no traceback unless ``--debug``). Transport edges (gRPC, later) map them
to status codes and nowhere else.
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


class BudgetExhausted(FedPeftError):
    """The privacy budget would be exceeded by another round."""


class OptionalDependencyMissing(FedPeftError, ImportError):
    """An optional extra (ray, flwr, ...) is needed but not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"`{package}` is not installed; install it with: pip install 'fedpeft[{extra}]'"
        )
