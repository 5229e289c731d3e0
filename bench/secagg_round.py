"""A securely aggregated round against a plain round of the same real job, same run.

Usage (from the repository root)::

    .venv/bin/python bench/secagg_round.py                      # default job, 2 rounds each
    .venv/bin/python bench/secagg_round.py --rounds 3 --repeats 2

Job: ``fedpeft simulate``'s default (all-MiniLM-L6-v2 + LoRA r 8, the built-in Reuters R8,
50 clients, 10 per round, Dirichlet 0.5, one local epoch), in process. Runs, alternating
so that the machine's load hits every side alike:

* ``plain``: dense fp32 updates;
* ``secagg``: SecAgg+ (dense, auto bits), no dropouts;
* ``secagg_drop``: SecAgg+ with 20% of each cohort vanishing after masking;
* ``compeft``: plain ComPEFT density 0.1 (the compressed baseline);
* ``secagg_compeft``: SecAgg+ with a shared 10% coordinate subset;
* ``ccvr`` / ``secagg_ccvr``: classifier calibration after the last round, plain (the
  statistics in the clear) and through a secure round of its own (masked sums).

Under SecAgg the clients' learning report (loss, steps, examples, clipped coordinates)
rides inside every masked vector: its cost is in ``secagg_bits_per_coordinate`` and
``bytes_up``; ``metric_coordinates`` records how many integers it adds.

Reported per run: mean round seconds (rounds 2..R: round 1 also pays for tokenising),
seconds per SecAgg stage, bytes up / down per round, bits per coordinate, final eval
accuracy. Ratios (secagg / plain wall, bytes) are computed here from the same run's
numbers. JSON to ``bench/results/secagg_round.json`` with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("FEDPEFT_CACHE", str(os.path.expanduser("~/.cache/fedpeft")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp

from fedpeft.config import JobConfig
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation

SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "secagg": {"secagg.enabled": True},
    "secagg_drop": {"secagg.enabled": True, "secagg.dropout_rate": 0.2},
    "compeft": {"codec.name": "compeft", "codec.density": 0.1},
    "secagg_compeft": {"secagg.enabled": True, "codec.name": "compeft", "codec.density": 0.1},
    "ccvr": {"federation.calibration": "ccvr"},
    "secagg_ccvr": {"secagg.enabled": True, "federation.calibration": "ccvr"},
}
CALIBRATION_KEYS = (
    "calibration_seconds",
    "calibration_bytes_up",
    "calibration_bytes_down",
    "calibration_clients",
    "calibration_failed",
)
BASE = {
    "federation.clients": 50,
    "federation.clients_per_round": 10,
    "data.max_eval_examples": 500,
    "train.epochs": 1.0,
    "train.lr": 2e-3,
    "train.threads": 2,
}
STAGE_KEYS = (
    "secagg_advertise_seconds",
    "secagg_share_seconds",
    "secagg_train_seconds",
    "secagg_unmask_seconds",
    "secagg_server_decode_seconds",
)


def one_run(name: str, rounds: int, out: Path) -> dict[str, Any]:
    cfg = JobConfig().replace(
        {**BASE, **SETTINGS[name], "federation.rounds": rounds, "output": str(out)}
    )
    summary = run_simulation(cfg, export=False)
    records = RunDir(out).read_metrics()
    later = records[1:] or records
    result: dict[str, Any] = {
        "round_seconds": [r["round_seconds"] for r in records],
        "mean_round_seconds_after_first": statistics.mean(r["round_seconds"] for r in later),
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in records),
        "bytes_down_per_round": statistics.mean(r["bytes_down"] for r in records),
        "final_eval_accuracy": summary.get("final_eval_accuracy"),
    }
    for key in (*STAGE_KEYS, "secagg_bits", "secagg_bits_per_coordinate", "secagg_levels"):
        values = [r[key] for r in records if key in r]
        if values:
            result[key] = statistics.mean(values)
    last = records[-1]
    for key in CALIBRATION_KEYS:  # CCVR runs once, after the last round
        if key in last:
            result[key] = last[key]
    if "secagg_levels" in last:
        result["metric_coordinates"] = _metric_coordinates(last)
    if any("secagg_dropped" in r for r in records):
        result["secagg_dropped"] = [r["secagg_dropped"] for r in records]
    return result


def _metric_coordinates(record: dict[str, Any]) -> int:
    """Integers the learning report adds to each masked vector at this round's levels (at
    most: the cap is bounded by the round's total examples)."""
    from fedpeft.privacy.secagg.updates import SecureEncoding

    enc = SecureEncoding(
        names=("x",),
        sizes=(int(record["secagg_coordinates_sent"]),),
        density=1.0,
        subset_seed=0,
        levels=int(record["secagg_levels"]),
        clip_range=1.0,
        weight_cap=1,
        bits=int(record["secagg_bits"]),
        uniform_weights=True,
        with_sq_norm=False,
        metrics=True,
        examples_cap=max(1, int(record.get("train_examples", 1))),
    )
    return sum(enc.metric_digits().values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--runs", default=",".join(SETTINGS))
    parser.add_argument("--output", default="bench/results/secagg_round.json")
    args = parser.parse_args()
    stamp = RunStamp("secagg_round")
    names = [n for n in args.runs.split(",") if n]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    tmp = Path(tempfile.mkdtemp(prefix="secagg-round-"))
    try:
        for rep in range(args.repeats):
            for name in names:
                print(f"[{rep}] {name} ...", flush=True)
                runs[name].append(one_run(name, args.rounds, tmp / f"{name}-{rep}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def mean_of(name: str, key: str) -> float | None:
        values = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
        return statistics.mean(values) if values else None

    ratios: dict[str, float] = {}
    for secure, base in (
        ("secagg", "plain"),
        ("secagg_drop", "plain"),
        ("secagg_compeft", "plain"),
        ("secagg_compeft", "compeft"),
        ("secagg_ccvr", "ccvr"),
    ):
        for key in (
            "mean_round_seconds_after_first",
            "bytes_up_per_round",
            "calibration_seconds",
            "calibration_bytes_up",
        ):
            a, b = mean_of(secure, key), mean_of(base, key)
            if a is not None and b:
                ratios[f"{secure}/{base} {key}"] = a / b
    report = {
        **stamp.header(),
        "job": {**BASE, "federation.rounds": args.rounds, "model": "minilm", "data": "reuters-r8"},
        "settings": {n: SETTINGS[n] for n in names},
        "runs": runs,
        "ratios": ratios,
        "goals": {
            "secagg round wall <= 1.5x plain": ratios.get(
                "secagg/plain mean_round_seconds_after_first"
            ),
            "secagg+compeft bytes up <= 1/20 plain": ratios.get(
                "secagg_compeft/plain bytes_up_per_round"
            ),
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
