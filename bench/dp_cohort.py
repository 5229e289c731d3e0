"""Accuracy against clients per round at a fixed epsilon, with the DP planner's prediction
beside each point: does a bigger cohort carry client-level DP noise, as ``fedpeft dp plan``
says it should?

Usage (from the repository root)::

    .venv/bin/python bench/dp_cohort.py                                   # every point
    .venv/bin/python bench/dp_cohort.py --cohorts 30,300 --modes central --rounds 3
    .venv/bin/python bench/dp_cohort.py --plot-only

Job: the DP job of ``bench/dp_accuracy.py`` (all-MiniLM-L6-v2 + FFA-LoRA r 4 on the top two
blocks + head, clip 0.5, SST-2 train, evaluated on the 872 dev sentences) with users who
each hold **one to a few sentences**: 3,000 clients (iid, about 2.3 sentences each), at
epsilon 8 (delta 1e-5) over ``--rounds`` rounds, for cohorts of 30 to 1,000 clients per
round, with central noise (the coordinator adds it; accounted with amplification by
sampling from OS-entropy cohorts) and distributed noise (clients add discrete Gaussian
noise under SecAgg+; accounted without amplification). Each point records the planner's
noise multiplier and noise-to-clip ratio (:mod:`fedpeft.privacy.planner`, what
``fedpeft dp plan`` prints) beside the run's own ``dp_noise_multiplier`` and accuracy, and
the non-private run of the same cohort as the reference. Results (JSON + PNG) go to
``bench/results/dp_cohort.json`` / ``.png`` point by point, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp, command_line
from dp_accuracy import BASE

from fedpeft.config import JobConfig
from fedpeft.privacy.planner import PlanSettings, noise_to_clip, sum_noise_multiplier
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation

CLIENTS = 3000
EPSILON = 8.0
DELTA = 1e-5
COHORTS = (30, 100, 300, 1000)
MODES = ("nodp", "central", "distributed")
MODE_SETTINGS: dict[str, dict[str, Any]] = {
    "nodp": {},
    "central": {"dp.epsilon": EPSILON, "dp.delta": DELTA, "dp.mode": "central"},
    "distributed": {
        "dp.epsilon": EPSILON,
        "dp.delta": DELTA,
        "dp.mode": "distributed",
        "secagg.enabled": True,
    },
}


def config(mode: str, cohort: int, rounds: int, out: Path) -> JobConfig:
    return JobConfig().replace(
        {
            **BASE,
            **MODE_SETTINGS[mode],
            "federation.clients": CLIENTS,
            "federation.clients_per_round": cohort,
            "federation.rounds": rounds,
            "federation.eval_every": rounds,
            "output": str(out),
        }
    )


def trainable_dimension(run: Path) -> int:
    """d: the coordinates of one update, from the run's own checkpointed adapter."""
    from safetensors.numpy import load_file

    return sum(v.size for v in load_file(str(run / "checkpoint" / "global.safetensors")).values())


def plan(cfg: JobConfig, dimension: int) -> dict[str, float]:
    """What ``fedpeft dp plan`` predicts for this run."""
    settings = PlanSettings(
        population=cfg.federation.clients,
        cohort=cfg.federation.clients_per_round,
        rounds=cfg.federation.rounds,
        clip=cfg.dp.clip,
        dimension=dimension,
        epsilon=cfg.dp.epsilon,
        delta=cfg.dp.delta or DELTA,
        sampling=cfg.federation.sampling,
        mode=cfg.dp.mode,
        tolerated_dropout=cfg.secagg.tolerated_dropout,
        accountant=cfg.dp.accountant,
    )
    z = sum_noise_multiplier(settings) / settings.sensitivity_factor
    return {
        "plan_noise_multiplier": z,
        "plan_noise_to_clip": noise_to_clip(
            z * settings.sensitivity_factor, dimension, settings.noisy_clients
        ),
    }


def run_point(mode: str, cohort: int, rounds: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{mode}-{cohort}"
    cfg = config(mode, cohort, rounds, out)
    start = time.perf_counter()
    summary = run_simulation(cfg, export=False)
    records = RunDir(out).read_metrics()
    last = records[-1] if records else {}
    point: dict[str, Any] = {
        "mode": mode,
        "clients_per_round": cohort,
        "rounds": len(records),
        "final_eval_accuracy": summary.get("final_eval_accuracy"),
        "initial_eval_accuracy": summary.get("initial_eval_accuracy"),
        "epsilon": summary.get("epsilon"),
        "dp_noise_multiplier": last.get("dp_noise_multiplier"),
        "dp_noise_std": last.get("dp_noise_std"),
        "dimension": trainable_dimension(out),
        "wall_seconds": time.perf_counter() - start,
        "load_avg_end": os.getloadavg(),
    }
    if mode != "nodp":
        point.update(plan(cfg, point["dimension"]))
    return point


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, ratio) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        points = sorted(
            (p for p in report["points"] if p["mode"] == mode and p["final_eval_accuracy"]),
            key=lambda p: p["clients_per_round"],
        )
        if not points:
            continue
        ks = [p["clients_per_round"] for p in points]
        acc.plot(ks, [p["final_eval_accuracy"] for p in points], "o-", label=mode)
        if mode != "nodp":
            ratio.plot(ks, [p["plan_noise_to_clip"] for p in points], "o-", label=mode)
    for ax in (acc, ratio):
        ax.set_xscale("log")
        ax.set_xlabel("clients per round")
        ax.legend()
    acc.set_ylabel(f"SST-2 dev accuracy (epsilon {EPSILON:g})")
    ratio.axhline(0.5, color="grey", linestyle=":")
    ratio.set_ylabel("planned noise-to-clip ratio")
    ratio.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohorts", default=",".join(str(k) for k in COHORTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="bench/results/dp_cohort.json")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.output)
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"points": []}
    if not args.plot_only:
        stamp = RunStamp("dp_cohort")
        report.update(
            {
                "command": command_line(),
                "clients": CLIENTS,
                "epsilon": EPSILON,
                "delta": DELTA,
                "rounds": args.rounds,
                "job": {k: v for k, v in BASE.items() if not k.startswith("data.")},
                "data": "../shared/data/sst2 (train.txt, dev.txt)",
            }
        )
        modes = [m for m in args.modes.split(",") if m]
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            parser.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
        with tempfile.TemporaryDirectory() as tmp:
            for cohort in (int(k) for k in args.cohorts.split(",") if k):
                for mode in modes:
                    point = run_point(mode, cohort, args.rounds, Path(tmp))
                    report["points"] = [
                        p
                        for p in report["points"]
                        if (p["mode"], p["clients_per_round"]) != (mode, cohort)
                    ] + [point]
                    report.update(stamp.header())
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(report, indent=2) + "\n")
                    print(json.dumps(point), flush=True)
    draw(report, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
