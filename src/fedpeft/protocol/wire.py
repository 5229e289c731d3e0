"""The messages of fedpeft.v1 as plain dataclasses (no protobuf types here).

:mod:`fedpeft.protocol.serde` converts them to and from bytes; the coordinator's handlers
and the client daemon only ever see these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RegisterRequest:
    enrollment_token: str
    protocol_version: int
    name: str = ""
    probe: bool = False  # only the job and whether there is room: nothing registered


@dataclass(frozen=True)
class Registration:
    client_id: int
    credential: str
    run_id: str
    job_config: dict[str, Any]
    protocol_version: int
    heartbeat_seconds: float


@dataclass(frozen=True)
class HeartbeatRequest:
    task_id: str = ""


@dataclass(frozen=True)
class HeartbeatReply:
    run_over: bool
    round: int
    heartbeat_seconds: float
    task_stale: bool = False  # the task named in the request is not outstanding


@dataclass(frozen=True)
class PullRequest:
    wait_seconds: float


@dataclass(frozen=True)
class ArtifactRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class WireTask:
    """A task as it crosses the wire: the downlink inline or as an artifact reference."""

    task_id: str
    round: int
    kind: str
    config: dict[str, Any]
    downlink: bytes | None
    artifact: ArtifactRef | None
    downlink_is_delta: bool
    base_version: int
    version: int
    seed: int
    secagg: bytes = b""
    deadline_seconds: float = 0.0


class PullStatus(enum.Enum):
    NO_TASK = 1
    TASK = 2
    RUN_OVER = 3


@dataclass(frozen=True)
class PullReply:
    status: PullStatus
    task: WireTask | None = None


@dataclass(frozen=True)
class ResultHeader:
    task_id: str
    round: int
    kind: str
    num_examples: int
    payload_size: int
    payload_sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class ResultChunk:
    """One message of the PushResult stream: the header (first) or payload bytes."""

    header: ResultHeader | None = None
    data: bytes = b""


@dataclass(frozen=True)
class FetchRequest:
    sha256: str
    offset: int = 0


@dataclass(frozen=True)
class ArtifactPiece:
    offset: int
    data: bytes
    total_size: int
