"""Where the federated accuracy goes: the global adapter's decision threshold, round by round.

Usage::

    FEDPEFT_CACHE=/tmp/fpcache python bench/calibration.py \\
        --set lora.modules_to_save='["classifier","pooler"]' --set train.lr=4e-3 \\
        --set train.schedule=constant

Runs the federation of ``bench/fed_accuracy.py`` (same base config, same ``--set``), keeps
the global adapter of every round (``EngineHooks.on_round_end`` reads the checkpoint the
engine has just written), and then, for each round, on SST-2 dev:

* ``accuracy``            what the benchmark reports (logit margin > 0)
* ``positive_rate``       the share of dev sentences predicted positive (dev: 0.51)
* ``best_shift_accuracy`` the accuracy at the best constant shift of the logit margin —
  an oracle that looks at dev labels, so a *diagnosis*, never a result: the distance
  between it and ``accuracy`` is what the round's threshold costs; what is left is
  what the representation costs.

Each ``--partition`` value (default: dirichlet and iid) is one federation. Results go to
``bench/results/fed_calibration.json`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import fed_accuracy  # noqa: E402  (the benchmark this one dissects)

from fedpeft.coordinator.engine import CHECKPOINT_DIR, EngineHooks  # noqa: E402
from fedpeft.simulation import run_simulation  # noqa: E402

DEFAULT_OUTPUT = BENCH / "results" / "fed_calibration.json"
SHIFTS = 801  # margin shifts tried in [-4, 4]


def snapshot_hook(run_dir: Path, store: dict[int, dict[str, Any]]) -> EngineHooks:
    """Keep the global adapter of every round (the engine checkpoints before this hook)."""
    from safetensors.numpy import load_file

    def keep(round_num: int) -> None:
        store[round_num] = dict(load_file(str(run_dir / CHECKPOINT_DIR / "global.safetensors")))

    def on_round_start(round_num: int, cohort: int) -> None:
        if round_num - 1 not in store:  # round 0: the checkpoint written before round 1
            keep(round_num - 1)

    return EngineHooks(
        on_round_start=on_round_start, on_round_end=lambda record: keep(int(record["round"]))
    )


def margins(cfg: Any, snapshots: dict[int, dict[str, Any]]) -> tuple[Any, dict[int, Any]]:
    """Dev labels and, per round, the logit margin (positive − negative) of every sentence."""
    import torch

    from fedpeft.adapters.lora import load_trainable_state
    from fedpeft.training.encode import encode
    from fedpeft.training.setup import build_adapted_model, load_job_data

    data = load_job_data(cfg)
    adapted = build_adapted_model(cfg, data.task, data.label_names)
    enc = encode(adapted.tokenizer, data.eval, cfg.data.max_length)
    out = {}
    for round_num, params in sorted(snapshots.items()):
        load_trainable_state(adapted.model, params)
        adapted.model.eval()
        with torch.no_grad():
            logits = torch.cat(
                [
                    adapted.model(**{k: v for k, v in b.items() if k != "labels"}).logits
                    for b in enc.batches(cfg.train.eval_batch_size)
                ]
            )
        out[round_num] = (logits[:, 1] - logits[:, 0]).float()
    return enc.labels, out


def threshold_report(labels: Any, margin: Any) -> dict[str, float]:
    import torch

    shifts = torch.linspace(-4.0, 4.0, SHIFTS)
    correct = ((margin[None, :] + shifts[:, None] > 0).long() == labels[None, :]).float()
    per_shift = correct.mean(dim=1)
    best = int(per_shift.argmax())
    return {
        "accuracy": float(((margin > 0).long() == labels).float().mean()),
        "positive_rate": float((margin > 0).float().mean()),
        "best_shift_accuracy": float(per_shift[best]),
        "best_shift": float(shifts[best]),
    }


def run_one(args: argparse.Namespace, partition: str) -> dict[str, Any]:
    workdir = args.workdir / partition
    args.overrides = {**args.base_overrides, "federation.partition": partition}
    cfg = fed_accuracy.base_config(args, workdir).replace(fed_accuracy.FEDERATED_RUNS["dense"])
    # evaluation happens here, on every snapshot; the engine evaluates only the last round
    cfg = cfg.replace({"federation.eval_every": cfg.federation.rounds})
    snapshots: dict[int, dict[str, Any]] = {}
    start = time.perf_counter()
    try:
        run_simulation(cfg, hooks=snapshot_hook(workdir, snapshots), export=False)
        seconds = time.perf_counter() - start
        labels, per_round = margins(cfg, snapshots)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rounds = [{"round": r, **threshold_report(labels, m)} for r, m in sorted(per_round.items())]
    return {
        "partition": partition,
        "overrides": args.overrides,
        "dev_positive_rate": float(labels.float().mean()),
        "rounds": rounds,
        "federation_seconds": seconds,
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for run in report["runs"]:
        r = [x["round"] for x in run["rounds"]]
        (line,) = left.plot(
            r, [x["accuracy"] for x in run["rounds"]], "o-", label=f"{run['partition']}: accuracy"
        )
        left.plot(
            r,
            [x["best_shift_accuracy"] for x in run["rounds"]],
            "s--",
            color=line.get_color(),
            label=f"{run['partition']}: best threshold (oracle)",
        )
        right.plot(
            r,
            [x["positive_rate"] for x in run["rounds"]],
            "o-",
            color=line.get_color(),
            label=run["partition"],
        )
    right.axhline(report["runs"][0]["dev_positive_rate"], color="grey", ls=":", label="dev")
    left.set(xlabel="round", ylabel="SST-2 dev accuracy", title="global adapter, every round")
    right.set(
        xlabel="round", ylabel="predicted positive", title="decision threshold drift", ylim=(0, 1)
    )
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    from benchinfo import command_line  # bench/ is on sys.path (above)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--partition",
        action="append",
        default=None,
        help="dirichlet and/or iid (repeatable; default both)",
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="key=value, as fed_accuracy")
    parser.add_argument("--data-dir", type=Path, default=fed_accuracy.DEFAULT_DATA)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fedpeft-bench-calibration"))
    args = parser.parse_args(argv)
    args.base_overrides = fed_accuracy.parse_set(args.set)
    args.eval_every = args.rounds
    runs = [run_one(args, p) for p in args.partition or ["dirichlet", "iid"]]
    report = {
        "benchmark": "fed_calibration",
        "setup": "bench/fed_accuracy.py's federation (dense fp32), --set: see runs[*].overrides",
        "runs": runs,
        "command": command_line(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    for run in runs:
        last = run["rounds"][-1]
        print(
            f"[{run['partition']}] round {last['round']}: accuracy {last['accuracy']:.4f}, "
            f"positive {last['positive_rate']:.3f}, "
            f"best threshold {last['best_shift_accuracy']:.4f}"
        )


if __name__ == "__main__":
    main()
