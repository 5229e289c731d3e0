"""Run the Flower side of ``bench/realjob_vs_flower.py`` once and print one JSON line.

Usage (Flower lives in its own venv: ``make flower-venv``)::

    .venv-flower/bin/python bench/flower_app/run_realjob.py --plan PLAN.json --rounds 5

``PLAN.json`` is written by the bench: the job's settings, fedpeft's partition of the
training set (per-client indices) and fedpeft's cohort of every round. Uses
``flwr.simulation.run_simulation`` (ServerApp + ClientApp of ``realjob.py``, Message
API) on Flower's Ray backend: ``client_resources.num_cpus=1`` on ``ray.init(num_cpus=2)``,
so two actors train at once. Times are epoch seconds (``time.time()``), so the bench can
line them up with its CPU samples.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network here; don't wait on it
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import logging
import sys
import time
from pathlib import Path

process_start = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flwr  # noqa: E402
import realjob  # noqa: E402  (imported by name so Ray workers can import it too)
from flwr.simulation import run_simulation  # noqa: E402

import_seconds = time.time() - process_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", required=True, help="plan JSON written by the bench")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--num-cpus", type=int, default=2, help="ray.init(num_cpus=...)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)

    plan = realjob.load_plan(args.plan)
    texts, labels = realjob.read_labeled_lines(plan["train_file"], plan["max_train_examples"])
    digest = realjob.data_digest(texts, labels)
    if digest != plan["train_digest"]:  # the partition indices would point elsewhere
        raise SystemExit(f"training data differs from fedpeft's: {digest} != plan's")

    realjob.SETTINGS.update(plan=args.plan, rounds=args.rounds)
    backend_config = {
        "client_resources": {"num_cpus": args.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.num_cpus, "log_to_driver": False},
    }
    start = time.time()
    run_simulation(
        server_app=realjob.server_app,
        client_app=realjob.client_app,
        num_supernodes=plan["job"]["clients"],
        backend_config=backend_config,
    )
    end = time.time()
    evals = {e["round"]: e for e in realjob.EVALS}
    print(
        json.dumps(
            {
                "flwr_version": flwr.__version__,
                "api": "flwr.simulation.run_simulation (ServerApp + ClientApp, Message API)",
                "backend_config": backend_config,
                "process_start": process_start,
                "import_seconds": import_seconds,
                "run_start": start,
                "run_end": end,
                "initial_eval_end": realjob.TIMES.get("initial_eval_end", [None])[0],
                "round_start": realjob.TIMES["round_start"],
                "train_end": realjob.TIMES["train_end"],
                "round_end": realjob.TIMES["round_end"],
                "accuracy": [evals[r]["accuracy"] for r in sorted(evals)],
                "eval_loss": [evals[r]["loss"] for r in sorted(evals)],
                "eval_seconds": [evals[r]["seconds"] for r in sorted(evals)],
                "bytes_down": realjob.BYTES["down"],
                "bytes_up": realjob.BYTES["up"],
                "bytes_down_serialized": realjob.BYTES["down_serialized"],
                "bytes_up_serialized": realjob.BYTES["up_serialized"],
                "cohorts": [r["partitions"] for r in realjob.ROUNDS],
                "client_train_seconds_sum": [r["sum_train-seconds"] for r in realjob.ROUNDS],
                "client_seconds_sum": [r["sum_client-seconds"] for r in realjob.ROUNDS],
                "rounds_detail": realjob.ROUNDS,
            }
        )
    )


if __name__ == "__main__":
    main()
