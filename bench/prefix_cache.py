"""Frozen-prefix caching: what LoRA in the top blocks only saves per epoch, and costs in accuracy.

Usage::

    .venv/bin/python bench/prefix_cache.py                    # ~10 min on one core
    .venv/bin/python bench/prefix_cache.py --examples 64 --output /tmp/p.json   # smoke run
    .venv/bin/python bench/prefix_cache.py --more-seeds 1 2 --settings top2_nocache top2_cache

MiniLM (6 blocks) on SST-2, the same ``--examples`` training sentences (a seeded sample
of the train split, named by their index in the whole split as a worker's virtual clients
name theirs), LoRA r 8 on query/key/value plus the package's default head (classifier +
pooler), batch 16, 64 tokens, AdamW lr 1e-3 constant (no warm-up), the same seed, two
epochs through ``fedpeft.training.loop.train_local``. Settings:

* ``all6``: LoRA in all 6 blocks (``lora.layers = 0``);
* ``top2_nocache``: LoRA in the top 2 blocks, the whole model runs every step;
* ``top2_cache``: the same with the prefix cache (blocks 0-3 once per example, fp32);
* ``top3_cache``: LoRA in the top 3 blocks, cached;
* ``top2_cache_fp16``: ``top2_cache`` with the states stored in fp16.

Per setting: seconds of epoch 1 (the cache fills) and epoch 2 (the cache is read), steps
per second, speed-up against ``all6`` measured in the same run, cache size, and SST-2 dev
accuracy (all 872 sentences) after the two epochs. ``--more-seeds`` trains chosen settings
again at other training seeds (same sentences) and adds their accuracy to the report, to
tell a gap between settings from what the seed alone moves. Settings run one after another on
``--threads`` torch threads; the load average before and after each is recorded (this
machine is shared: compare timings inside one file only).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from benchinfo import RunStamp, source_version

from fedpeft.config import JobConfig
from fedpeft.training.encode import EncodedData, encode
from fedpeft.training.loop import evaluate, planned_steps, train_local
from fedpeft.training.prefix import prefix_cache_for
from fedpeft.training.setup import build_adapted_model, load_job_data, set_threads

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parents[1] / "shared" / "data" / "sst2"
DEFAULT_OUTPUT = BENCH / "results" / "prefix_cache.json"
MEASURED = (
    "src/fedpeft/training/prefix.py",
    "src/fedpeft/training/loop.py",
    "src/fedpeft/training/encode.py",
    "src/fedpeft/adapters/lora.py",
)

#: name -> overrides on top of the common settings
SETTINGS: dict[str, dict[str, Any]] = {
    "all6": {"lora.layers": 0},
    "top2_nocache": {"lora.layers": 2, "train.prefix_cache": False},
    "top2_cache": {"lora.layers": 2},
    "top3_cache": {"lora.layers": 3},
    "top2_cache_fp16": {"lora.layers": 2, "train.prefix_cache_dtype": "fp16"},
}


def common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model.name": "minilm",
        "model.device": "cpu",
        "data.train": str(args.data / "train.txt"),
        "data.eval": str(args.data / "dev.txt"),
        "data.max_length": 64,
        "lora.r": 8,
        "train.batch_size": 16,
        "train.optimizer": "adamw",
        "train.lr": 1e-3,
        "train.schedule": "constant",
        "train.warmup_ratio": 0.0,
        "train.epochs": float(args.epochs),
        "train.seed": args.seed,
        "train.threads": args.threads,
        "output": "/tmp/fedpeft-bench-prefix-cache",
    }


def run_setting(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = JobConfig().replace({**common(args), **overrides})
    data = load_job_data(cfg)
    adapted = build_adapted_model(cfg, data.task, data.label_names)
    model = adapted.model
    # the worker's whole tokenised split, and a seeded sample of it: the cache keys are
    # indices in the whole split, as for a virtual client's shard
    whole: EncodedData = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    sample = np.random.default_rng(args.sample_seed)
    pick = sample.choice(len(whole), args.examples, replace=False)
    shard = whole.subset(sorted(int(i) for i in pick))
    assert data.eval is not None  # set in common()
    dev = encode(adapted.tokenizer, data.eval, cfg.data.max_length)
    prefix = prefix_cache_for(model, whole, cfg)

    per_epoch = planned_steps(len(shard), dataclasses.replace(cfg.train, epochs=1.0))
    marks: dict[int, tuple[float, float]] = {}  # step -> (wall, this process's CPU) seconds

    def mark(step: int, _total: int, _loss: float) -> None:
        marks[step] = (time.perf_counter(), time.process_time())

    load_before = os.getloadavg()
    mark(0, 0, 0.0)
    stats = train_local(model, shard, cfg.train, seed=cfg.train.seed, on_step=mark, prefix=prefix)
    load_after = os.getloadavg()
    ends = [marks[e * per_epoch] for e in range(args.epochs + 1)]
    seconds = [b[0] - a[0] for a, b in itertools.pairwise(ends)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(ends)]
    metrics = evaluate(model, dev, cfg.train.eval_batch_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "overrides": overrides,
        "cached": prefix is not None,
        "dev_accuracy": round(metrics["eval_accuracy"], 4),
        "epoch_cpu_seconds": [round(s, 2) for s in cpu],
        "epoch_seconds": [round(s, 2) for s in seconds],
        "epoch_steps_per_cpu_second": [round(per_epoch / s, 3) for s in cpu],
        "epoch_steps_per_second": [round(per_epoch / s, 3) for s in seconds],
        "cache_mib": round(prefix.bytes / 2**20, 2) if prefix is not None else 0.0,
        "trainable_parameters": trainable,
        "dev_loss": round(metrics["eval_loss"], 4),
        "train_loss": round(stats.loss, 4),
        "steps": stats.steps,
        "steps_per_epoch": per_epoch,
        "train_seconds": round(stats.seconds, 2),
        "cache_examples": len(prefix) if prefix is not None else 0,
        "prefix_computed": prefix.computed if prefix is not None else 0,
        "prefix_hits": prefix.hits if prefix is not None else 0,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
    }


def speedups(runs: dict[str, dict[str, Any]], base: str = "all6") -> None:
    """Per epoch and over both: the baseline's seconds over each setting's (same run), in
    CPU seconds of this process (``speedup_vs_all6``: what other processes on the shared
    machine take does not count) and in wall seconds."""
    if base not in runs:
        return
    ref = runs[base]
    for run in runs.values():
        for key, field in (
            ("speedup_vs_all6", "epoch_cpu_seconds"),
            ("speedup_vs_all6_wall", "epoch_seconds"),
        ):
            run[key] = {
                **{
                    f"epoch{i + 1}": round(r / s, 2)
                    for i, (r, s) in enumerate(zip(ref[field], run[field], strict=True))
                },
                "total": round(sum(ref[field]) / sum(run[field]), 2),
            }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="training sentences")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="training seed (init, order, dropout)")
    parser.add_argument("--sample-seed", type=int, default=0, help="which training sentences")
    parser.add_argument(
        "--more-seeds",
        type=int,
        nargs="*",
        default=[],
        help="instead of the main run: train --settings again with these seeds (same "
        "sentences) and add their dev accuracy to the existing --output",
    )
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.txt, dev.txt")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def more_seeds(args: argparse.Namespace, stamp: RunStamp) -> None:
    """Dev accuracy of ``args.settings`` at more training seeds, added to the report: is
    a gap between settings larger than what the seed alone moves?"""
    report = json.loads(args.output.read_text())
    extra = report.setdefault("more_seeds", {"runs": {}})
    for seed in args.more_seeds:
        args.seed = seed
        for name in args.settings:
            run = run_setting(args, SETTINGS[name])
            extra["runs"][f"{name}@seed{seed}"] = run
            print(f"[{name} seed {seed}] dev accuracy {run['dev_accuracy']:.4f}", flush=True)
    by_seed: dict[str, dict[str, float]] = {}
    for name, run in report["runs"].items():
        by_seed.setdefault(name, {})[str(report["conditions"]["seed"])] = run["dev_accuracy"]
    for key, run in extra["runs"].items():
        name, _, seed = key.partition("@seed")
        by_seed.setdefault(name, {})[seed] = run["dev_accuracy"]
    extra["dev_accuracy_by_seed"] = by_seed
    extra["dev_accuracy_mean"] = {
        name: round(float(np.mean(list(accs.values()))), 4) for name, accs in by_seed.items()
    }
    extra["seeds_per_setting"] = {name: len(accs) for name, accs in by_seed.items()}
    extra["stamp"] = stamp.header()
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"updated {args.output}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = RunStamp("prefix_cache")
    set_threads(args.threads)
    if args.more_seeds:
        more_seeds(args, stamp)
        return
    measured_before = source_version(MEASURED)
    runs: dict[str, dict[str, Any]] = {}
    for name in args.settings:
        runs[name] = run_setting(args, SETTINGS[name])
        r = runs[name]
        print(
            f"[{name}] epochs {r['epoch_seconds']} s ({r['epoch_cpu_seconds']} s CPU), "
            f"dev accuracy {r['dev_accuracy']:.4f}, "
            f"cache {r['cache_mib']} MiB",
            flush=True,
        )
    speedups(runs)
    report = {
        **stamp.header(),
        "measured_source_before": measured_before,
        "measured_source_after": source_version(MEASURED),
        "conditions": {
            "model": "minilm (all-MiniLM-L6-v2, 6 blocks, hidden 384)",
            "data": "SST-2 (GLUE sentences, ../shared/data/sst2)",
            "train_examples": args.examples,
            "train_sample": f"seeded sample (numpy default_rng({args.sample_seed})) of train.txt",
            "epochs": args.epochs,
            "dev_examples": "all of dev.txt (872)",
            "lora": "r 8, alpha 16, query/key/value; head: classifier + pooler trained in full",
            "batch_size": 16,
            "max_length": 64,
            "optimizer": "AdamW lr 1e-3, constant, no warm-up, no weight decay, clip 1.0",
            "seed": args.seed,
            "torch_threads": args.threads,
            "cache": "fp32 unless named fp16; keys: index in the whole train split; cap 1024 MiB",
            "timing": (
                "wall and process CPU seconds of each epoch inside train_local (on_step "
                "marks); speed-ups in CPU seconds, the machine being shared"
            ),
        },
        "command": " ".join([sys.executable, *sys.argv]),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
