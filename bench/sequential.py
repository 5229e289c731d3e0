"""Where federated accuracy goes: fresh client optimizers, or averaging in parallel?

Usage::

    FEDPEFT_CACHE=/tmp/fpcache python bench/sequential.py                  # lr 1e-3
    FEDPEFT_CACHE=/tmp/fpcache python bench/sequential.py --lr 4e-3 --examples 7607

Every federated client starts a fresh AdamW each round and takes a handful of steps
(one epoch of a ~69-sentence shard at batch 16: ~5 steps). Two explanations for the gap
between the federation and centralized training at the same examples seen:

1. the fresh optimizer state (Adam's first steps are sign-like and equally large on every
   coordinate), or
2. averaging: ten clients step in parallel from the same adapter, so ten rounds are ten
   averaged steps of five, against hundreds of sequential steps centrally.

This runs, on the same SST-2 examples in the same order (MiniLM, the package's default
head: classifier + pooler; constant lr, the federated clients' schedule):

* ``sequential``: a federation of one IID client per round — AdamW restarted every
  ``--chunk`` steps (default 5), each chunk continuing from the last; no averaging;
* ``central``: one AdamW over all of them, never restarted.

If ``sequential`` keeps up with ``central``, fresh client optimizers cost nothing and what
the federation loses is the averaging. Results: ``bench/results/sequential.json``, with
SST-2 dev accuracy every fifth of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchinfo import machine_info, source_version  # type: ignore[import-not-found]

from fedpeft.config import JobConfig
from fedpeft.training.encode import EncodedData, encode
from fedpeft.training.loop import evaluate, train_local
from fedpeft.training.setup import build_adapted_model, load_job_data, set_threads

BENCH = Path(__file__).resolve().parent
DEFAULT_DATA = BENCH.parents[1] / "shared" / "data"


def run(args: argparse.Namespace, chunk_steps: int | None) -> dict[str, Any]:
    """Train on ``args.examples`` examples, AdamW restarted every ``chunk_steps`` steps
    (``None``: never); evaluate five times along the way."""
    cfg = JobConfig().replace(
        {
            "model.name": "minilm",
            "data.train": str(args.data_dir / "sst2" / "train.txt"),
            "data.eval": str(args.data_dir / "sst2" / "dev.txt"),
            "data.max_length": 64,
            "lora.modules_to_save": ["classifier", "pooler"],
            "train.lr": args.lr,
            "train.schedule": "constant",
            "train.epochs": 1.0,
            "train.threads": 1,
            "train.seed": args.seed,
            "output": "/tmp/fedpeft-bench-sequential",
        }
    )
    set_threads(1)
    data = load_job_data(cfg)
    adapted = build_adapted_model(cfg, data.task, data.label_names)
    train: EncodedData = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    assert data.eval is not None  # data.eval is set above
    dev = encode(adapted.tokenizer, data.eval, cfg.data.max_length)
    rng = np.random.default_rng(args.seed)
    passes = args.examples // len(train) + 1
    order = np.concatenate([rng.permutation(len(train)) for _ in range(passes)])[: args.examples]
    batch = cfg.train.batch_size
    targets = [round(args.examples * i / 5) for i in range(1, 6)]
    curve: list[dict[str, float]] = []

    def maybe_evaluate(done: int) -> None:
        if len(curve) < len(targets) and done >= targets[len(curve)]:
            acc = evaluate(adapted.model, dev, cfg.train.eval_batch_size)["eval_accuracy"]
            adapted.model.train()
            curve.append({"examples": done, "eval_accuracy": acc})
            print(f"  {done:6d} examples  accuracy {acc:.4f}", flush=True)

    start = time.perf_counter()
    if chunk_steps is None:  # one optimizer for the whole run
        train_local(
            adapted.model,
            train.subset(order),
            cfg.train,
            seed=args.seed,
            on_step=lambda step, total, loss: maybe_evaluate(min(step * batch, args.examples)),
        )
    else:  # a fresh optimizer every chunk_steps steps, each chunk from where the last ended
        per_chunk = chunk_steps * batch
        for i, lo in enumerate(range(0, args.examples, per_chunk)):
            piece = order[lo : lo + per_chunk]
            train_local(adapted.model, train.subset(piece), cfg.train, seed=args.seed * 100_003 + i)
            maybe_evaluate(lo + len(piece))
    return {
        "optimizer_restart_every_steps": chunk_steps,
        "final_eval_accuracy": curve[-1]["eval_accuracy"],
        "curve": curve,
        "wall_seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--chunk", type=int, default=5, help="steps between optimizer restarts")
    parser.add_argument("--examples", type=int, default=7607, help="examples seen (10 rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", default="sequential,central")
    parser.add_argument("--output", type=Path, default=BENCH / "results" / "sequential.json")
    args = parser.parse_args(argv)
    if not (args.data_dir / "sst2" / "train.txt").is_file():
        raise SystemExit(f"SST-2 not found under {args.data_dir} (see ../shared/data/README.md)")
    report: dict[str, Any] = {"benchmark": "sequential", "runs": {}}
    if args.output.is_file():
        report = json.loads(args.output.read_text())
    for name in args.runs.split(","):
        print(f"[{name}] lr {args.lr}, {args.examples} examples", flush=True)
        result = run(args, args.chunk if name == "sequential" else None)
        key = f"{name}[lr={args.lr},examples={args.examples},seed={args.seed}]"
        report["runs"][key] = {**result, "command": " ".join(["python", *sys.argv])}
        report.update({"machine": machine_info(), "source": source_version()})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    for key, r in report["runs"].items():
        print(f"{r['final_eval_accuracy']:.4f}  {key}")


if __name__ == "__main__":
    main()
