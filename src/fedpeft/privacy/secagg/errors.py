"""The errors of the SecAgg+ protocol library.

:class:`SecAggError` is a :class:`fedpeft.errors.ProtocolError`: a message out of order,
for another round or from the wrong sender. :class:`SecAggRejected` names the one client
whose message was refused (the protocol state is unchanged and the round goes on without
that message); :class:`SecAggAborted` means the round cannot complete — too few clients
or shares are left — and is raised instead of ever producing a wrong sum.
"""

from __future__ import annotations

from fedpeft.errors import ProtocolError

__all__ = ["SecAggAborted", "SecAggError", "SecAggRejected"]


class SecAggError(ProtocolError):
    """Base class of every secure-aggregation error (a misuse of the protocol)."""


class SecAggRejected(SecAggError):
    """One client's message was refused; the protocol state is unchanged."""

    def __init__(self, client_id: int, reason: str) -> None:
        self.client_id = client_id
        self.reason = reason
        super().__init__(f"secure-aggregation message of client {client_id} rejected: {reason}")


class SecAggAborted(SecAggError):
    """The round cannot complete (fewer clients or shares than the threshold)."""
