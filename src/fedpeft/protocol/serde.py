"""Bytes <-> :mod:`fedpeft.protocol.wire` dataclasses. The only importer of the stubs.

Every ``*_from_bytes`` raises :class:`MalformedMessage` (a ProtocolError) naming the
message and the field when the bytes are not a valid message: undecodable protobuf, a
config that is not a JSON object, a missing header. The transport edge turns it into
INVALID_ARGUMENT; nothing else here knows about gRPC.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

from google.protobuf.message import DecodeError

from fedpeft.errors import ProtocolError
from fedpeft.protocol import wire
from fedpeft.protocol.v1 import fleet_pb2 as pb


class MalformedMessage(ProtocolError):
    """Bytes that do not decode to a valid fedpeft.v1 message."""


def _parse(cls: Any, data: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedMessage(f"malformed {cls.DESCRIPTOR.name}: {exc}") from exc
    return msg


def _json_object(what: str, text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedMessage(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


# ---- Register ---------------------------------------------------------------------------
def register_request_to_bytes(req: wire.RegisterRequest) -> bytes:
    return pb.RegisterRequest(
        enrollment_token=req.enrollment_token,
        protocol_version=req.protocol_version,
        name=req.name,
        probe=req.probe,
    ).SerializeToString()


def register_request_from_bytes(data: bytes) -> wire.RegisterRequest:
    msg = _parse(pb.RegisterRequest, data)
    return wire.RegisterRequest(msg.enrollment_token, msg.protocol_version, msg.name, msg.probe)


def registration_to_bytes(reg: wire.Registration) -> bytes:
    return pb.RegisterResponse(
        client_id=reg.client_id,
        credential=reg.credential,
        run_id=reg.run_id,
        job_config=json.dumps(reg.job_config, sort_keys=True),
        protocol_version=reg.protocol_version,
        heartbeat_seconds=reg.heartbeat_seconds,
    ).SerializeToString()


def registration_from_bytes(data: bytes) -> wire.Registration:
    msg = _parse(pb.RegisterResponse, data)
    return wire.Registration(
        client_id=msg.client_id,
        credential=msg.credential,
        run_id=msg.run_id,
        job_config=_json_object("RegisterResponse.job_config", msg.job_config),
        protocol_version=msg.protocol_version,
        heartbeat_seconds=msg.heartbeat_seconds,
    )


# ---- Heartbeat --------------------------------------------------------------------------
def heartbeat_request_to_bytes(req: wire.HeartbeatRequest) -> bytes:
    return pb.HeartbeatRequest(task_id=req.task_id).SerializeToString()


def heartbeat_request_from_bytes(data: bytes) -> wire.HeartbeatRequest:
    return wire.HeartbeatRequest(_parse(pb.HeartbeatRequest, data).task_id)


def heartbeat_reply_to_bytes(rep: wire.HeartbeatReply) -> bytes:
    return pb.HeartbeatResponse(
        run_over=rep.run_over,
        round=rep.round,
        heartbeat_seconds=rep.heartbeat_seconds,
        task_stale=rep.task_stale,
    ).SerializeToString()


def heartbeat_reply_from_bytes(data: bytes) -> wire.HeartbeatReply:
    msg = _parse(pb.HeartbeatResponse, data)
    return wire.HeartbeatReply(msg.run_over, msg.round, msg.heartbeat_seconds, msg.task_stale)


# ---- PullTask ---------------------------------------------------------------------------
def pull_request_to_bytes(req: wire.PullRequest) -> bytes:
    return pb.PullTaskRequest(wait_seconds=req.wait_seconds).SerializeToString()


def pull_request_from_bytes(data: bytes) -> wire.PullRequest:
    msg = _parse(pb.PullTaskRequest, data)
    if not math.isfinite(msg.wait_seconds) or msg.wait_seconds < 0:
        raise MalformedMessage(f"PullTaskRequest.wait_seconds must be >= 0, got {msg.wait_seconds}")
    return wire.PullRequest(msg.wait_seconds)


def _task_to_proto(task: wire.WireTask) -> Any:
    msg = pb.Task(
        task_id=task.task_id,
        round=task.round,
        kind=task.kind,
        config=json.dumps(task.config, sort_keys=True),
        downlink_is_delta=task.downlink_is_delta,
        base_version=task.base_version,
        version=task.version,
        seed=task.seed,
        secagg=task.secagg,
        deadline_seconds=task.deadline_seconds,
    )
    if task.artifact is not None:
        msg.downlink_artifact.sha256 = task.artifact.sha256
        msg.downlink_artifact.size = task.artifact.size
    else:
        msg.downlink = task.downlink or b""
    return msg


def _task_from_proto(msg: Any) -> wire.WireTask:
    if not msg.task_id:
        raise MalformedMessage("Task.task_id is empty")
    source = msg.WhichOneof("downlink_source")
    artifact = None
    downlink: bytes | None = None
    if source == "downlink_artifact":
        ref = msg.downlink_artifact
        artifact = wire.ArtifactRef(ref.sha256, ref.size)
    else:
        downlink = bytes(msg.downlink)
    return wire.WireTask(
        task_id=msg.task_id,
        round=msg.round,
        kind=msg.kind,
        config=_json_object("Task.config", msg.config),
        downlink=downlink,
        artifact=artifact,
        downlink_is_delta=msg.downlink_is_delta,
        base_version=msg.base_version,
        version=msg.version,
        seed=msg.seed,
        secagg=bytes(msg.secagg),
        deadline_seconds=msg.deadline_seconds,
    )


def pull_reply_to_bytes(rep: wire.PullReply) -> bytes:
    msg = pb.PullTaskResponse(status=cast(Any, rep.status.value))
    if rep.task is not None:
        msg.task.CopyFrom(_task_to_proto(rep.task))
    return msg.SerializeToString()


def pull_reply_from_bytes(data: bytes) -> wire.PullReply:
    msg = _parse(pb.PullTaskResponse, data)
    try:
        status = wire.PullStatus(msg.status)
    except ValueError as exc:
        raise MalformedMessage(f"PullTaskResponse.status {msg.status} is unknown") from exc
    if status is wire.PullStatus.TASK:
        if not msg.HasField("task"):
            raise MalformedMessage("PullTaskResponse.task is missing with status TASK")
        return wire.PullReply(status, _task_from_proto(msg.task))
    return wire.PullReply(status)


# ---- PushResult -------------------------------------------------------------------------
def result_chunk_to_bytes(chunk: wire.ResultChunk) -> bytes:
    if chunk.header is None:
        return pb.ResultChunk(data=chunk.data).SerializeToString()
    h = chunk.header
    return pb.ResultChunk(
        header=pb.ResultHeader(
            task_id=h.task_id,
            round=h.round,
            kind=h.kind,
            num_examples=h.num_examples,
            metrics=h.metrics,
            payload_size=h.payload_size,
            payload_sha256=h.payload_sha256,
            error=h.error,
        )
    ).SerializeToString()


def result_chunk_from_bytes(data: bytes) -> wire.ResultChunk:
    msg = _parse(pb.ResultChunk, data)
    part = msg.WhichOneof("part")
    if part == "header":
        h = msg.header
        metrics = {str(k): float(v) for k, v in h.metrics.items()}
        return wire.ResultChunk(
            header=wire.ResultHeader(
                task_id=h.task_id,
                round=h.round,
                kind=h.kind,
                num_examples=h.num_examples,
                payload_size=h.payload_size,
                payload_sha256=h.payload_sha256,
                metrics=metrics,
                error=h.error,
            )
        )
    return wire.ResultChunk(data=bytes(msg.data))


def push_reply_to_bytes(accepted: bool) -> bytes:
    return pb.PushResultResponse(accepted=accepted).SerializeToString()


def push_reply_from_bytes(data: bytes) -> bool:
    return bool(_parse(pb.PushResultResponse, data).accepted)


# ---- FetchArtifact ----------------------------------------------------------------------
def fetch_request_to_bytes(req: wire.FetchRequest) -> bytes:
    return pb.FetchArtifactRequest(sha256=req.sha256, offset=req.offset).SerializeToString()


def fetch_request_from_bytes(data: bytes) -> wire.FetchRequest:
    msg = _parse(pb.FetchArtifactRequest, data)
    return wire.FetchRequest(msg.sha256, msg.offset)


def artifact_piece_to_bytes(piece: wire.ArtifactPiece) -> bytes:
    return pb.ArtifactChunk(
        offset=piece.offset, data=piece.data, total_size=piece.total_size
    ).SerializeToString()


def artifact_piece_from_bytes(data: bytes) -> wire.ArtifactPiece:
    msg = _parse(pb.ArtifactChunk, data)
    return wire.ArtifactPiece(msg.offset, bytes(msg.data), msg.total_size)
