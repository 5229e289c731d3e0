from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("enrollment_token", "protocol_version", "name", "probe")
    ENROLLMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    enrollment_token: str
    protocol_version: int
    name: str
    probe: bool
    def __init__(self, enrollment_token: _Optional[str] = ..., protocol_version: _Optional[int] = ..., name: _Optional[str] = ..., probe: _Optional[bool] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("client_id", "credential", "run_id", "job_config", "protocol_version", "heartbeat_seconds")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_CONFIG_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    credential: str
    run_id: str
    job_config: str
    protocol_version: int
    heartbeat_seconds: float
    def __init__(self, client_id: _Optional[int] = ..., credential: _Optional[str] = ..., run_id: _Optional[str] = ..., job_config: _Optional[str] = ..., protocol_version: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("run_over", "round", "heartbeat_seconds", "task_stale")
    RUN_OVER_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TASK_STALE_FIELD_NUMBER: _ClassVar[int]
    run_over: bool
    round: int
    heartbeat_seconds: float
    task_stale: bool
    def __init__(self, run_over: _Optional[bool] = ..., round: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ..., task_stale: _Optional[bool] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("wait_seconds",)
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    def __init__(self, wait_seconds: _Optional[float] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "round", "kind", "config", "downlink", "downlink_artifact", "downlink_is_delta", "base_version", "version", "seed", "secagg", "deadline_seconds")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_IS_DELTA_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    kind: str
    config: str
    downlink: bytes
    downlink_artifact: ArtifactRef
    downlink_is_delta: bool
    base_version: int
    version: int
    seed: int
    secagg: bytes
    deadline_seconds: float
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[str] = ..., config: _Optional[str] = ..., downlink: _Optional[bytes] = ..., downlink_artifact: _Optional[_Union[ArtifactRef, _Mapping]] = ..., downlink_is_delta: _Optional[bool] = ..., base_version: _Optional[int] = ..., version: _Optional[int] = ..., seed: _Optional[int] = ..., secagg: _Optional[bytes] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("status", "task")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[PullTaskResponse.Status]
        NO_TASK: _ClassVar[PullTaskResponse.Status]
        TASK: _ClassVar[PullTaskResponse.Status]
        RUN_OVER: _ClassVar[PullTaskResponse.Status]
    STATUS_UNSPECIFIED: PullTaskResponse.Status
    NO_TASK: PullTaskResponse.Status
    TASK: PullTaskResponse.Status
    RUN_OVER: PullTaskResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    status: PullTaskResponse.Status
    task: Task
    def __init__(self, status: _Optional[_Union[PullTaskResponse.Status, str]] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class ResultHeader(_message.Message):
    __slots__ = ("task_id", "round", "kind", "num_examples", "metrics", "payload_size", "payload_sha256", "error")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    round: int
    kind: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    payload_size: int
    payload_sha256: str
    error: str
    def __init__(self, task_id: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., payload_size: _Optional[int] = ..., payload_sha256: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ResultHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ResultHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushResultResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("sha256", "offset")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ...) -> None: ...
