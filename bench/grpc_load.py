"""Load test of the coordinator: N concurrent asyncio clients (one process) against the real
gRPC servicer, fleet, GrpcBackend and RoundEngine (FedAvg) in a second process.

Each client registers, heart-beats, long-polls for tasks, decodes the dense downlink
(100 KB of fp32 weights), and pushes a dense-encoded 100 KB update that the engine
decodes, validates and averages. Reported: rounds per minute, per-call latency
percentiles, starved clients (sampled but never served, or never given a task),
the coordinator's peak RSS.

    python bench/grpc_load.py --clients 500 --rounds 3 --output bench/results/grpc_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    """The coordinator process: the real server, fleet, backend and engine; no model."""
    from fedpeft.aggregation import make_strategy
    from fedpeft.compression import make_codec
    from fedpeft.config import FederationConfig
    from fedpeft.coordinator.engine import RoundEngine
    from fedpeft.coordinator.grpc_backend import GrpcBackend, LiveClientSampler
    from fedpeft.coordinator.handlers import Fleet, FleetSettings
    from fedpeft.coordinator.server import CoordinatorServer
    from fedpeft.coordinator.store import Store
    from fedpeft.rundir import RunDir

    class WeightsOnly:
        """The coordinator's side of the app: the initial adapter; no evaluation data."""

        def initial_state(self) -> dict[str, np.ndarray]:
            return {"w": np.zeros(PAYLOAD_FLOATS, np.float32)}

        def evaluate(self, params: dict[str, np.ndarray]) -> dict[str, float]:
            return {"w_norm": float(np.linalg.norm(params["w"]))}

        def train(self, task: Any) -> Any:
            raise RuntimeError("the coordinator does not train")

    out = Path(args.workdir)
    store = Store(out / "state.db")
    settings = FleetSettings(
        open_enrollment=True,  # loopback load test: no enrolment secret
        heartbeat_seconds=args.heartbeat,
        liveness_seconds=args.heartbeat * 6,
        max_clients=args.clients,
        registrations_per_minute=60_000,
        registration_burst=args.clients,
    )
    fleet = Fleet(store, settings, {"job": {}}, out / "artifacts")
    server = CoordinatorServer(fleet, "127.0.0.1", args.port, insecure_localhost=True)
    server.start()
    dense = make_codec("dense", dtype="fp32")
    engine = RoundEngine(
        backend=GrpcBackend(fleet, WeightsOnly(), dense, round_timeout=600),  # type: ignore[arg-type]
        strategy=make_strategy(FederationConfig(clients=args.clients, clients_per_round=1)),
        sampler=LiveClientSampler(fleet, args.clients, 0, wait_timeout=300),  # type: ignore[arg-type]
        shards=[None] * (args.clients + 1),  # type: ignore[list-item]
        uplink=dense,
        downlink=dense,
        run=RunDir(out / "run"),
        rounds=args.rounds,
        seed=0,
    )
    (out / "run").mkdir(parents=True, exist_ok=True)
    engine.start_fresh()
    engine.run()
    fleet.finish()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and set(fleet.connected(time.monotonic())) - fleet.told_over:
        time.sleep(0.2)
    server.stop()
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    (out / "coordinator.json").write_text(json.dumps({"peak_rss_mb": peak_kb / 1024}))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=50381)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--output", default="bench/results/grpc_load.json")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("mode", nargs="?", default="bench", choices=["bench", "_coordinator"])
    args = parser.parse_args()
    if args.mode == "_coordinator":
        coordinator_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, __file__, "_coordinator", "--clients", str(args.clients),
            "--rounds", str(args.rounds), "--port", str(args.port),
            "--heartbeat", str(args.heartbeat), "--workdir", tmp,
        ]  # fmt: skip
        load_before = os.getloadavg()
        start = time.perf_counter()
        coordinator = subprocess.Popen(cmd)
        stats = asyncio.run(run_clients(args.port, args.clients))
        code = coordinator.wait(timeout=120)
        wall = time.perf_counter() - start
        records = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").open()]
        coord = json.loads((Path(tmp) / "coordinator.json").read_text())
    round_seconds = [r["round_seconds"] for r in records]
    tasks = stats["tasks_per_client"]
    result = {
        "setting": {
            "clients": args.clients,
            "clients_per_round": args.clients,
            "rounds": args.rounds,
            "payload_bytes": PAYLOAD_FLOATS * 4,
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
