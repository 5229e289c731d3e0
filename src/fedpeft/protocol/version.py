"""Protocol version, service and method paths, and the metadata keys of fedpeft.v1."""

from __future__ import annotations

#: Major version of the wire protocol; a client with another one is refused at Register.
PROTOCOL_VERSION = 1
PACKAGE = "fedpeft.v1"
SERVICE = f"{PACKAGE}.Fleet"

REGISTER = "Register"
HEARTBEAT = "Heartbeat"
PULL_TASK = "PullTask"
PUSH_RESULT = "PushResult"
FETCH_ARTIFACT = "FetchArtifact"
METHODS = (REGISTER, HEARTBEAT, PULL_TASK, PUSH_RESULT, FETCH_ARTIFACT)

#: gRPC metadata keys that authenticate every call but Register.
CLIENT_KEY = "x-fedpeft-client"
TOKEN_KEY = "x-fedpeft-token"

#: Payloads (results, artifacts) travel in chunks of this size.
CHUNK_BYTES = 1 << 20


def method_path(method: str) -> str:
    return f"/{SERVICE}/{method}"


#: Prefix of a result's error when the daemon lacks the adapter version a delta applies
#: to; the coordinator then resends full weights.
STATE_MISMATCH = "state-mismatch"
