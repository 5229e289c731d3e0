"""Accuracy under client-level DP: federated SST-2 at epsilon 1, 4, 8 and without DP,
central noise (the coordinator adds it) and distributed noise (clients add discrete
Gaussian noise under SecAgg+).

Usage (from the repository root)::

    .venv/bin/python bench/dp_accuracy.py                          # every run
    .venv/bin/python bench/dp_accuracy.py --runs nodp,central-8 --rounds 5
    .venv/bin/python bench/dp_accuracy.py --plot-only

Job: all-MiniLM-L6-v2 on SST-2 train (6,920 sentences; ``../shared/data/sst2``), 1,000
clients (iid, about 7 sentences each), 100 per round (fixed-size sampling), five local
epochs (one AdamW step each: a shard is smaller than a batch) at lr 1e-2, evaluated on the
872 dev sentences after the last round; delta = 1e-5.

The one focused attempt at good DP settings: the noise on the mean update has norm about
z · 2C/k · sqrt(D) against a signal of norm at most C, so what helps is fewer trainable
coordinates D, not the clip. The runs train a small adapter — FFA-LoRA (``lora.freeze_a``)
r 4 on query/value in the top two blocks (``lora.layers 2``), classifier head: D ~ 6.9k
instead of ~260k for the package's default (r 8 on q/k/v in every block plus the pooler) —
with clip C = 0.5 and server lr 1, for the DP and the non-private runs alike (the
non-private run does not clip). The frozen lower blocks run once per sentence per worker
(``train.prefix_cache``), so a round costs little beyond the per-client overhead.
Results (JSON + PNG of accuracy vs epsilon) go to ``bench/results/dp_accuracy.json`` /
``.png``, run by run, with the load average.
"""

from __future__ import annotations

import os

os.environ.setdefault("FEDPEFT_CACHE", str(os.path.expanduser("~/.cache/fedpeft")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp

from fedpeft.config import JobConfig
from fedpeft.rundir import RunDir
from fedpeft.simulation import run_simulation

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO.parent / "shared" / "data" / "sst2"
EPSILONS = (1.0, 4.0, 8.0)
RUNS: dict[str, dict[str, Any]] = {"nodp": {}}
for _eps in EPSILONS:
    RUNS[f"central-{_eps:g}"] = {"dp.epsilon": _eps, "dp.delta": 1e-5}
    RUNS[f"distributed-{_eps:g}"] = {
        "dp.epsilon": _eps,
        "dp.delta": 1e-5,
        "secagg.enabled": True,
    }
BASE: dict[str, Any] = {
    "model.name": "minilm",
    "data.train": str(SST2 / "train.txt"),
    "data.eval": str(SST2 / "dev.txt"),
    "federation.clients": 1000,
    "federation.clients_per_round": 100,
    # iid: Dirichlet(0.5) over 1,000 clients leaves ~70 of them without a single sentence
    # (6,920 / 1,000 is about 7 each); DP-FedAvg's own experiments shard uniformly too
    "federation.partition": "iid",
    "train.epochs": 5.0,
    "train.lr": 1e-2,
    "train.schedule": "constant",
    "train.threads": 2,
    "lora.r": 4,
    "lora.freeze_a": True,
    "lora.target_modules": ["query", "value"],
    "lora.layers": 2,
    "lora.modules_to_save": ["classifier"],
    "dp.clip": 0.5,
}


def run_one(
    name: str, rounds: int, workdir: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    out = workdir / name
    cfg = JobConfig().replace(
        {
            **BASE,
            **(overrides or {}),
            **RUNS[name],
            "federation.rounds": rounds,
            "federation.eval_every": rounds,
            "output": str(out),
        }
    )
    start = time.perf_counter()
    summary = run_simulation(cfg, export=False)
    records = RunDir(out).read_metrics()
    last = records[-1] if records else {}
    return {
        "settings": {**(overrides or {}), **RUNS[name]},
        "rounds": len(records),
        "final_eval_accuracy": summary.get("final_eval_accuracy"),
        "initial_eval_accuracy": summary.get("initial_eval_accuracy"),
        "epsilon": summary.get("epsilon"),
        "dp_noise_multiplier": last.get("dp_noise_multiplier"),
        "dp_noise_std": last.get("dp_noise_std"),
        "dp_unclipped_fraction_noised": [r.get("dp_unclipped_fraction_noised") for r in records],
        "train_loss": [r.get("train_loss") for r in records],
        "wall_seconds": time.perf_counter() - start,
        "load_avg_end": os.getloadavg(),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, marker in (("central", "o"), ("distributed", "s")):
        pts = sorted(
            (r["epsilon"], r["final_eval_accuracy"])
            for n, r in runs.items()
            if n.startswith(mode) and r.get("final_eval_accuracy") is not None
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, label=f"{mode} DP")
    if "nodp" in runs and runs["nodp"].get("final_eval_accuracy") is not None:
        ax.axhline(runs["nodp"]["final_eval_accuracy"], color="gray", ls="--", label="no DP")
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("SST-2 dev accuracy")
    ax.set_title(f"MiniLM, 1000 clients, 100/round, {report.get('rounds')} rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="bench/results/dp_accuracy.json")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a job setting for every run, e.g. --set train.lr=0.005",
    )
    args = parser.parse_args()
    path = Path(args.output)
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if not args.plot_only:
        if not SST2.is_dir():
            sys.exit(f"{SST2} is absent: this benchmark needs ../shared/data/sst2")
        overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.set)}
        stamp = RunStamp("dp_accuracy")
        workdir = Path(tempfile.mkdtemp(prefix="dp-accuracy-"))
        try:
            for name in [n for n in args.runs.split(",") if n]:
                print(f"{name} ...", flush=True)
                report["runs"][name] = run_one(name, args.rounds, workdir, overrides)
                report.update(stamp.header())
                report["rounds"] = args.rounds
                report["job"] = BASE
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(report, indent=2) + "\n")
                print(json.dumps(report["runs"][name]), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    plot(report, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
