"""Centralized LoRA baselines: accuracy, local step time, and SmolLM2 perplexity.

Usage::

    FEDPEFT_CACHE=/tmp/fpcache python bench/centralized.py                  # all parts
    FEDPEFT_CACHE=/tmp/fpcache python bench/centralized.py --part accuracy --reuse
    FEDPEFT_CACHE=/tmp/fpcache python bench/centralized.py --part steptime --threads 1
    FEDPEFT_CACHE=/tmp/fpcache python bench/centralized.py --part smollm

Three parts, each writing its own section of ``bench/results/centralized.json`` (the
file is merged, so parts can run separately):

``accuracy``
    MiniLM + LoRA (the package's default LoRA settings) trained centrally through
    :func:`fedpeft.training.central.run_central` on SST-2 train (eval: SST-2 dev) and on
    TREC train (eval: TREC test). Targets: >= 0.85 and >= 0.92 accuracy. Each dataset
    starts from the package defaults (lr 1e-3, 1 epoch, batch 16, max_length 64); while
    the target is missed, the next configuration of a short fixed list is tried, within
    a CPU-time budget. Every configuration tried is recorded, not only the best. Token
    lengths are measured first (they decide whether max_length 64 truncates anything),
    and a frozen-encoder reference (mean-pooled MiniLM embeddings + L2 logistic
    regression, no fine-tuning) is computed for both datasets.

``steptime``
    One local optimizer step in fedpeft's loop (``train_local`` with ``max_steps``)
    against a bare peft + torch loop on the *same* model object and the *same* batch
    (16 x 64 tokens from SST-2: the 16 longest training sentences, truncated at 64), in
    the same process, interleaved (one repetition of every variant per round, the order
    alternating between rounds), with and without gradient clipping. Reported: medians
    of the per-step time of each variant, the ratio fedpeft / bare of the medians and the
    median of the per-round paired ratios (goal <= 1.05), and the loop-only work
    (collation, scheduler, per-call setup) timed alone, which bounds the overhead when
    a shared machine makes the end-to-end numbers noisy.

``smollm``
    SmolLM2-135M-Instruct + LoRA on the first 200 Alpaca examples; held-out perplexity
    on the next 100 (written to a temporary Alpaca-format JSON file) before and after.

Timings on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import fedpeft  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fedpeft.config import JobConfig, TrainConfig
from fedpeft.models import load_tokenizer, resolve_model_path
from fedpeft.training import EncodedData, encode, train_local
from fedpeft.training.central import run_central
from fedpeft.training.setup import build_adapted_model, load_job_data, set_threads

PARTS = ("accuracy", "steptime", "smollm")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "centralized.json"
# ../shared/data relative to the project root (see shared/data/README.md)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Candidate settings per dataset, tried in order (cheapest first) while the target is
# missed. The first entry is always the package defaults. max_length stays 64: the
# token-length survey (recorded in the JSON) shows it truncates < 0.1% of SST-2 and
# nothing of TREC.
ACCURACY_TASKS: dict[str, dict[str, Any]] = {
    "sst2": {
        "train": "sst2/train.txt",
        "eval": "sst2/dev.txt",
        "eval_split": "dev",
        "target": 0.85,
        "candidates": [
            {},
            {"train.lr": 2e-3},
            {"train.epochs": 2.0},
            {"train.lr": 2e-3, "train.epochs": 2.0},
        ],
    },
    "trec": {
        "train": "trec/train.txt",
        "eval": "trec/test.txt",
        "eval_split": "test",
        "target": 0.92,
        "candidates": [
            {},
            {"train.lr": 2e-3},
            {"train.epochs": 2.0},
            {"train.lr": 2e-3, "train.epochs": 3.0},
        ],
    },
}


# Findings written after the runs (what limits accuracy, when a target is missed).
NOTES: dict[str, str] = {
    "sst2": "The package defaults (lr 1e-3, 1 epoch) reach 0.8486 on SST-2 dev, two "
    "sentences short of the 0.85 target (740 of 872 right, 742 needed); lr 2e-3 with "
    "everything else default reaches 0.857 and meets it. max_length 64 truncates 6 of "
    "6,920 training sentences (0.09%) and no dev sentence, so a longer max_length was "
    "not tried. Frozen mean-pooled all-MiniLM-L6-v2 embeddings + logistic regression "
    "reach only ~0.81 here (vs ~0.91 on TREC): this 6-layer, 384-wide sentence-similarity "
    "encoder carries less sentiment than question-type information, so SST-2 needs the "
    "adapter to move further and sits close to the target at 1 epoch.",
    "trec": "The package defaults meet the target with room (0.960 vs 0.92; frozen "
    "embeddings + logistic regression: ~0.914). Macro-F1 (0.939) sits below accuracy: "
    "label 2 (ABBR in TREC-6 order) has only 9 test and 86 training examples, so each "
    "error on it costs macro-F1 about one point.",
}


# --------------------------------------------------------------------------- helpers


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def read_report(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def merge_section(path: Path, name: str, section: dict[str, Any]) -> None:
    """Replace one section of the results file, keeping the others."""
    report = read_report(path)
    report[name] = section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def section_header(args: argparse.Namespace) -> dict[str, Any]:
    from benchinfo import command_line  # bench/ is the script's folder

    return {
        "started": now(),
        "command": command_line(),
        "machine": machine_info(),
        "threads_requested": args.threads,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- accuracy


def token_lengths(tokenizer: Any, path: Path) -> dict[str, Any]:
    """Length survey of one labeled-lines file under the model's tokenizer."""
    from fedpeft.data import load_dataset

    data = load_dataset(str(path))
    lengths = sorted(len(x) for x in tokenizer(list(data.texts))["input_ids"])
    n = len(lengths)
    return {
        "examples": n,
        "median": lengths[n // 2],
        "p95": lengths[min(n - 1, int(0.95 * n))],
        "max": lengths[-1],
        "frac_over_64": sum(x > 64 for x in lengths) / n,
    }


@torch.no_grad()
def mean_pooled(model: Any, enc: EncodedData, batch_size: int = 128) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: masked mean, L2-normalised."""
    out = []
    for start in range(0, len(enc), batch_size):
        batch = enc.batch(range(start, min(len(enc), start + batch_size)))
        hidden = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def logistic_regression(
    x: torch.Tensor, y: torch.Tensor, classes: int, c: float = 1.0
) -> torch.nn.Linear:
    """Multinomial logistic regression, L2 penalty ||W||²/(2C) on the summed loss (sklearn's)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y, reduction="sum")
        loss = loss + head.weight.pow(2).sum() / (2 * c)
        loss.backward()
        return loss

    opt.step(closure)
    return head


def frozen_reference(data_dir: Path, task: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of a linear classifier on frozen mean-pooled MiniLM embeddings."""
    from transformers import AutoModel

    from fedpeft.data import load_dataset

    start = time.perf_counter()
    path = resolve_model_path("minilm")
    tokenizer = load_tokenizer(path)
    encoder = AutoModel.from_pretrained(path).eval()
    train = load_dataset(str(data_dir / task["train"]))
    test = load_dataset(str(data_dir / task["eval"]), label_names=train.label_names)
    x_train = mean_pooled(encoder, encode(tokenizer, train, 64))
    x_test = mean_pooled(encoder, encode(tokenizer, test, 64))
    y_train = torch.tensor(train.labels)
    y_test = torch.tensor(test.labels)
    rows = []
    for c in (1.0, 10.0, 100.0):  # reported for all C: no selection on the test set
        head = logistic_regression(x_train, y_train, len(train.label_names), c)
        with torch.no_grad():
            acc_test = float((head(x_test).argmax(-1) == y_test).float().mean())
            acc_train = float((head(x_train).argmax(-1) == y_train).float().mean())
        rows.append({"C": c, "eval_accuracy": acc_test, "train_accuracy": acc_train})
    return {
        "method": "frozen all-MiniLM-L6-v2, masked mean pooling, L2-normalised, "
        "multinomial logistic regression (LBFGS), max_length 64",
        "results": rows,
        "seconds": time.perf_counter() - start,
    }


def run_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults for every dataset first, then further candidates while the budget lasts.

    The budget is shared: a dataset that meets its target with the defaults leaves its
    time to the others. A candidate runs only when its predicted time (seconds per epoch
    measured on that dataset so far x epochs) still fits. With ``--reuse``, rows already
    in the results file for the same dataset and overrides are kept instead of re-run
    (marked ``"reused": true``; their time still counts against the budget).
    """
    section = section_header(args)
    names = args.datasets or list(ACCURACY_TASKS)
    budget_s = args.accuracy_budget_min * 60
    tokenizer = load_tokenizer(resolve_model_path("minilm"))
    section["token_lengths"] = {
        name: {
            split: token_lengths(tokenizer, args.data_dir / ACCURACY_TASKS[name][split])
            for split in ("train", "eval")
        }
        for name in names
    }
    previous_section = read_report(args.output).get("accuracy", {})
    previous = previous_section.get("datasets", {})
    tried: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    per_epoch: dict[str, float] = {name: 0.0 for name in names}
    spent = 0.0

    def best(name: str) -> dict[str, Any] | None:
        rows = [r for r in tried[name] if "eval_accuracy" in r]
        return max(rows, key=lambda r: r["eval_accuracy"], default=None)

    def met(name: str) -> bool:
        row = best(name)
        return row is not None and row["eval_accuracy"] >= ACCURACY_TASKS[name]["target"]

    runs_root = Path(tempfile.mkdtemp(prefix="fedpeft-bench-central-"))
    try:
        rounds = max(len(ACCURACY_TASKS[n]["candidates"]) for n in names)
        for i in range(rounds):  # round 0: the defaults of every dataset
            for name in names:
                candidates = ACCURACY_TASKS[name]["candidates"]
                if i >= len(candidates) or met(name):
                    continue
                overrides = candidates[i]
                predicted = per_epoch[name] * float(overrides.get("train.epochs", 1.0))
                if i > 0 and spent + predicted > budget_s:
                    tried[name].append(
                        {
                            "overrides": overrides,
                            "skipped": f"predicted {predicted:.0f} s would exceed the "
                            f"{budget_s:.0f} s CPU budget ({spent:.0f} s spent)",
                        }
                    )
                    print(f"  {name:5s} {overrides} skipped (budget)", flush=True)
                    continue
                row = reusable(previous, name, overrides) if args.reuse else None
                if row is None:
                    output = runs_root / f"{name}_{i}"
                    row = accuracy_run(args, name, ACCURACY_TASKS[name], overrides, output)
                elif "measured_at" not in row:
                    row["measured_at"] = previous_section.get("started")
                spent += row["total_seconds"]
                per_epoch[name] = max(per_epoch[name], row["total_seconds"] / row["epochs"])
                tried[name].append(row)
                print(
                    f"  {name:5s} lr={row['lr']:.0e} epochs={row['epochs']:g} "
                    f"acc={row['eval_accuracy']:.4f} f1={row['eval_macro_f1']:.4f} "
                    f"({row['total_seconds']:.0f} s{', reused' if row.get('reused') else ''})",
                    flush=True,
                )
    finally:
        shutil.rmtree(runs_root, ignore_errors=True)

    datasets: dict[str, Any] = {k: v for k, v in previous.items() if k not in names}
    for name in names:
        task = ACCURACY_TASKS[name]
        old_reference = previous.get(name, {}).get("frozen_reference")
        if args.reuse and old_reference:
            reference = old_reference
        else:
            print(f"  {name}: frozen-encoder reference ...", flush=True)
            reference = frozen_reference(args.data_dir, task)
        top = best(name)
        datasets[name] = {
            "train": task["train"],
            "eval": task["eval"],
            "eval_split": task["eval_split"],
            "target_accuracy": task["target"],
            "target_met": met(name),
            "best_accuracy": top["eval_accuracy"] if top else None,
            "best_overrides": top["overrides"] if top else None,
            "tried": tried[name],
            "frozen_reference": reference,
            "notes": NOTES.get(name, ""),
        }
    section["datasets"] = datasets
    section["lora"] = dataclasses.asdict(JobConfig().lora)
    section["cpu_budget_minutes"] = args.accuracy_budget_min
    section["fine_tuning_seconds_total"] = spent
    section["finished"] = now()
    return section


def reusable(
    previous: dict[str, Any], name: str, overrides: dict[str, Any]
) -> dict[str, Any] | None:
    """A row measured earlier for the same dataset and overrides, if any."""
    for row in previous.get(name, {}).get("tried", []):
        if row.get("overrides") == overrides and "eval_accuracy" in row:
            return {**row, "reused": True}
    return None


def accuracy_run(
    args: argparse.Namespace,
    name: str,
    task: dict[str, Any],
    overrides: dict[str, Any],
    output: Path,
) -> dict[str, Any]:
    cfg = JobConfig().replace(
        {
            "model.name": "minilm",
            "data.train": str(args.data_dir / task["train"]),
            "data.eval": str(args.data_dir / task["eval"]),
            "train.threads": args.threads,
            "output": str(output),
            **overrides,
        }
    )
    start = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            elapsed = time.perf_counter() - start
            print(f"    {name} step {step}/{total} loss {loss:.4f} ({elapsed:.0f} s)", flush=True)

    metrics = run_central(cfg, on_step=progress, log_every=10_000)
    total = time.perf_counter() - start
    return {
        "overrides": overrides,
        "measured_at": now(),
        "threads": torch.get_num_threads(),
        "lr": cfg.train.lr,
        "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size,
        "max_length": cfg.data.max_length,
        "schedule": cfg.train.schedule,
        "warmup_ratio": cfg.train.warmup_ratio,
        "steps": metrics["step"],
        "eval_accuracy": metrics["eval_accuracy"],
        "eval_macro_f1": metrics["eval_macro_f1"],
        "eval_loss": metrics["eval_loss"],
        "train_loss": metrics["train_loss"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": metrics["wall_seconds"],  # run_central: train + eval
        "total_seconds": total,  # + model load and tokenisation
        "target_met": metrics["eval_accuracy"] >= task["target"],
    }


# --------------------------------------------------------------------------- step time


def run_steptime(args: argparse.Namespace) -> dict[str, Any]:
    section = section_header(args)
    set_threads(args.threads)
    cfg = JobConfig().replace(
        {
            "model.name": "minilm",
            "model.device": "cpu",
            "data.train": str(args.data_dir / "sst2/train.txt"),
            "data.max_length": 64,
        }
    )
    data = load_job_data(cfg)
    adapted = build_adapted_model(cfg, data.task, data.label_names)
    model = adapted.model
    enc = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    # The 16 longest sentences (truncated at 64 tokens): every batch is exactly 16 x 64.
    longest = sorted(range(len(enc)), key=lambda i: -len(enc.input_ids[i]))[:16]
    subset = enc.subset(longest)
    batch = subset.batch(range(len(subset)))
    shape = list(batch["input_ids"].shape)
    steps = args.steps
    params = [p for p in model.parameters() if p.requires_grad]

    def fedpeft_loop(clip: bool) -> Callable[[int], float]:
        def run(n: int) -> float:
            train_cfg = TrainConfig(
                epochs=float(n),  # 16 examples, batch 16: one step per epoch
                max_steps=n,
                batch_size=16,
                lr=1e-3,
                warmup_ratio=0.0,
                schedule="constant",
                max_grad_norm=1.0 if clip else None,
            )
            start = time.perf_counter()
            stats = train_local(model, subset, train_cfg, seed=0)
            elapsed = time.perf_counter() - start
            if stats.steps != n:
                raise RuntimeError(f"train_local ran {stats.steps} steps, expected {n}")
            return elapsed / n

        return run

    def bare_loop(clip: bool) -> Callable[[int], float]:
        def run(n: int) -> float:
            start = time.perf_counter()
            optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
            model.train()
            for _ in range(n):
                loss = model(**batch).loss
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
            return (time.perf_counter() - start) / n

        return run

    variants = {
        "fedpeft": fedpeft_loop(False),
        "bare": bare_loop(False),
        "fedpeft_clip": fedpeft_loop(True),
        "bare_clip": bare_loop(True),
    }
    for run in variants.values():  # warm-up: allocator, kernels, optimizer state paths
        run(args.warmup_steps)
    per_step: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for rep in range(args.reps):
        for key in order if rep % 2 == 0 else order[::-1]:
            per_step[key].append(variants[key](steps))
        print(
            f"  rep {rep + 1}/{args.reps}: "
            + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in per_step.items()),
            flush=True,
        )
    medians = {k: statistics.median(v) for k, v in per_step.items()}
    overhead = loop_overhead(subset, args.threads)

    def paired(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(per_step[a], per_step[b], strict=True)]

    section.update(
        {
            "model": "minilm (all-MiniLM-L6-v2) + LoRA, package defaults",
            "batch_shape": shape,
            "trainable_parameters": sum(p.numel() for p in params),
            "reps": args.reps,
            "steps_per_rep": steps,
            "warmup_steps": args.warmup_steps,
            "order": "each rep runs every variant once; order reversed on odd reps",
            "timing": "wall time of a whole train_local call (or bare loop incl. AdamW "
            "construction) / steps, so fedpeft's per-call setup is included",
            "per_step_seconds": per_step,
            "median_step_seconds": medians,
            "ratio_fedpeft_over_bare": medians["fedpeft"] / medians["bare"],
            "ratio_fedpeft_over_bare_clip": medians["fedpeft_clip"] / medians["bare_clip"],
            "median_paired_ratio": statistics.median(paired("fedpeft", "bare")),
            "median_paired_ratio_clip": statistics.median(paired("fedpeft_clip", "bare_clip")),
            "paired_ratio_quartiles": statistics.quantiles(paired("fedpeft", "bare"), n=4),
            "paired_ratio_quartiles_clip": statistics.quantiles(
                paired("fedpeft_clip", "bare_clip"), n=4
            ),
            "loop_overhead_seconds": overhead,
            "loop_overhead_fraction_of_bare_step": {
                k: v / medians["bare"] for k, v in overhead.items()
            },
            "clipping_cost_ratio_fedpeft": medians["fedpeft_clip"] / medians["fedpeft"],
            "goal_ratio": 1.05,
            "finished": now(),
        }
    )
    return section


def loop_overhead(subset: EncodedData, threads: int | None, n: int = 200) -> dict[str, float]:
    """What fedpeft's loop does per step beyond the bare loop, timed alone (no model).

    Shuffling and collating the 16 examples (``EncodedData.batches``) and the LR
    scheduler step; the bare loop reuses one prepared batch and has no scheduler.
    These are deterministic and tiny, so they bound the true ratio where the noisy
    end-to-end medians cannot.
    """
    set_threads(threads)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(n):
        for batch in subset.batches(16, generator=generator):
            batch = {k: v.to("cpu") for k, v in batch.items()}
    collate = (time.perf_counter() - start) / n
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    start = time.perf_counter()
    for _ in range(n):
        scheduler.step()
    sched = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n // 10):  # per-call setup, amortised over --steps steps
        params = [torch.nn.Parameter(torch.zeros(300_000))]
        opt = torch.optim.AdamW(params, lr=1e-3)
        torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    setup = (time.perf_counter() - start) / (n // 10)
    return {"collate_per_step": collate, "scheduler_per_step": sched, "setup_per_call": setup}


# --------------------------------------------------------------------------- SmolLM2


def run_smollm(args: argparse.Namespace) -> dict[str, Any]:
    section = section_header(args)
    alpaca = args.data_dir / "alpaca" / "alpaca_5000.json"
    records = json.loads(alpaca.read_text(encoding="utf-8"))
    n_train, n_heldout = 200, 100
    tmp = Path(tempfile.mkdtemp(prefix="fedpeft-bench-smollm-"))
    try:
        heldout = tmp / "alpaca_heldout.json"
        heldout.write_text(json.dumps(records[n_train : n_train + n_heldout]), encoding="utf-8")
        cfg = JobConfig().replace(
            {
                "model.name": "smollm2-135m",
                "data.train": str(alpaca),
                "data.max_train_examples": n_train,
                "data.eval": str(heldout),
                "data.max_length": 256,
                "train.batch_size": 8,
                "train.eval_batch_size": 8,
                "train.epochs": args.smollm_epochs,
                "train.lr": args.smollm_lr,
                "train.threads": args.threads,
                "output": str(tmp / "run"),
            }
        )
        start = time.perf_counter()

        def progress(step: int, total: int, loss: float) -> None:
            elapsed = time.perf_counter() - start
            print(f"    step {step}/{total} loss {loss:.4f} ({elapsed:.0f} s)", flush=True)

        metrics = run_central(cfg, on_step=progress, log_every=5)
        total = time.perf_counter() - start
        curve = [
            json.loads(line)
            for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()
            if line.strip()
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    section.update(
        {
            "model": "smollm2-135m (SmolLM2-135M-Instruct, GGUF dequantised) + LoRA defaults",
            "train_examples": f"alpaca_5000.json[0:{n_train}]",
            "heldout_examples": f"alpaca_5000.json[{n_train}:{n_train + n_heldout}]",
            "max_length": cfg.data.max_length,
            "batch_size": cfg.train.batch_size,
            "epochs": cfg.train.epochs,
            "lr": cfg.train.lr,
            "lr_reason": "1e-3 (the package default): 200 examples at batch 8 give only "
            "25 optimizer steps per epoch, and LoRA's B starts at zero, so 2e-4 (a "
            "full-data recipe for ~thousands of steps) would barely move the adapter",
            "steps": metrics["step"],
            "initial_eval_perplexity": metrics["initial_eval_perplexity"],
            "eval_perplexity": metrics["eval_perplexity"],
            "initial_eval_loss": metrics["initial_eval_loss"],
            "eval_loss": metrics["eval_loss"],
            "train_loss": metrics["train_loss"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": metrics["wall_seconds"],
            "total_seconds": total,
            "peak_rss_mb": peak_rss_mb(),
            "train_loss_curve": [
                {"step": r["step"], "train_loss": r["train_loss"]}
                for r in curve
                if "lr_steps" in r  # the per-step log lines, not the final record
            ],
            "finished": now(),
        }
    )
    return section


# --------------------------------------------------------------------------- report


def print_table(report: dict[str, Any]) -> None:
    acc = report.get("accuracy")
    if acc:
        print("\naccuracy (MiniLM + LoRA, centralized)")
        print(
            f"{'data':6s} {'lr':>7s} {'ep':>4s} {'steps':>6s} {'acc':>7s} {'F1':>7s} {'wall s':>7s}"
        )
        for name, d in acc["datasets"].items():
            for row in d["tried"]:
                if "skipped" in row:
                    print(f"{name:6s} {row['overrides']} skipped: {row['skipped']}")
                    continue
                print(
                    f"{name:6s} {row['lr']:7.0e} {row['epochs']:4g} {row['steps']:6d} "
                    f"{row['eval_accuracy']:7.4f} {row['eval_macro_f1']:7.4f} "
                    f"{row['wall_seconds']:7.0f}"
                )
            ref = max(r["eval_accuracy"] for r in d["frozen_reference"]["results"])
            print(
                f"{name:6s} target {d['target_accuracy']:.2f} met={d['target_met']}; "
                f"frozen-embedding LR reference (best C) {ref:.4f}"
            )
    st = report.get("steptime")
    if st:
        med = st["median_step_seconds"]
        print(
            f"\nstep time, batch {st['batch_shape']}, "
            f"median of {st['reps']} x {st['steps_per_rep']} steps"
        )
        for k, v in med.items():
            print(f"  {k:13s} {v * 1e3:8.1f} ms")
        print(
            f"  fedpeft/bare {st['ratio_fedpeft_over_bare']:.3f} (no clipping), "
            f"{st['ratio_fedpeft_over_bare_clip']:.3f} (clipping); goal <= {st['goal_ratio']}"
        )
        print(
            f"  median paired ratio {st['median_paired_ratio']:.3f} (no clipping), "
            f"{st['median_paired_ratio_clip']:.3f} (clipping); loop-only overhead "
            f"{st['loop_overhead_fraction_of_bare_step']['collate_per_step']:.2%} of a step"
        )
    sm = report.get("smollm")
    if sm:
        print(
            f"\nSmolLM2-135M LoRA, {sm['steps']} steps, lr {sm['lr']:g}: held-out perplexity "
            f"{sm['initial_eval_perplexity']:.2f} -> {sm['eval_perplexity']:.2f} "
            f"({sm['wall_seconds']:.0f} s train+eval)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--accuracy-budget-min",
        type=float,
        default=30.0,
        help="stop trying further configurations once this much fine-tuning time is spent",
    )
    parser.add_argument(
        "--datasets", nargs="+", choices=list(ACCURACY_TASKS), help="accuracy: which (default all)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="accuracy: keep rows already in --output for the same dataset and overrides",
    )
    parser.add_argument("--reps", type=int, default=10, help="step-time repetitions")
    parser.add_argument("--steps", type=int, default=10, help="steps per repetition")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--smollm-epochs", type=float, default=1.0)
    parser.add_argument("--smollm-lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if not (args.data_dir / "sst2").is_dir():
        parser.error(f"data folder not found: {args.data_dir} (pass --data-dir)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runners = {"accuracy": run_accuracy, "steptime": run_steptime, "smollm": run_smollm}
    for part in PARTS if args.part == "all" else (args.part,):
        print(f"[{part}] {now()}", flush=True)
        merge_section(args.output, part, runners[part](args))
    print_table(json.loads(args.output.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
