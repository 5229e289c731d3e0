"""Load test of the coordinator: N concurrent asyncio clients (one process) against the real
gRPC servicer, fleet, GrpcBackend and RoundEngine (FedAvg) in a second process.

Each client registers, heart-beats, long-polls for tasks, decodes the dense downlink
(100 KB of fp32 weights), and pushes a dense-encoded 100 KB update that the engine
decodes, validates and averages. Reported: rounds per minute, per-call latency
percentiles, starved clients (sampled but never served, or never given a task),
the coordinator's peak RSS.

    python bench/grpc_load.py --clients 500 --rounds 3 --output bench/results/grpc_load.json

``--chaos`` is the soak of issue 27: a fraction of the clients is hostile (hostile metrics,
huge example counts, NaN/Inf and mis-shaped tensors, scaled updates, malformed and
oversized streams, replays, guessed credentials, registrations that never become ready,
tasks taken and never answered), honest clients are killed at random (half come back
with their identity, as a daemon restarted with its ``--state``), and the coordinator is
killed with SIGKILL once mid-run and restarted on the same state database and run
folder. Afterwards every committed round's global adapter is recomputed from the results
the state database accepted (decoded, validated, norm-bounded and averaged here in
numpy) and compared; every acknowledged push must be in the store, the metrics lines
complete and the coordinator's own keys intact; no honest client alive to the end may be
starved. Reported: rounds/min, p99 latencies, the coordinator's peak RSS (both
processes), what each probe got.

    python bench/grpc_load.py --chaos --clients 200 --rounds 20 --hostile-fraction 0.1 \
        --output bench/results/chaos_soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PAYLOAD_FLOATS = 25_600  # 100 KB of fp32


def coordinator_main(args: argparse.Namespace) -> None:
    """The coordinator process: the real server, fleet, backend and engine; no model.

    Resumes from the run folder's checkpoint when there is one (after a SIGKILL); records
    rounds in the state database as ``coordinator serve`` does, and each committed
    round's global adapter in ``globals/`` for the chaos check."""
    from fedpeft.aggregation import make_strategy
    from fedpeft.compression import make_codec
    from fedpeft.config import FederationConfig
    from fedpeft.coordinator.engine import EngineHooks, RoundEngine, checkpoint_exists
    from fedpeft.coordinator.grpc_backend import GrpcBackend, LiveClientSampler
    from fedpeft.coordinator.handlers import Fleet, FleetSettings
    from fedpeft.coordinator.server import CoordinatorServer
    from fedpeft.coordinator.store import Store
    from fedpeft.rundir import RunDir

    floats = args.payload_floats

    class WeightsOnly:
        """The coordinator's side of the app: the initial adapter; no evaluation data."""

        def initial_state(self) -> dict[str, np.ndarray]:
            return {"w": np.zeros(floats, np.float32)}

        def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
            return {"w_norm": float(np.linalg.norm(params["w"]))}

        def train(self, task: Any) -> Any:
            raise RuntimeError("the coordinator does not train")

    out = Path(args.workdir)
    store = Store(out / "state.db")
    per_round = args.clients_per_round or args.clients
    settings = FleetSettings(
        open_enrollment=True,  # loopback load test: no enrolment secret
        heartbeat_seconds=args.heartbeat,
        liveness_seconds=args.heartbeat * 6,
        max_clients=args.clients,
        registrations_per_minute=60_000,
        registration_burst=args.clients,
        ready_within_seconds=args.ready_within,
        round_grace_min_seconds=args.grace,
        max_update_bytes=max(1 << 20, 8 * floats),
    )
    fleet = Fleet(store, settings, {"job": {}}, out / "artifacts")
    server = CoordinatorServer(fleet, "127.0.0.1", args.port, insecure_localhost=True)
    server.start()
    dense = make_codec("dense", dtype="fp32")
    globals_dir = out / "globals"
    globals_dir.mkdir(parents=True, exist_ok=True)

    def keep_global(round_num: int, params: dict[str, np.ndarray]) -> None:
        tmp = globals_dir / f"r{round_num}.tmp.npy"
        np.save(tmp, params["w"])
        tmp.replace(globals_dir / f"r{round_num}.npy")

    engine: RoundEngine

    def round_started(round_num: int, cohort: int) -> None:
        store.round_started(round_num, time.time())

    def round_ended(record: dict[str, Any]) -> None:
        store.round_committed(int(record["round"]), record, time.time())
        keep_global(int(record["round"]), engine.state.params)

    run = RunDir(out / "run")
    engine = RoundEngine(
        backend=GrpcBackend(fleet, WeightsOnly(), dense, round_timeout=args.round_timeout),  # type: ignore[arg-type]
        strategy=make_strategy(FederationConfig(clients=args.clients, clients_per_round=1)),
        sampler=LiveClientSampler(fleet, per_round, 0, wait_timeout=args.wait_clients),  # type: ignore[arg-type]
        shards=[None] * (args.clients + 1),  # type: ignore[list-item]
        uplink=dense,
        downlink=dense,
        run=run,
        rounds=args.rounds,
        seed=0,
        hooks=EngineHooks(on_round_start=round_started, on_round_end=round_ended),
    )
    if checkpoint_exists(run.path):  # restarted after a kill: continue the run
        engine.resume()
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        engine.start_fresh()
    # the checkpointed round's adapter (a kill between checkpoint and hook loses its file)
    keep_global(engine.state.round, engine.state.params)
    engine.run()
    fleet.finish()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(fleet.connected(time.monotonic())) - fleet.told_over:
        time.sleep(0.2)
    server.stop()
    (out / f"coordinator-{os.getpid()}.json").write_text(
        json.dumps({"peak_rss_mb": peak_rss_mb(os.getpid())})
    )


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) / 1024


async def one_client(port: int, i: int, stats: dict[str, Any]) -> None:
    import grpc

    from fedpeft.compression import FULL_WEIGHTS_CODEC, make_codec
    from fedpeft.protocol import serde, wire
    from fedpeft.protocol.version import (
        CLIENT_KEY,
        HEARTBEAT,
        PROTOCOL_VERSION,
        PULL_TASK,
        PUSH_RESULT,
        REGISTER,
        TOKEN_KEY,
        method_path,
    )

    lat = stats["latency"]
    options = [("grpc.max_receive_message_length", 8 << 20)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:

        def rpc(kind: str, path: str) -> Any:
            maker = channel.stream_unary if kind == "stream" else channel.unary_unary
            return maker(method_path(path), request_serializer=bytes, response_deserializer=bytes)

        register, heartbeat = rpc("unary", REGISTER), rpc("unary", HEARTBEAT)
        pull, push = rpc("unary", PULL_TASK), rpc("stream", PUSH_RESULT)
        req = serde.register_request_to_bytes(wire.RegisterRequest("", PROTOCOL_VERSION, f"c{i}"))
        while True:
            t0 = time.perf_counter()
            try:
                reg = serde.registration_from_bytes(await register(req, timeout=60))
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ):
                    raise
                await asyncio.sleep(0.5 + np.random.random())
        lat["register"].append(time.perf_counter() - t0)
        meta = ((CLIENT_KEY, str(reg.client_id)), (TOKEN_KEY, reg.credential))
        done = asyncio.Event()

        async def beat() -> None:
            hb = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest())
            while not done.is_set():
                t = time.perf_counter()
                try:
                    await heartbeat(hb, timeout=30, metadata=meta)
                    lat["heartbeat"].append(time.perf_counter() - t)
                except grpc.aio.AioRpcError as exc:
                    code = str(exc.code())
                    stats["heartbeat_errors"][code] = stats["heartbeat_errors"].get(code, 0) + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), reg.heartbeat_seconds)

        beater = asyncio.create_task(beat())
        codec = make_codec("dense", dtype="fp32")
        rng = np.random.default_rng(i)
        tasks_seen = 0
        preq = serde.pull_request_to_bytes(wire.PullRequest(10.0))
        while True:
            t0 = time.perf_counter()
            reply = serde.pull_reply_from_bytes(await pull(preq, timeout=40, metadata=meta))
            if reply.status is wire.PullStatus.RUN_OVER:
                break
            if reply.task is None:
                continue
            lat["pull_wait_for_task"].append(time.perf_counter() - t0)
            tasks_seen += 1
            task = reply.task
            weights = FULL_WEIGHTS_CODEC.decode(task.downlink or b"")
            delta = {"w": rng.normal(0, 1e-3, weights["w"].shape).astype(np.float32)}
            payload = codec.encode(delta)
            import hashlib

            head = wire.ResultHeader(
                task.task_id, task.round, task.kind, 10, len(payload),
                hashlib.sha256(payload).hexdigest(),
            )  # fmt: skip

            async def chunks(head: wire.ResultHeader = head, payload: bytes = payload) -> Any:
                yield serde.result_chunk_to_bytes(wire.ResultChunk(header=head))
                yield serde.result_chunk_to_bytes(wire.ResultChunk(data=payload))

            t1 = time.perf_counter()
            try:
                await push(chunks(), timeout=120, metadata=meta)
                lat["push_100kb"].append(time.perf_counter() - t1)
                stats["bytes_up"] += len(payload)
            except grpc.aio.AioRpcError as exc:
                stats["push_errors"].append(str(exc.code()))
        done.set()
        await beater
        stats["tasks_per_client"].append(tasks_seen)


async def run_clients(port: int, n: int) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "latency": {k: [] for k in ("register", "heartbeat", "pull_wait_for_task", "push_100kb")},
        "heartbeat_errors": {},
        "push_errors": [],
        "bytes_up": 0,
        "tasks_per_client": [],
    }
    await asyncio.gather(*(one_client(port, i, stats) for i in range(n)))
    return stats


# ---- the chaos soak ----------------------------------------------------------------------
#: what a hostile participant does with a task (one picked at random per task)
PROBES = (
    "hostile_metrics",  # a valid update whose metrics try to overwrite the round's record
    "huge_examples",  # num_examples far beyond the cap (refused at the edge)
    "nonfinite",  # NaN/Inf in the update (stored, rejected by the engine)
    "misshaped",  # a tensor of the wrong shape (stored, rejected by the engine)
    "scaled",  # a finite update 1e4 times an honest one (norm-bounded)
    "malformed_then_valid",  # garbage, truncated, bad-hash streams, then the real update
    "oversized",  # a payload announced beyond --max-update-mb, and one over 8 MiB
    "replay",  # the update, then the same push again
    "stall",  # takes the task and never answers (heart-beats all along)
)


def _hist(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": float(np.percentile(values, 50)) if values else None,
        "p99": float(np.percentile(values, 99)) if values else None,
        "max": float(max(values)) if values else None,
    }


def nonfinite_payload(codec: Any, delta: np.ndarray) -> bytes:
    """A well-formed dense frame (valid checksum) whose last two values are Inf and NaN:
    what a client that skips the encoder's own check would send."""
    import struct
    import zlib

    body = bytearray(codec.encode({"w": delta})[:-4])
    body[-8:] = np.array([np.inf, np.nan], "<f4").tobytes()
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


class Soak:
    """The clients' side of the chaos soak: one asyncio process, many clients."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.rng = np.random.default_rng(args.seed)
        self.over = asyncio.Event()  # the run is over (the coordinator exited)
        self.latency: dict[str, list[float]] = {
            k: [] for k in ("register", "heartbeat", "pull_wait_for_task", "push")
        }
        self.payloads: dict[str, bytes] = {}  # sha256 -> every payload a client pushed
        self.acked: list[dict[str, Any]] = []  # pushes the coordinator acknowledged
        self.outcomes: dict[str, dict[str, int]] = {}  # probe -> status code -> count
        self.honest_counted: dict[int, int] = {}  # honest client id -> acknowledged pushes
        self.honest_tasks: dict[int, int] = {}
        self.alive_at_end: set[int] = set()
        self.squatter_ids: list[int] = []
        self.errors: list[str] = []  # what no client should ever see
        self.coordinator_pids: list[int] = []
        self.killed_clients = 0
        self.restarted_clients = 0

    def outcome(self, probe: str, code: str) -> None:
        row = self.outcomes.setdefault(probe, {})
        row[code] = row.get(code, 0) + 1

    # ---- the transport ------------------------------------------------------------------
    async def call(self, rpc: Any, request: Any, *, timeout: float, meta: Any = None) -> Any:
        """One RPC, retried while the coordinator is down (UNAVAILABLE) until the run ends."""
        import grpc

        delay = 0.2
        while True:
            try:
                return await rpc(request, timeout=timeout, metadata=meta)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE,) or self.over.is_set():
                    raise
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    # ---- one client ---------------------------------------------------------------------
    async def client(self, i: int, role: str) -> None:
        """Register, then run sessions; an honest client may be killed and come back with
        its identity (a daemon restarted with its --state)."""
        import grpc

        from fedpeft.protocol import serde, wire
        from fedpeft.protocol.version import PROTOCOL_VERSION, REGISTER, method_path

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.args.port}") as channel:
            register = channel.unary_unary(
                method_path(REGISTER), request_serializer=bytes, response_deserializer=bytes
            )
            req = serde.register_request_to_bytes(
                wire.RegisterRequest("", PROTOCOL_VERSION, f"{role}{i}")
            )
            t0 = time.perf_counter()
            while True:
                try:
                    reg = serde.registration_from_bytes(await self.call(register, req, timeout=60))
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or self.over.is_set():
                        self.errors.append(f"{role}{i} register: {exc.code()} {exc.details()}")
                        return
                    await asyncio.sleep(0.5 + self.rng.random())
            self.latency["register"].append(time.perf_counter() - t0)
        ident = (reg.client_id, reg.credential, reg.heartbeat_seconds)
        if role == "squatter":
            self.squatter_ids.append(reg.client_id)
            await self.squat(ident)
            return
        if role == "honest":
            self.honest_counted.setdefault(reg.client_id, 0)
            self.honest_tasks.setdefault(reg.client_id, 0)
        kill_at = None
        if role == "honest" and self.rng.random() < self.args.client_kill_fraction:
            kill_at = 2.0 + self.rng.random() * self.args.rounds * 1.5
        session = asyncio.create_task(self.session(ident, role, i))
        if kill_at is not None:
            done, _ = await asyncio.wait({session}, timeout=kill_at)
            if not done:  # kill: the channel is torn down mid-call, nothing is said
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await session
                self.killed_clients += 1
                if self.rng.random() < 0.5:
                    return  # gone for good
                await asyncio.sleep(1.0 + 2.0 * self.rng.random())
                self.restarted_clients += 1
                session = asyncio.create_task(self.session(ident, role, i))
        await session
        if role == "honest":
            self.alive_at_end.add(reg.client_id)

    async def session(self, ident: tuple[int, str, float], role: str, i: int) -> None:
        import grpc

        from fedpeft.compression import FULL_WEIGHTS_CODEC, make_codec
        from fedpeft.protocol import serde, wire
        from fedpeft.protocol.version import (
            CLIENT_KEY,
            HEARTBEAT,
            PULL_TASK,
            PUSH_RESULT,
            TOKEN_KEY,
            method_path,
        )

        client_id, credential, beat_every = ident
        meta = ((CLIENT_KEY, str(client_id)), (TOKEN_KEY, credential))
        options = [("grpc.max_send_message_length", 16 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.args.port}", options=options) as ch:
            heartbeat = ch.unary_unary(
                method_path(HEARTBEAT), request_serializer=bytes, response_deserializer=bytes
            )
            pull = ch.unary_unary(
                method_path(PULL_TASK), request_serializer=bytes, response_deserializer=bytes
            )
            push = ch.stream_unary(
                method_path(PUSH_RESULT), request_serializer=bytes, response_deserializer=bytes
            )
            current = {"task": ""}
            stop = asyncio.Event()

            async def beat() -> None:
                while not stop.is_set():
                    hb = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest(current["task"]))
                    t = time.perf_counter()
                    try:
                        await self.call(heartbeat, hb, timeout=30, meta=meta)
                        self.latency["heartbeat"].append(time.perf_counter() - t)
                    except grpc.aio.AioRpcError as exc:
                        if not self.over.is_set():
                            self.errors.append(f"{role} {client_id} heartbeat: {exc.code()}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), beat_every)

            beater = asyncio.create_task(beat())
            codec = make_codec("dense", dtype="fp32")
            rng = np.random.default_rng([self.args.seed, client_id])
            preq = serde.pull_request_to_bytes(wire.PullRequest(10.0))
            try:
                while True:
                    t0 = time.perf_counter()
                    try:
                        raw = await self.call(pull, preq, timeout=40, meta=meta)
                    except grpc.aio.AioRpcError as exc:
                        if not self.over.is_set():
                            self.errors.append(f"{role} {client_id} pull: {exc.code()}")
                        return
                    reply = serde.pull_reply_from_bytes(raw)
                    if reply.status is wire.PullStatus.RUN_OVER:
                        return
                    if reply.task is None:
                        continue
                    self.latency["pull_wait_for_task"].append(time.perf_counter() - t0)
                    task = reply.task
                    current["task"] = task.task_id
                    weights = FULL_WEIGHTS_CODEC.decode(task.downlink or b"")["w"]
                    delta = rng.normal(0, 1e-2, weights.shape).astype(np.float32)
                    if role == "honest":
                        self.honest_tasks[client_id] += 1
                        await self.answer(push, meta, task, client_id, codec, delta, "honest")
                    else:
                        probe = PROBES[int(rng.integers(len(PROBES)))]
                        if probe == "stall":
                            self.outcome("stall", "taken")
                            await self.stall(heartbeat, meta, task.task_id)
                        else:
                            await self.hostile(push, meta, task, client_id, codec, delta, probe)
                    current["task"] = ""
            finally:
                stop.set()
                beater.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beater

    # ---- pushes -------------------------------------------------------------------------
    async def push_raw(self, push: Any, meta: Any, chunks: list[bytes]) -> str:
        """One PushResult stream of ``chunks`` (not retried): the status code's name."""
        import grpc

        async def gen() -> Any:
            for c in chunks:
                yield c

        try:
            await push(gen(), timeout=60, metadata=meta)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        except asyncio.CancelledError:
            # grpc.aio reports a call the server ended mid-stream as cancelled; a real
            # cancellation (this client killed) goes on
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return "CANCELLED"

    def chunks(self, task: Any, payload: bytes, **head: Any) -> list[bytes]:
        from fedpeft.protocol import serde, wire

        fields: dict[str, Any] = {
            "task_id": task.task_id,
            "round": task.round,
            "kind": task.kind,
            "num_examples": 10,
            "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "metrics": {"train_loss": 0.5},
        }
        fields.update(head)
        header = serde.result_chunk_to_bytes(wire.ResultChunk(header=wire.ResultHeader(**fields)))
        return [header, serde.result_chunk_to_bytes(wire.ResultChunk(data=payload))]

    async def answer(
        self, push: Any, meta: Any, task: Any, cid: int, codec: Any, delta: Any, probe: str,
        **head: Any,
    ) -> str:  # fmt: skip
        """Push an update (retried while the coordinator is down); record it if taken."""
        payload = codec.encode({"w": delta}) if isinstance(delta, np.ndarray) else delta
        sha = hashlib.sha256(payload).hexdigest()
        self.payloads[sha] = payload
        t = time.perf_counter()
        while True:
            code = await self.push_raw(push, meta, self.chunks(task, payload, **head))
            if code != "UNAVAILABLE" or self.over.is_set():
                break
            await asyncio.sleep(0.3 + self.rng.random())
        self.outcome(probe, code)
        if code == "OK":
            self.latency["push"].append(time.perf_counter() - t)
            self.acked.append(
                {"client": cid, "round": task.round, "sha": sha, "probe": probe, "t": time.time()}
            )
            if probe == "honest":
                self.honest_counted[cid] += 1
        elif probe == "honest" and code not in ("ALREADY_EXISTS", "FAILED_PRECONDITION"):
            self.errors.append(f"honest {cid} round {task.round} push: {code}")
        return code

    async def hostile(
        self, push: Any, meta: Any, task: Any, cid: int, codec: Any, delta: Any, probe: str
    ) -> None:
        from fedpeft.protocol import serde, wire

        if probe == "hostile_metrics":
            metrics = {"round": 77.0, "clients_ok": 99.0, "round_failed": 1.0, "bytes_up": 0.0,
                       "eval_accuracy": 1.0, "train_loss": float("nan")}  # fmt: skip
            await self.answer(push, meta, task, cid, codec, delta, probe, metrics=metrics)
        elif probe == "huge_examples":
            for n in (2**62, 2**64 - 1):
                await self.answer(push, meta, task, cid, codec, delta, probe, num_examples=n)
        elif probe == "nonfinite":
            await self.answer(push, meta, task, cid, codec, nonfinite_payload(codec, delta), probe)
        elif probe == "misshaped":
            await self.answer(push, meta, task, cid, codec, delta[:-3], probe)
        elif probe == "scaled":
            await self.answer(push, meta, task, cid, codec, delta * 1e4, probe)
        elif probe == "malformed_then_valid":
            payload = codec.encode({"w": delta})
            good = self.chunks(task, payload)
            header = good[0]
            data = serde.result_chunk_to_bytes(wire.ResultChunk(data=payload[:-5]))
            for name, stream in (
                ("garbage", [b"\xff\xfe not a protobuf message"]),
                ("truncated", [header, data]),
                ("bad_sha", self.chunks(task, payload, payload_sha256="0" * 64)),
                ("two_headers", [header, header, good[1]]),
                ("empty", []),
                ("longer_than_announced", [header, good[1], good[1]]),
            ):
                self.outcome(f"malformed:{name}", await self.push_raw(push, meta, stream))
            await self.answer(push, meta, task, cid, codec, delta, probe)
        elif probe == "oversized":
            big = self.chunks(task, b"", payload_size=1 << 40, payload_sha256="0" * 64)
            self.outcome("oversized:announced", await self.push_raw(push, meta, big))
            blob = b"\0" * (9 << 20)  # one message over the 8 MiB gRPC limit
            self.outcome("oversized:message", await self.push_raw(push, meta, [big[0], blob]))
        elif probe == "replay":
            code = await self.answer(push, meta, task, cid, codec, delta, probe)
            if code == "OK":
                payload = codec.encode({"w": delta})
                self.outcome(
                    "replay:again", await self.push_raw(push, meta, self.chunks(task, payload))
                )
        # a guessed credential for a neighbour's id, now and then
        if self.rng.random() < 0.3:
            from fedpeft.protocol.version import CLIENT_KEY, TOKEN_KEY

            guess = ((CLIENT_KEY, str(cid + 1)), (TOKEN_KEY, "guessed"))
            code = await self.push_raw(push, guess, self.chunks(task, b"x"))
            self.outcome("guessed_credential", code)

    async def stall(self, heartbeat: Any, meta: Any, task_id: str) -> None:
        """Heart-beat the task until the coordinator says it is stale (or the run ends)."""
        import grpc

        from fedpeft.protocol import serde, wire

        hb = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest(task_id))
        while not self.over.is_set():
            try:
                reply = serde.heartbeat_reply_from_bytes(
                    await self.call(heartbeat, hb, timeout=30, meta=meta)
                )
            except grpc.aio.AioRpcError:
                return
            if reply.task_stale or reply.run_over:
                self.outcome("stall", "told_stale")
                return
            await asyncio.sleep(0.5)

    async def squat(self, ident: tuple[int, str, float]) -> None:
        """Heart-beat without ever asking for work, until the registration expires."""
        import grpc

        from fedpeft.protocol import serde, wire
        from fedpeft.protocol.version import CLIENT_KEY, HEARTBEAT, TOKEN_KEY, method_path

        client_id, credential, beat_every = ident
        meta = ((CLIENT_KEY, str(client_id)), (TOKEN_KEY, credential))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.args.port}") as ch:
            heartbeat = ch.unary_unary(
                method_path(HEARTBEAT), request_serializer=bytes, response_deserializer=bytes
            )
            hb = serde.heartbeat_request_to_bytes(wire.HeartbeatRequest())
            started = time.monotonic()
            while not self.over.is_set():
                try:
                    await self.call(heartbeat, hb, timeout=30, meta=meta)
                except grpc.aio.AioRpcError as exc:
                    self.outcome("squatter", exc.code().name)
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        self.outcome("squatter", f"expired_after_{time.monotonic() - started:.0f}s")
                    return
                await asyncio.sleep(beat_every)

    # ---- the coordinator --------------------------------------------------------------
    def coordinator_cmd(self) -> list[str]:
        a = self.args
        return [
            sys.executable, __file__, "_coordinator", "--clients", str(a.clients),
            "--rounds", str(a.rounds), "--port", str(a.port), "--heartbeat", str(a.heartbeat),
            "--workdir", str(self.workdir), "--clients-per-round", str(a.clients_per_round),
            "--payload-floats", str(a.payload_floats), "--ready-within", str(a.ready_within),
            "--grace", str(a.grace), "--round-timeout", str(a.round_timeout),
            "--wait-clients", str(a.wait_clients),
        ]  # fmt: skip

    async def coordinator(self) -> dict[str, Any]:
        """Start the coordinator; SIGKILL it once mid-round (after round ``kill_after``'s
        line, once the next round's tasks are out), restart it, wait for the end."""
        log = open(self.workdir / "coordinator.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(self.coordinator_cmd(), stdout=log, stderr=log)
        self.coordinator_pids.append(proc.pid)
        info: dict[str, Any] = {"killed": False}
        metrics = self.workdir / "run" / "metrics.jsonl"
        kill_after = self.args.kill_after_round
        while kill_after and proc.poll() is None:
            lines = metrics.read_text().count("\n") if metrics.exists() else 0
            if lines >= kill_after:
                await asyncio.sleep(0.3 + 0.7 * self.rng.random())  # into the next round
                if proc.poll() is not None:
                    break
                info["rss_before_kill_mb"] = peak_rss_mb(proc.pid)
                proc.kill()  # SIGKILL: no cleanup, no final checkpoint
                proc.wait()
                info.update(killed=True, killed_after_lines=lines, killed_at=time.time())
                await asyncio.sleep(1.0)
                proc = subprocess.Popen(self.coordinator_cmd(), stdout=log, stderr=log)
                self.coordinator_pids.append(proc.pid)
                break
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + self.args.timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
            info["timed_out"] = True
        info["exit_code"] = proc.wait()
        self.over.set()
        log.close()
        return info

    async def run(self) -> dict[str, Any]:
        n = self.args.clients
        hostile = round(n * self.args.hostile_fraction)
        roles = ["honest"] * (n - hostile)
        # a quarter of the hostile clients squat (register, never ask for work)
        squat = max(1, hostile // 4) if hostile >= 2 else 0
        roles += ["squatter"] * squat + ["hostile"] * (hostile - squat)
        order = self.rng.permutation(n)
        coordinator = asyncio.create_task(self.coordinator())
        clients = [asyncio.create_task(self.client(int(i), roles[i])) for i in order]
        info = await coordinator
        done, pending = await asyncio.wait(clients, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            if task.cancelled():
                self.errors.append("a client task was cancelled")
            elif task.exception() is not None:
                self.errors.append(f"client crashed: {task.exception()!r}")
        info["roles"] = {r: roles.count(r) for r in set(roles)}
        info["clients_still_running"] = len(pending)
        return info


def check_soak(soak: Soak, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Recompute every committed round from the store's accepted results; look for lost,
    unexplained or starved work."""
    import sqlite3

    from fedpeft.compression import make_codec
    from fedpeft.errors import CodecError

    codec = make_codec("dense", dtype="fp32")
    db = sqlite3.connect(f"file:{workdir / 'state.db'}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT round, client_id, num_examples, payload_sha256 FROM results WHERE kind = 'train'"
    ).fetchall()
    clients_left = {int(r[0]) for r in db.execute("SELECT id FROM clients")}
    db.close()
    records = [json.loads(x) for x in (workdir / "run" / "metrics.jsonl").open()]
    by_round: dict[int, list[tuple[int, int, str]]] = {}
    for rnd, cid, n, sha in rows:
        by_round.setdefault(int(rnd), []).append((int(cid), int(n), str(sha)))
    problems: list[str] = []
    rounds_checked, max_diff = 0, 0.0
    if [r["round"] for r in records] != list(range(1, len(records) + 1)):
        problems.append(f"metrics lines are not rounds 1..n: {[r['round'] for r in records]}")
    if len(records) != args.rounds:
        problems.append(f"{len(records)} metrics lines for {args.rounds} rounds")
    previous = np.load(workdir / "globals" / "r0.npy")
    for record in records:
        rnd = int(record["round"])
        if record["clients_ok"] > record["clients_sampled"]:
            problems.append(f"round {rnd}: clients_ok {record['clients_ok']} > sampled")
        path = workdir / "globals" / f"r{rnd}.npy"
        if not path.exists():
            problems.append(f"round {rnd}: no global adapter recorded")
            continue
        committed = np.load(path)
        valid: list[tuple[int, int, np.ndarray]] = []
        for cid, n, sha in sorted(by_round.get(rnd, [])):
            payload = soak.payloads.get(sha)
            if payload is None:
                problems.append(f"round {rnd}: the store holds a result no client sent ({sha})")
                continue
            try:
                w = codec.decode(payload)
            except CodecError:
                continue  # NaN/Inf: rejected by the engine
            if set(w) != {"w"} or w["w"].shape != previous.shape or not 1 <= n <= 100_000:
                continue
            valid.append((cid, n, w["w"].astype(np.float64)))
        if "round_failed" in record:
            expected = previous
        else:
            norms = [float(np.linalg.norm(d)) for _, _, d in valid]
            bound = 3.0 * float(np.median(norms)) if norms else 0.0
            total = float(sum(n for _, n, _ in valid))
            mean = np.zeros(previous.shape, np.float64)
            for (_, n, d), norm in zip(valid, norms, strict=True):
                clipped = d * (bound / norm) if norm > bound else d
                mean += (n / total) * clipped.astype(np.float32).astype(np.float64)
            expected = previous + mean.astype(np.float32)
        if len(valid) != record["clients_ok"]:
            problems.append(
                f"round {rnd}: the store accepted {len(valid)} usable updates, the round "
                f"counted {record['clients_ok']}"
                + (
                    " (the round ran again after the coordinator's kill)"
                    if rnd == args.kill_after_round + 1
                    else ""
                )
            )
        diff = float(np.max(np.abs(committed.astype(np.float64) - expected)))
        max_diff = max(max_diff, diff)
        if diff > 1e-5:
            problems.append(
                f"round {rnd}: committed adapter differs from the recomputation by {diff:.3g}"
            )
        rounds_checked += 1
        previous = committed
    stored = {(int(r), int(c), str(s)) for r, c, _, s in rows}
    lost = [a for a in soak.acked if (a["round"], a["client"], a["sha"]) not in stored]
    # starved: alive to the end and given work, yet nothing of it counted; an honest client
    # never sampled is chance (each round samples clients_per_round of the ready ones)
    starved = sorted(
        cid
        for cid in soak.alive_at_end
        if soak.honest_tasks.get(cid, 0) and not soak.honest_counted.get(cid, 0)
    )
    never_sampled = sorted(cid for cid in soak.alive_at_end if not soak.honest_tasks.get(cid, 0))
    squatters_left = sorted(set(soak.squatter_ids) & clients_left)
    return {
        "rounds_checked": rounds_checked,
        "max_abs_difference": max_diff,
        "acknowledged_pushes": len(soak.acked),
        "acknowledged_not_in_store": len(lost),
        "acknowledged_not_in_store_detail": lost[:20],
        "honest_clients_alive_at_end": len(soak.alive_at_end),
        "honest_starved": starved,
        "honest_never_sampled": never_sampled,
        "honest_not_registered": [e for e in soak.errors if "register" in e],
        "honest_tasks_per_client": _hist([float(v) for v in soak.honest_tasks.values()]),
        "squatter_registrations_left_in_store": squatters_left,
        "problems": problems,
        "client_errors": soak.errors[:50],
        "client_error_count": len(soak.errors),
    }


def chaos_main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(args, workdir)
        start = time.perf_counter()
        info = asyncio.run(soak.run())
        wall = time.perf_counter() - start
        check = check_soak(soak, workdir, args)
        records = [json.loads(x) for x in (workdir / "run" / "metrics.jsonl").open()]
        rss = [json.loads(p.read_text())["peak_rss_mb"] for p in workdir.glob("coordinator-*.json")]
        if info.get("rss_before_kill_mb"):
            rss.append(info["rss_before_kill_mb"])
        log_tail = (workdir / "coordinator.log").read_text()[-3000:]
    round_seconds = [r["round_seconds"] for r in records]
    ok = (
        not check["problems"]
        and not check["honest_starved"]
        and not check["acknowledged_not_in_store"]
    )
    ok = ok and info["exit_code"] == 0 and not check["client_error_count"]
    return {
        "setting": {
            "clients": args.clients,
            "clients_per_round": args.clients_per_round,
            "rounds": args.rounds,
            "hostile_fraction": args.hostile_fraction,
            "client_kill_fraction": args.client_kill_fraction,
            "coordinator_killed_after_round": args.kill_after_round,
            "payload_bytes": args.payload_floats * 4,
            "heartbeat_seconds": args.heartbeat,
            "ready_within_seconds": args.ready_within,
            "round_grace_min_seconds": args.grace,
            "seed": args.seed,
            "transport": "gRPC on 127.0.0.1, plaintext; clients: grpc.aio in one process",
            "machine": f"{os.cpu_count()} cores, shared with other jobs",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "command": " ".join(["python", *sys.argv]),
        },
        "passed": ok,
        "coordinator": {k: v for k, v in info.items() if k != "roles"},
        "roles": info["roles"],
        "wall_seconds": wall,
        "rounds_per_minute": 60.0 * len(records) / sum(round_seconds) if records else 0.0,
        "rounds_per_minute_wall": 60.0 * len(records) / wall,
        "round_seconds": round_seconds,
        "clients_ok_per_round": [r["clients_ok"] for r in records],
        "clients_rejected_per_round": [r["clients_rejected"] for r in records],
        "clients_norm_clipped_per_round": [r.get("clients_norm_clipped") for r in records],
        "rounds_failed": [r["round"] for r in records if "round_failed" in r],
        "coordinator_peak_rss_mb": max(rss) if rss else None,
        "killed_clients": soak.killed_clients,
        "restarted_clients": soak.restarted_clients,
        "latency_seconds": {k: _hist(v) for k, v in soak.latency.items()},
        "probe_outcomes": soak.outcomes,
        "check": check,
        "coordinator_log_tail": log_tail if not ok else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=50381)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--output", default=None, help="default: bench/results/grpc_load.json "
                        "(--chaos: bench/results/chaos_soak.json)")  # fmt: skip
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--chaos", action="store_true", help="the soak: hostile clients, kills")
    parser.add_argument("--hostile-fraction", type=float, default=0.1)
    parser.add_argument("--client-kill-fraction", type=float, default=0.05)
    parser.add_argument("--kill-after-round", type=int, default=None,
                        help="SIGKILL the coordinator once this round's line is written "
                        "(default: half the rounds; 0: never)")  # fmt: skip
    parser.add_argument("--clients-per-round", type=int, default=None,
                        help="default: every client (--chaos: half of them)")  # fmt: skip
    parser.add_argument("--payload-floats", type=int, default=None,
                        help="fp32 values per update (default 25600; --chaos 4096)")  # fmt: skip
    parser.add_argument("--ready-within", type=float, default=None)
    parser.add_argument("--grace", type=float, default=None)
    parser.add_argument("--round-timeout", type=float, default=600.0)
    parser.add_argument("--wait-clients", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="whole soak, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "_coordinator"])
    args = parser.parse_args()
    if args.mode == "_coordinator":
        coordinator_main(args)
        return
    if args.chaos:
        if not 0 <= args.hostile_fraction < 0.5:
            parser.error("--hostile-fraction must be in [0, 0.5)")
        args.clients_per_round = args.clients_per_round or max(1, args.clients // 2)
        args.payload_floats = args.payload_floats or 4096
        args.ready_within = args.ready_within or 10.0
        args.grace = 2.0 if args.grace is None else args.grace
        args.wait_clients = min(args.wait_clients, 20.0)
        if args.kill_after_round is None:
            args.kill_after_round = max(1, args.rounds // 2) if args.rounds > 1 else 0
        result = chaos_main(args)
        output = Path(args.output or "bench/results/chaos_soak.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: result[k] for k in ("passed", "wall_seconds", "check")}, indent=2))
        sys.exit(0 if result["passed"] else 1)
    args.payload_floats = args.payload_floats or PAYLOAD_FLOATS
    args.clients_per_round = args.clients_per_round or args.clients
    args.ready_within = args.ready_within or 300.0
    args.grace = 15.0 if args.grace is None else args.grace
    args.output = args.output or "bench/results/grpc_load.json"
    plain_main(args)


def plain_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, __file__, "_coordinator", "--clients", str(args.clients),
            "--rounds", str(args.rounds), "--port", str(args.port),
            "--heartbeat", str(args.heartbeat), "--workdir", tmp,
            "--clients-per-round", str(args.clients_per_round),
            "--payload-floats", str(args.payload_floats), "--ready-within", str(args.ready_within),
            "--grace", str(args.grace), "--round-timeout", str(args.round_timeout),
            "--wait-clients", str(args.wait_clients),
        ]  # fmt: skip
        load_before = os.getloadavg()
        start = time.perf_counter()
        coordinator = subprocess.Popen(cmd)
        stats = asyncio.run(run_clients(args.port, args.clients))
        code = coordinator.wait(timeout=120)
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").open()]
        coord = json.loads(next(Path(tmp).glob("coordinator-*.json")).read_text())
    round_seconds = [r["round_seconds"] for r in records]
    tasks = stats["tasks_per_client"]
    result = {
        "setting": {
            "clients": args.clients,
            "clients_per_round": args.clients,
            "rounds": args.rounds,
            "payload_bytes": args.payload_floats * 4,
            "heartbeat_seconds": args.heartbeat,
            "transport": "gRPC on 127.0.0.1, plaintext; clients: grpc.aio in one process",
            "machine": f"{os.cpu_count()} cores, shared with other jobs",
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "coordinator_exit_code": code,
        "wall_seconds": wall,
        "round_seconds": round_seconds,
        "rounds_per_minute": 60.0 * len(records) / sum(round_seconds),
        "clients_ok_per_round": [r["clients_ok"] for r in records],
        "clients_rejected_per_round": [r["clients_rejected"] for r in records],
        "starved_clients": sum(1 for t in tasks if t < args.rounds),
        "clients_finished": len(tasks),
        "push_errors": len(stats["push_errors"]),
        "heartbeat_errors": stats["heartbeat_errors"],
        "coordinator_peak_rss_mb": coord["peak_rss_mb"],
        "latency_seconds": {
            k: {
                "n": len(v),
                "p50": float(np.percentile(v, 50)) if v else None,
                "p99": float(np.percentile(v, 99)) if v else None,
                "max": max(v) if v else None,
            }
            for k, v in stats["latency"].items()
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
