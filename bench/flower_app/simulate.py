"""Run the Flower side of ``bench/fed_vs_flower.py`` once and print one JSON line.

Usage (Flower lives in its own venv: flwr 1.41 pins protobuf<7 and friends)::

    /tmp/flwr-venv/bin/python bench/flower_app/simulate.py --clients 300 --rounds 3

Uses ``flwr.simulation.run_simulation`` (ServerApp + ClientApp, Message API). Flower 1.41
marks this Python entry point deprecated in favour of ``flwr run``, which starts a local
SuperLink daemon that launches the very same Simulation Runtime (``flwr-simulation`` →
``_run_simulation``) in a subprocess; the Python call times that runtime without the
daemon, the app packaging (FAB) and the CLI around it.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; don't wait on it
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import_start = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import apps  # noqa: E402  (imported by name so Ray workers can import it too)
import flwr  # noqa: E402
from flwr.server.superlink.fleet.vce.backend import raybackend  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

import_seconds = time.perf_counter() - import_start
STAMPS: dict[str, float] = {}


def _timed(name: str, method):  # instrumentation only: Flower's code runs unchanged
    def wrapper(self, *args, **kwargs):
        STAMPS[f"{name}_start"] = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            STAMPS[f"{name}_end"] = time.perf_counter()

    return wrapper


# RayBackend.__init__ runs ray.init; build() creates the actor pool (actors start async).
raybackend.RayBackend.__init__ = _timed("ray_init", raybackend.RayBackend.__init__)
raybackend.RayBackend.build = _timed("pool_build", raybackend.RayBackend.build)
raybackend.RayBackend.terminate = _timed("terminate", raybackend.RayBackend.terminate)


def _span(name: str) -> float | None:
    if f"{name}_end" not in STAMPS:
        return None
    return STAMPS[f"{name}_end"] - STAMPS[f"{name}_start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floats", type=int, default=100_000)
    parser.add_argument(
        "--cpus-per-client",
        type=float,
        default=1.0,
        help="client_resources.num_cpus; Flower's own default is 2 (one actor on 2 CPUs)",
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)

    apps.SETTINGS.update(clients=args.clients, rounds=args.rounds, floats=args.floats)
    backend_config = {
        "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.num_cpus, "log_to_driver": False},
    }
    start = time.perf_counter()
    run_simulation(
        server_app=apps.server_app,
        client_app=apps.client_app,
        num_supernodes=args.clients,
        backend_config=backend_config,
    )
    wall = time.perf_counter() - start
    starts, ends = apps.TIMES["round_start"], apps.TIMES["round_end"]
    rounds = [e - s for s, e in zip(starts, ends, strict=True)]
    expected = float(args.rounds) * 1e-3
    final_mean = apps.TIMES.get("final_mean", [float("nan")])[0]
    print(
        json.dumps(
            {
                "flwr_version": flwr.__version__,
                "api": "flwr.simulation.run_simulation (ServerApp + ClientApp, Message API)",
                "backend_config": backend_config,
                "import_seconds": import_seconds,
                "wall_seconds": wall,
                # before round 1: Ray start, actor pool, 300 node registrations
                "startup_seconds": starts[0] - start if starts else None,
                "ray_init_seconds": _span("ray_init"),
                "pool_build_seconds": _span("pool_build"),
                "ray_init_done_at": STAMPS.get("ray_init_end", start) - start,
                "terminate_seconds": _span("terminate"),
                "after_last_round_seconds": wall - (ends[-1] - start) if ends else None,
                "round_seconds": rounds,
                "rounds_total_seconds": sum(rounds),
                "final_mean": final_mean,
                "final_mean_expected": expected,
                "correct": abs(final_mean - expected) < 1e-5,
            }
        )
    )


if __name__ == "__main__":
    main()
