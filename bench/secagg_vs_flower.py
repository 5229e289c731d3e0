"""fedpeft's SecAgg+ against Flower 1.41's SecAgg+: 20 clients x 100,000 floats, one round.

Usage (from the repository root; Flower in its own venv, as ``bench/fed_vs_flower.py``)::

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install 'flwr[simulation]==1.41.0'
    .venv/bin/python bench/secagg_vs_flower.py --repeats 2

Workload: every client holds the global 100,000-float32 array plus 1e-3 (the "training"
of ``bench/fed_vs_flower.py``); the round's result is the mean.

* **Flower**: this file run by the Flower venv's Python (``--flower-side secagg|plain``):
  ``flwr.simulation.run_simulation`` on its Ray backend (2 CPUs, one CPU per client
  actor) with the legacy API — a ``ServerApp`` whose main builds a ``LegacyContext``
  (FedAvg, all 20 clients, no evaluation) and runs ``DefaultWorkflow(fit_workflow=
  SecAggPlusWorkflow(num_shares=19, reconstruction_threshold=10))``, and a ``ClientApp``
  with a ``NumPyClient`` and ``mods=[secaggplus_mod]`` (19 shares: an odd count, since
  Flower's share count includes the client itself and an even one can stall; its
  quantisation defaults: clip 8, 2^22 levels, modulus 2^32). ``plain`` runs the same
  apps without the workflow and mod. Timed: the ``workflow(driver, context)`` call — the
  round, after Ray and the nodes are up.
* **fedpeft**: the protocol library in one process, sequentially for all 20 clients
  (no transport, no parallelism): quantise (clip 8, 2^21 levels, the same grid step as
  Flower), all four SecAgg+ stages through ``simulate_round`` (complete graph k = 19,
  t = 10, 27-bit field from ``sum_bits``), unmask and dequantise the mean. Timed: all of
  it, wall and CPU.

The two are not the same measurement: Flower's round also carries its messages through
its simulation runtime (Ray actors), fedpeft's has no transport at all. The ratio says
how much the protocol itself costs on each side; it is not a framework comparison.
Sides alternate, each Flower run in a fresh process. JSON to
``bench/results/secagg_vs_flower.json`` with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
CLIENTS, FLOATS, DELTA = 20, 100_000, np.float32(1e-3)
NUM_SHARES, THRESHOLD = 19, 10
CLIP, LEVELS = 8.0, 1 << 21  # Flower: clip 8, quantization_range 2^22 -> step 16/2^22

# --------------------------------------------------------------------------- Flower side

TIMES: dict[str, float] = {}


def flower_apps(mode: str) -> tuple[Any, Any]:
    """The ServerApp and ClientApp of the Flower side (imports flwr: Flower venv only)."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Driver, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class Client(NumPyClient):
        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            return [p + DELTA for p in parameters], 1, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return Client().to_client()

    mods = [secaggplus_mod] if mode == "secagg" else []
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    server_app = ServerApp()

    @server_app.main()
    def main(driver: Driver, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=CLIENTS,
            min_available_clients=CLIENTS,
            initial_parameters=ndarrays_to_parameters([np.zeros(FLOATS, np.float32)]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=1), strategy=strategy
        )
        fit = (
            SecAggPlusWorkflow(num_shares=NUM_SHARES, reconstruction_threshold=THRESHOLD)
            if mode == "secagg"
            else None
        )
        workflow = DefaultWorkflow(fit_workflow=fit)
        start = time.perf_counter()
        workflow(driver, legacy)
        TIMES["round"] = time.perf_counter() - start
        from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

        final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]
        TIMES["final_mean"] = float(final.mean())

    return server_app, client_app


def flower_side(mode: str) -> None:
    import logging

    import flwr
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    server_app, client_app = flower_apps(mode)
    backend_config = {
        "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "log_to_driver": False},
    }
    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=CLIENTS,
        backend_config=backend_config,
    )
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "side": f"flower-{mode}",
                "flwr_version": flwr.__version__,
                "round_seconds": TIMES.get("round"),
                "wall_seconds": wall,
                "mean_of_result": TIMES.get("final_mean"),
                "abs_error_of_mean": abs(TIMES.get("final_mean", float("nan")) - float(DELTA)),
            }
        )
    )


# --------------------------------------------------------------------------- fedpeft side


def fedpeft_side() -> dict[str, Any]:
    from fedpeft.privacy.secagg import (
        dequantize,
        from_field,
        plan_secagg,
        quantize,
        sum_bits,
        to_field,
    )
    from fedpeft.privacy.secagg.simulate import simulate_round

    wall, cpu = time.perf_counter(), time.process_time()
    bits = sum_bits(CLIENTS, LEVELS)
    params = plan_secagg(range(CLIENTS), length=FLOATS, bits=bits, round_num=1, seed=0)
    rng = np.random.default_rng(0)
    inputs = {}
    for c in params.clients:
        update = np.zeros(FLOATS, np.float32) + DELTA  # the client's "training"
        ints, _ = quantize(update, clip=CLIP, levels=LEVELS, rng=rng)
        inputs[c] = to_field(ints, bits)
    run = simulate_round(params, inputs)
    total = from_field(run.server.result(), bits)
    mean = dequantize(total, clip=CLIP, levels=LEVELS) / CLIENTS
    out = {
        "side": "fedpeft",
        "round_seconds": time.perf_counter() - wall,
        "round_cpu_seconds": time.process_time() - cpu,
        "degree_k": params.degree,
        "threshold_t": params.threshold,
        "bits": bits,
        "mean_of_result": float(mean.mean()),
        "abs_error_of_mean": abs(float(mean.mean()) - float(DELTA)),
        "client_cpu_seconds_mean": {
            s: float(np.mean(v)) for s, v in run.client_seconds.items() if v
        },
        "server_cpu_seconds": run.server_seconds,
    }
    return out


def run_flower(python: str, mode: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--flower-side", mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"Flower {mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return dict(json.loads(lines[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flower-side", choices=["secagg", "plain"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--flower-python", default="/tmp/flwr-venv/bin/python")
    ap.add_argument("--output", default="bench/results/secagg_vs_flower.json")
    args = ap.parse_args()
    if args.flower_side:
        flower_side(args.flower_side)
        return
    sys.path.insert(0, str(BENCH))
    from benchinfo import RunStamp

    stamp = RunStamp("secagg_vs_flower")
    runs = []
    for i in range(args.repeats):
        for side in ("fedpeft", "flower-secagg", "flower-plain"):
            if side == "fedpeft":
                result = fedpeft_side()
            else:
                result = run_flower(args.flower_python, side.split("-")[1])
            result["repeat"] = i
            runs.append(result)
            print(json.dumps(result), flush=True)

    def best(side: str) -> float:
        return min(r["round_seconds"] for r in runs if r["side"] == side)

    summary = {
        "fedpeft_round_seconds_best": best("fedpeft"),
        "flower_secagg_round_seconds_best": best("flower-secagg"),
        "flower_plain_round_seconds_best": best("flower-plain"),
        "flower_secagg_over_fedpeft": best("flower-secagg") / best("fedpeft"),
        "flower_secagg_over_flower_plain": best("flower-secagg") / best("flower-plain"),
    }
    report = {**stamp.header(), "clients": CLIENTS, "floats": FLOATS, "runs": runs, **summary}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
