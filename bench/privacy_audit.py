"""Privacy audit: label inference on plain updates and on SecAgg+ sums, TREC, 20 clients.

Usage (from the repository root)::

    .venv/bin/python bench/privacy_audit.py --output bench/results/privacy_audit.json
    .venv/bin/python bench/privacy_audit.py --max-train-examples 300 --clients 6 \\
        --clients-per-round 3 --output /tmp/privacy_audit.json     # a smoke run

Each setting is ``fedpeft audit``'s job — ``fedpeft simulate``'s defaults (MiniLM + LoRA,
Dirichlet(0.5), FedAvg, one local epoch of AdamW at lr 4e-3, FedLC) on
``../shared/data/trec/train.txt`` with 20 clients, 10 per round, one round — run plain and
with ``--secagg``; the JSON holds each setting's report (the attack's scores and their
chance references, per client) and the machine; the PNG puts each metric beside chance.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchinfo import RunStamp, command_line

from fedpeft.audit import run_audit
from fedpeft.cli.audit import AUDIT_DEFAULTS
from fedpeft.config import JobConfig

REPO = Path(__file__).resolve().parent.parent
TREC = REPO.parent / "shared" / "data" / "trec" / "train.txt"
SETTINGS: dict[str, dict[str, Any]] = {"plain": {}, "secagg": {"secagg.enabled": True}}
KEYS = (
    "label_set_recovery",
    "label_set_exact",
    "label_accuracy",
    "label_histogram_l1",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="bench/results/privacy_audit.json")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--clients-per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-train-examples", type=int, default=0, help="0: all")
    parser.add_argument("--max-eval-examples", type=int, default=64)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    if not TREC.exists():
        print(f"{TREC} is absent: this benchmark needs ../shared/data/trec", file=sys.stderr)
        return 2
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        print(f"--settings: unknown {unknown}; known: {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    base = {
        **AUDIT_DEFAULTS,
        "data.train": str(TREC),
        "data.max_eval_examples": args.max_eval_examples,
        "federation.clients": args.clients,
        "federation.clients_per_round": args.clients_per_round,
        "federation.rounds": args.rounds,
    }
    if args.max_train_examples:
        base["data.max_train_examples"] = args.max_train_examples
    stamp = RunStamp("privacy_audit")
    path = Path(args.output)
    report: dict[str, Any] = {
        "command": command_line(),
        "job": {k: os.path.relpath(v, REPO) if k == "data.train" else v for k, v in base.items()},
        "settings": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="privacy-audit-"))
    try:
        for name in names:
            print(f"{name} ...", flush=True)
            cfg = JobConfig().replace({**base, **SETTINGS[name], "output": str(workdir / name)})
            result = run_audit(cfg, ["labels"])
            labels = result["attacks"]["labels"]
            report["settings"][name] = {
                "seconds": result["seconds"],
                **{k: labels[k] for k in KEYS},
                **{f"chance_{k}": labels[f"chance_{k}"] for k in KEYS},
                "clients": labels["clients"],
            }
            report.update(stamp.header())
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
            print(json.dumps({name: {k: labels[k] for k in KEYS}}), flush=True)
        plot(report, path.with_suffix(".png"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    """Each setting's scores beside their chance references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    fig, axes = plt.subplots(1, len(KEYS), figsize=(3.2 * len(KEYS), 3.2))
    for ax, key in zip(axes, KEYS, strict=True):
        names = list(settings)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [settings[n][key] for n in names], 0.4, label="attack")
        ax.bar(
            [x + 0.2 for x in xs],
            [settings[n][f"chance_{key}"] for n in names],
            0.4,
            label="chance",
            color="0.7",
        )
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names)
        ax.set_title(key, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("label inference by the coordinator (TREC, MiniLM + LoRA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
