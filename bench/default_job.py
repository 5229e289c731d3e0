"""The default job (``make run``): its accuracy and time, beside centralized training.

Usage::

    .venv/bin/python bench/default_job.py                         # the default job + central
    .venv/bin/python bench/default_job.py --name lr4e-3 --set train.lr=0.004 --no-central

A run is exactly what ``fedpeft simulate`` does without flags (``JobConfig`` defaults with
``fedpeft.cli.simulate.SIMULATE_DEFAULTS`` on top: Reuters R8, MiniLM + LoRA, 100 clients,
Dirichlet(0.5), 10 per round, 5 rounds, evaluation on the first
``data.max_eval_examples`` test documents), plus ``--set key=value`` overrides, so a
candidate setting is measured through the same code path. ``central`` trains the same
model centrally on the same number of examples the federation saw (the sum of the sampled
shards over the rounds; ``train.max_steps = examples / batch_size``), with the centralized
learning rate and schedule of ``fedpeft train`` (``--central-lr``), and evaluates on the
same documents.

Results merge into ``bench/results/default_job.json`` run by run, each with its settings,
final accuracy, wall time, torch threads and the load average around it (this machine is
shared: compare timings inside one file only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchinfo import RunStamp, command_line
from fed_accuracy import federated_examples, parse_set

from fedpeft.cli.simulate import SIMULATE_DEFAULTS
from fedpeft.config import JobConfig
from fedpeft.simulation import run_simulation
from fedpeft.training.central import run_central

BENCH = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH / "results" / "default_job.json"


def job_config(overrides: dict[str, Any], threads: int | None, output: Path) -> JobConfig:
    """What ``fedpeft simulate`` runs without flags, plus ``overrides``."""
    cfg = JobConfig().replace({**SIMULATE_DEFAULTS}).replace(overrides)
    return cfg.replace({"output": str(output), "train.threads": threads})


def job_settings(overrides: dict[str, Any]) -> dict[str, Any]:
    """The simulate defaults (less the output folder) with ``overrides`` on top."""
    base = {k: v for k, v in SIMULATE_DEFAULTS.items() if k != "output"}
    return {**base, **overrides}


def run_federated(cfg: JobConfig) -> dict[str, Any]:
    examples, _ = federated_examples(cfg)
    load_start = os.getloadavg()
    start = time.perf_counter()
    summary = run_simulation(cfg, export=False)
    seconds = time.perf_counter() - start
    records = [
        json.loads(line)
        for line in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return {
        "kind": "federated",
        "examples_seen": examples,
        "initial_eval_accuracy": summary.get("initial_eval_accuracy"),
        "final_eval_accuracy": summary["final_eval_accuracy"],
        "final_eval_macro_f1": summary.get("final_eval_macro_f1"),
        "accuracy_by_round": [r.get("eval_accuracy") for r in records],
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "wall_seconds": seconds,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
    }


def run_centralized(cfg: JobConfig, lr: float) -> dict[str, Any]:
    examples, _ = federated_examples(cfg)
    steps = max(1, round(examples / cfg.train.batch_size))
    central = cfg.replace({"train.max_steps": steps, "train.lr": lr, "train.schedule": "linear"})
    load_start = os.getloadavg()
    start = time.perf_counter()
    metrics = run_central(central, log_every=10_000)
    return {
        "kind": "centralized",
        "matched_federated_examples": examples,
        "examples_seen": metrics["examples_seen"],
        "max_steps": steps,
        "lr": lr,
        "schedule": "linear",
        "final_eval_accuracy": metrics["eval_accuracy"],
        "final_eval_macro_f1": metrics["eval_macro_f1"],
        "wall_seconds": time.perf_counter() - start,
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="default", help="key of this run in the results")
    parser.add_argument("--set", action="append", default=[], help="key=value override")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    parser.add_argument("--no-central", action="store_true", help="skip the centralized run")
    parser.add_argument("--central-lr", type=float, default=2e-3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fedpeft-bench-default-job"))
    args = parser.parse_args(argv)
    args.overrides = parse_set(args.set)
    return args


def _save(path: Path, name: str, result: dict[str, Any]) -> None:
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.setdefault("benchmark", "default_job")
    report.setdefault("runs", {})[name] = result
    report["simulate_defaults"] = {k: v for k, v in SIMULATE_DEFAULTS.items() if k != "output"}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = RunStamp("default_job")
    workdir = args.workdir / args.name
    cfg = job_config(args.overrides, args.threads, workdir)
    jobs = [(args.name, "federated")] + ([] if args.no_central else [("central", "central")])
    for name, kind in jobs:
        try:
            if kind == "federated":
                result = run_federated(cfg)
            else:
                central_cfg = cfg.replace({"output": str(workdir) + "-central"})
                result = run_centralized(central_cfg, args.central_lr)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(str(workdir) + "-central", ignore_errors=True)
        header = stamp.header()
        result.update(
            {
                "overrides": args.overrides,
                # everything that differs from JobConfig's defaults: what `make run` runs
                # when SIMULATE_DEFAULTS equals this (tests/unit/test_docs.py checks it)
                "settings": job_settings(args.overrides),
                "threads": args.threads,
                "command": command_line(),
                "source": header["source_before"],
                "finished": header["finished"],
                "machine": header["machine"],
            }
        )
        _save(args.output, name if kind == "federated" else f"central[{args.name}]", result)
        print(
            f"[{name}] accuracy {result['final_eval_accuracy']:.4f} "
            f"in {result['wall_seconds']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
