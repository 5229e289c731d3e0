"""The thin gRPC edge of the coordinator (grpc.aio): bytes in, handlers, bytes out.

Each method authenticates from the metadata, converts with :mod:`fedpeft.protocol.serde`,
delegates to :mod:`fedpeft.coordinator.handlers`, and turns a
:class:`~fedpeft.coordinator.handlers.FleetError` (or a malformed message) into
``context.abort(StatusCode.X, reason)`` plus one log line — here and nowhere else.
Methods are registered as generic handlers over raw bytes so that no protobuf type
leaves :mod:`fedpeft.protocol.serde`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from fedpeft.coordinator import handlers
from fedpeft.coordinator.handlers import Fleet, FleetError
from fedpeft.errors import ProtocolError
from fedpeft.protocol import serde, wire
from fedpeft.protocol.version import (
    CLIENT_KEY,
    FETCH_ARTIFACT,
    HEARTBEAT,
    PULL_TASK,
    PUSH_RESULT,
    REGISTER,
    SERVICE,
    TOKEN_KEY,
)

log = logging.getLogger(__name__)


class FleetServicer:
    """fedpeft.v1.Fleet over a :class:`Fleet`. Create it inside the server's event loop."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        fleet.on_change = self.pulse_threadsafe

    # ---- waking long-polls --------------------------------------------------------------
    def pulse_threadsafe(self) -> None:
        """Wake every waiting PullTask (callable from any thread)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._pulse)

    def _pulse(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    # ---- the edge -----------------------------------------------------------------------
    async def _abort(self, context: Any, method: str, exc: ProtocolError) -> NoReturn:
        status = exc.status if isinstance(exc, FleetError) else "INVALID_ARGUMENT"
        peer = context.peer() if hasattr(context, "peer") else "?"
        log.warning("%s from %s refused: %s %s", method, peer, status, exc)
        self.fleet.metrics.rejected_calls.labels(status).inc()
        if method == PUSH_RESULT:
            self.fleet.metrics.results.labels("rejected").inc()
        await context.abort(grpc.StatusCode[status], str(exc))
        raise AssertionError("context.abort returned")  # pragma: no cover

    def _client(self, context: Any) -> int:
        meta = dict(context.invocation_metadata() or ())
        return handlers.authenticate(
            self.fleet, meta.get(CLIENT_KEY), meta.get(TOKEN_KEY), time.monotonic()
        )

    async def register(self, request: bytes, context: Any) -> bytes:
        try:
            req = serde.register_request_from_bytes(request)
            reply = handlers.register(self.fleet, req, time.monotonic())
        except ProtocolError as exc:
            await self._abort(context, REGISTER, exc)
        return serde.registration_to_bytes(reply)

    async def heartbeat(self, request: bytes, context: Any) -> bytes:
        try:
            client_id = self._client(context)
            req = serde.heartbeat_request_from_bytes(request)
            reply = handlers.heartbeat(self.fleet, client_id, req)
        except ProtocolError as exc:
            await self._abort(context, HEARTBEAT, exc)
        return serde.heartbeat_reply_to_bytes(reply)

    async def pull_task(self, request: bytes, context: Any) -> bytes:
        try:
            client_id = self._client(context)
            req = serde.pull_request_from_bytes(request)
        except ProtocolError as exc:
            await self._abort(context, PULL_TASK, exc)
        wait = min(req.wait_seconds, self.fleet.settings.max_pull_wait)
        end = self._loop.time() + wait
        while True:
            wake = self._wake  # taken before looking, so a post in between is not missed
            reply = handlers.pull_task(self.fleet, client_id)
            left = end - self._loop.time()
            if reply is not None or left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=left)
        self.fleet.seen(client_id, time.monotonic())
        return serde.pull_reply_to_bytes(reply or wire.PullReply(wire.PullStatus.NO_TASK))

    async def push_result(self, request_iterator: AsyncIterator[bytes], context: Any) -> bytes:
        upload: handlers.Upload | None = None
        try:
            client_id = self._client(context)
            async for raw in request_iterator:
                chunk = serde.result_chunk_from_bytes(raw)
                if upload is None:
                    upload = handlers.begin_push(self.fleet, client_id, chunk)
                elif chunk.header is not None:
                    raise handlers.InvalidArgument("PushResult carries a second ResultHeader")
                else:
                    upload.add(chunk.data)
            if upload is None:
                raise handlers.InvalidArgument("PushResult stream was empty")
            await asyncio.to_thread(upload.finish, time.monotonic())
            log.info(
                "result from client %d for round %d (%s): %d bytes",
                client_id,
                upload.header.round,
                upload.header.kind,
                upload.received,
            )
        except ProtocolError as exc:
            if upload is not None:
                upload.abandon()
            await self._abort(context, PUSH_RESULT, exc)
        except BaseException:  # cancelled or the stream broke: the client may push again
            if upload is not None:
                upload.abandon()
            raise
        return serde.push_reply_to_bytes(True)

    async def fetch_artifact(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            client_id = self._client(context)
            req = serde.fetch_request_from_bytes(request)
            chunks = handlers.fetch_artifact(self.fleet, client_id, req)
            artifact = self.fleet.store.get_artifact(req.sha256)
        except ProtocolError as exc:
            await self._abort(context, FETCH_ARTIFACT, exc)
        total = artifact.size if artifact is not None else 0
        offset = req.offset
        for data in chunks:
            yield serde.artifact_piece_to_bytes(wire.ArtifactPiece(offset, data, total))
            offset += len(data)


def add_fleet_servicer(servicer: FleetServicer, server: Any) -> None:
    """Register the five methods on a ``grpc.aio`` server as byte-level handlers."""
    rpc_handlers = {
        REGISTER: grpc.unary_unary_rpc_method_handler(servicer.register),
        HEARTBEAT: grpc.unary_unary_rpc_method_handler(servicer.heartbeat),
        PULL_TASK: grpc.unary_unary_rpc_method_handler(servicer.pull_task),
        PUSH_RESULT: grpc.stream_unary_rpc_method_handler(servicer.push_result),
        FETCH_ARTIFACT: grpc.unary_stream_rpc_method_handler(servicer.fetch_artifact),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, rpc_handlers),))
