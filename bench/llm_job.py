"""The LLM job measured (issue 28): federated instruction tuning of SmolLM2-135M-Instruct
+ LoRA on Alpaca, against the base model and centralized LoRA on the same examples.

Usage::

    python bench/llm_job.py                     # -> bench/results/llm_job.json + .png

The job (every row alike unless its name says otherwise):

* data ``../shared/data/alpaca/alpaca_5000.json``; the split is fedpeft's own rule for
  instruction data without ``--eval-data`` (``data.holdout`` = 0.1, seed 0:
  ``numpy.random.default_rng(0).permutation(5000)[:500]`` held out, the other 4,500
  train; ``fedpeft.training.setup.holdout_split``);
* SmolLM2-135M-Instruct, LoRA r = 8 on q/k/v/o (the architecture table), 256 tokens,
  batch 8, AdamW lr 1e-3 (fedpeft's causal-LM defaults);
* ``--clients`` 20, ``--per-round`` 5, ``--rounds`` R, ``--local-steps`` S;
* held-out response perplexity on ``--eval-examples`` (all 500 by default) every round
  and at round 0; ROUGE-L F1 (Google's ``rouge-score``, greedy, ``--max-new-tokens``) on
  the first ``--rouge-examples`` held-out prompts of the final adapter of every row and
  of the base model (per round too, where the client app passes ``train.eval_rouge_*``
  to its evaluation).

Rows:

* ``base`` — the backbone with a fresh (zero) LoRA: round 0;
* ``centralized`` — ``fedpeft train``'s loop on the 4,500 training examples for
  R x per-round x S steps of batch 8: the same number of examples seen as a federation;
* ``federated_iid`` / ``federated_cluster`` — ``fedpeft simulate`` with ``--partition
  iid`` and ``cluster`` (k-means over MiniLM embeddings, 8 clusters, Dirichlet(0.5));
* ``federated_cluster_compeft_chain`` — cluster + ``--codec compeft`` (density 0.1) and
  the chain downlink: bytes up and down.

A Flower row (FlowerTune-style app) is not measured here yet.

Time: 250 SmolLM2 steps of 8 x 256 tokens per trained row at the defaults (R = 5, S = 10,
20 clients, 5 per round, 500-example evaluation, 100 ROUGE prompts at 64 new tokens). A
step took ~2 minutes on 2 cores shared at load 10 (a federated client's 8 steps: 940 s);
extrapolated to a quiet machine (~15-20 s a step) the defaults take 5-7 hours, so the run
that fits a session is ``--rounds 3 --local-steps 5 --eval-examples 200`` (75 steps a row,
about 2-3 hours, an estimate, not a measurement). The smallest check (21 minutes at load
10)::

    python bench/llm_job.py --rounds 1 --local-steps 1 --clients 4 --per-round 2 \\
        --eval-examples 8 --rouge-examples 2 --max-new-tokens 8 --rows base,federated_iid \\
        --output /tmp/llm_job_check.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DATA = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"
sys.path.insert(0, str(REPO / "bench"))

from benchinfo import RunStamp, command_line  # noqa: E402

ROWS = (
    "base",
    "centralized",
    "federated_iid",
    "federated_cluster",
    "federated_cluster_compeft_chain",
)


def job_settings(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return {
        "model.name": "smollm2-135m",
        "model.device": "cpu",
        "data.train": str(DATA),
        "data.max_eval_examples": args.eval_examples,
        "data.max_length": 256,
        "lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "train.batch_size": 8,
        "train.eval_batch_size": 16,
        "train.lr": 1e-3,
        "train.schedule": "constant",
        "train.max_steps": args.local_steps,
        "train.seed": args.seed,
        "train.threads": args.threads,
        "federation.clients": args.clients,
        "federation.clients_per_round": args.per_round,
        "federation.rounds": args.rounds,
        "federation.alpha": 0.5,
        "data.clusters": 8,
        "output": str(out),
    }


def rouge_of(adapter_source: Path | None, cfg: Any, args: argparse.Namespace) -> float | None:
    """ROUGE-L (points) of an exported adapter (None: the base model) on the first
    ``--rouge-examples`` held-out prompts."""
    if args.rouge_examples <= 0:
        return None
    from fedpeft.models import Task, load_backbone, load_tokenizer, resolve_model_path
    from fedpeft.training.encode import encode
    from fedpeft.training.generate import Generation, load_for_generation
    from fedpeft.training.loop import evaluate
    from fedpeft.training.setup import load_job_data

    data = load_job_data(cfg)
    assert data.eval is not None
    if adapter_source is None:
        path = resolve_model_path(cfg.model.name)
        model, tokenizer = load_backbone(path, Task.CAUSAL_LM), load_tokenizer(path)
    else:
        model, tokenizer, _ = load_for_generation(adapter_source)
    rouge_set = data.eval.subset(range(min(args.rouge_examples, len(data.eval))))
    enc = encode(tokenizer, rouge_set, cfg.data.max_length)
    gen = Generation(tokenizer, args.rouge_examples, args.max_new_tokens, batch_size=16)
    return evaluate(model, enc, 16, generation=gen).get("eval_rouge_l")


def federated(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fedpeft.config import JobConfig
    from fedpeft.simulation import run_simulation

    out = work / name
    settings = job_settings(args, out)
    settings["federation.partition"] = "iid" if name == "federated_iid" else "cluster"
    if name.endswith("compeft_chain"):
        settings.update({"codec.name": "compeft", "codec.downlink": "chain"})
    cfg = JobConfig().replace(settings)
    start = time.perf_counter()
    summary = run_simulation(cfg)
    wall = time.perf_counter() - start
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    per_round = [
        {
            k: r.get(k)
            for k in (
                "round",
                "eval_perplexity",
                "eval_rouge_l",
                "train_loss",
                "bytes_up",
                "bytes_down",
                "round_seconds",
            )
            if k in r
        }
        for r in records
    ]
    return {
        "row": name,
        "initial_eval_perplexity": summary.get("initial_eval_perplexity"),
        "eval_perplexity": summary.get("final_eval_perplexity"),
        "rouge_l": rouge_of(out / "adapter", cfg, args),
        "bytes_up": summary["bytes_up"],
        "bytes_down": summary["bytes_down"],
        "wall_seconds": wall,
        "examples_seen": args.rounds * args.per_round * args.local_steps * 8,
        "per_round": per_round,
        "partition": json.loads((out / "meta.json").read_text()).get("partition", {}).get("sizes"),
    }


def centralized(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fedpeft.config import JobConfig
    from fedpeft.training.central import run_central

    out = work / "centralized"
    settings = job_settings(args, out)
    steps = args.rounds * args.per_round * args.local_steps
    settings["train.max_steps"] = steps
    cfg = JobConfig().replace(settings)
    start = time.perf_counter()
    record = run_central(cfg)
    wall = time.perf_counter() - start
    return {
        "row": "centralized",
        "initial_eval_perplexity": record.get("initial_eval_perplexity"),
        "eval_perplexity": record.get("eval_perplexity"),
        "rouge_l": rouge_of(out / "adapter", cfg, args),
        "wall_seconds": wall,
        "examples_seen": record["examples_seen"],
        "steps": steps,
    }


def base(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fedpeft.config import JobConfig
    from fedpeft.training.central import run_central

    # the backbone with LoRA at its zero init is the base model: evaluated, never trained
    # (run_central's initial evaluation; one step is taken and discarded)
    cfg = JobConfig().replace({**job_settings(args, work / "base"), "train.max_steps": 1})
    record = run_central(cfg)
    return {
        "row": "base",
        "eval_perplexity": record.get("initial_eval_perplexity"),
        "rouge_l": rouge_of(None, cfg, args),
    }


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        if "per_round" in row:
            pts = [(0, row["initial_eval_perplexity"])] + [
                (r["round"], r["eval_perplexity"])
                for r in row["per_round"]
                if r.get("eval_perplexity") is not None
            ]
            ax.plot(*zip(*pts, strict=True), marker="o", label=row["row"])
        elif row.get("eval_perplexity") is not None:
            ax.axhline(row["eval_perplexity"], linestyle="--", label=row["row"])
    ax.set_xlabel("round")
    ax.set_ylabel("held-out response perplexity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--eval-examples", type=int, default=500)
    p.add_argument("--rouge-examples", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {ROWS}")
    p.add_argument("--output", type=Path, default=RESULTS / "llm_job.json")
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    if not DATA.is_file():
        p.error(f"{DATA} not found (the shared Alpaca file)")
    stamp = RunStamp("llm_job")
    work = Path(tempfile.mkdtemp(prefix="llm_job-"))
    results: list[dict[str, Any]] = []
    try:
        for row in rows:
            print(f"[llm_job] {row} ...", flush=True)
            if row == "base":
                results.append(base(args, work))
            elif row == "centralized":
                results.append(centralized(args, work))
            else:
                results.append(federated(row, args, work))
            print(f"[llm_job] {row}: {json.dumps(results[-1].get('eval_perplexity'))}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        **stamp.header(),
        "command": command_line(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "split": "data.holdout 0.1 of alpaca_5000.json, seed 0: 4,500 train / 500 held out",
        "rows": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.output.with_suffix(".png"))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
