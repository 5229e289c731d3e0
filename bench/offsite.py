"""Offsite-Tuning measured: the paper's table on MiniLM / SST-2, and the client's step time
and memory with the emulator vs the full SmolLM2-135M.

Usage::

    python bench/offsite.py minilm     # -> bench/results/offsite_minilm.json + .png
    python bench/offsite.py smollm2    # -> bench/results/offsite_smollm2.json

``minilm``
    Central training (fedpeft's ``train_local``), the same SST-2 examples, batch, steps,
    learning rate and seed for every row; evaluation on SST-2 dev:

    * ``head_only`` — the full backbone frozen, only the classification head (pooler +
      classifier) trained: the "frozen" row of the paper for a classifier (a fresh head
      makes zero-shot meaningless);
    * ``emulator`` / ``plugin`` — the sandwich adapter (a = 1: blocks 0 and 5, LoRA inside
      plus the head) trained on the uniform-drop emulator (middle blocks 1 and 4 of 1-4
      kept), evaluated on the emulator and plugged into the full backbone;
    * ``emulator_distilled`` / ``plugin_distilled`` — the same on an emulator whose kept
      blocks were distilled on public text (the built-in Reuters R8 corpus, not SST-2);
    * ``full_lora`` — LoRA in every block plus the head on the full backbone.

``smollm2``
    The same sandwich adapter (a = 2, LoRA inside) trained on the emulator (blocks
    0-1 and 28-29 + 8 evenly spaced middle blocks: 12 of 30) and on the full backbone:
    each in its own process (peak RSS is per process), the same Alpaca batches. Reported:
    median step time (the first step excluded), peak RSS, and the memory the model and
    training add above the process's RSS before loading. Perplexity is not measured
    (CPU time; see docs/offsite.md).

Timings on a shared machine are noisy: compare ratios measured in the same run; the
JSON records the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO / "bench"))

from benchinfo import RunStamp  # noqa: E402

MEASURED = (
    "src/fedpeft/adapters/offsite.py",
    "src/fedpeft/training/loop.py",
    "src/fedpeft/adapters/lora.py",
)


def _job(**overrides: Any) -> Any:
    from fedpeft.config import JobConfig

    return JobConfig().replace(overrides)


def _train_eval(adapted: Any, cfg: Any, data: Any, eval_models: dict[str, Any]) -> dict[str, Any]:
    """Train ``adapted.model`` on ``data.train``; evaluate under each of ``eval_models``
    (name -> model that the trained state is loaded into; None = the trained model)."""
    from fedpeft.adapters import load_trainable_state, trainable_state
    from fedpeft.training.encode import encode
    from fedpeft.training.loop import evaluate, train_local

    train = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    held_out = encode(adapted.tokenizer, data.eval, cfg.data.max_length)
    stats = train_local(adapted.model, train, cfg.train, seed=cfg.train.seed)
    state = trainable_state(adapted.model)
    out: dict[str, Any] = {
        "train_steps": stats.steps,
        "train_loss": stats.loss,
        "train_seconds": round(stats.seconds, 1),
        "trainable_params": sum(v.numel() for v in state.values()),
    }
    for name, model in eval_models.items():
        target = adapted.model if model is None else model
        if model is not None:
            load_trainable_state(model, state)
        metrics = evaluate(target, held_out, cfg.train.eval_batch_size)
        out[name] = {k: round(v, 4) for k, v in metrics.items()}
    return out


def minilm(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from fedpeft.adapters.offsite import (
        DistillSettings,
        build_emulator,
        build_emulator_model,
        build_plugin_model,
        emulator_weight_bytes,
    )
    from fedpeft.training.setup import build_adapted_model, load_job_data

    torch.set_num_threads(args.threads)
    sst2 = SHARED / "sst2"
    if not sst2.is_dir():
        raise SystemExit(f"{sst2} is absent: this benchmark needs ../shared/data/sst2")
    work = Path(args.work)
    common = {
        "model.name": "minilm",
        "model.device": "cpu",
        "data.train": str(sst2 / "train.txt"),
        "data.eval": str(sst2 / "dev.txt"),
        "data.max_train_examples": args.train_examples,
        "data.max_eval_examples": args.eval_examples,
        "data.max_length": 64,
        "train.max_steps": args.steps,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.seed": 0,
    }
    base_cfg = _job(**common)
    data = load_job_data(base_cfg)
    rows: dict[str, Any] = {}

    # full LoRA and head-only on the full backbone
    adapted = build_adapted_model(base_cfg, data.task, data.label_names)
    rows["full_lora"] = _train_eval(adapted, base_cfg, data, {"eval": None})
    adapted = build_adapted_model(base_cfg, data.task, data.label_names)
    for name, p in adapted.model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)
    rows["head_only"] = _train_eval(adapted, base_cfg, data, {"eval": None})

    emulators: dict[str, Any] = {}
    for label, distill in (
        ("", None),
        ("_distilled", DistillSettings(steps=args.distill_steps, lr=args.distill_lr)),
    ):
        folder = work / f"minilm-emu{label}"
        info = build_emulator("minilm", folder, adapter_blocks=1, keep_middle=2, distill=distill)
        emulators[label or "_plain"] = {
            "layout": info.layout.to_json(),
            "weight_bytes": emulator_weight_bytes(folder),
            "distillation": info.distillation,
        }
        cfg = _job(
            **common,
            **{"adapter.kind": "offsite", "adapter.emulator": str(folder)},
        )
        emulator = build_emulator_model(cfg, data.task, data.label_names)
        plugin = build_plugin_model(cfg, data.task, data.label_names).model
        result = _train_eval(emulator, cfg, data, {"emulator": None, "plugin": plugin})
        rows[f"ot{label}"] = result
    from fedpeft.models.registry import resolve_model_path

    full_bytes = emulator_weight_bytes(resolve_model_path("minilm"))
    table = {
        "head_only": rows["head_only"]["eval"]["eval_accuracy"],
        "emulator": rows["ot"]["emulator"]["eval_accuracy"],
        "plugin": rows["ot"]["plugin"]["eval_accuracy"],
        "emulator_distilled": rows["ot_distilled"]["emulator"]["eval_accuracy"],
        "plugin_distilled": rows["ot_distilled"]["plugin"]["eval_accuracy"],
        "full_lora": rows["full_lora"]["eval"]["eval_accuracy"],
    }
    return {
        "settings": {
            **common,
            "threads": args.threads,
            "adapter": "a = 1 (blocks 0, 5), LoRA r=8 inside + head (pooler, classifier)",
            "emulator": "middle 1-4: keep 2 (blocks 1, 4), drop 2, 3",
            "distill": {"steps": args.distill_steps, "lr": args.distill_lr, "data": "reuters-r8"},
        },
        "accuracy": table,
        "runs": rows,
        "emulators": emulators,
        "full_backbone_weight_bytes": full_bytes,
    }


def plot_minilm(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["accuracy"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(table)
    bars = ax.bar(names, [table[n] for n in names], color="#4c72b0")
    for bar, name in zip(bars, names, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            table[name] + 0.005,
            f"{table[name]:.3f}",
            ha="center",
            fontsize=8,
        )
    ax.set_ylim(0.45, 1.0)
    ax.set_ylabel("SST-2 dev accuracy")
    steps = result["settings"]["train.max_steps"]
    ax.set_title(f"Offsite-Tuning on MiniLM, {steps} steps each")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- SmolLM2: step time and memory, one process per model ---------------------------------
def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def measure(args: argparse.Namespace) -> None:
    """One process: load the emulator or the full backbone, train ``steps`` steps."""
    import torch

    torch.set_num_threads(args.threads)
    baseline = _rss_bytes()
    from fedpeft.adapters.offsite import build_emulator_model, build_plugin_model
    from fedpeft.models.registry import Task
    from fedpeft.training.encode import encode
    from fedpeft.training.loop import make_optimizer
    from fedpeft.training.setup import load_job_data

    cfg = _job(
        **{
            "model.name": "smollm2-135m",
            "model.device": "cpu",
            "adapter.kind": "offsite",
            "adapter.emulator": args.emulator,
            "data.train": str(SHARED / "alpaca" / "alpaca_5000.json"),
            "data.max_train_examples": args.batch_size * (args.steps + 1) * 4,
            "data.max_length": args.max_length,
            "train.batch_size": args.batch_size,
        }
    )
    data = load_job_data(cfg)
    build = build_emulator_model if args.which == "emulator" else build_plugin_model
    adapted = build(cfg, Task.CAUSAL_LM, None)
    model = adapted.model
    loaded = _rss_bytes()
    encoded = encode(adapted.tokenizer, data.train, args.max_length)
    # the longest examples: every step sees full max_length rows in both processes
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded.input_ids[i]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.train)
    model.train()
    times = []
    for step in range(args.steps):
        idx = order[step * args.batch_size : (step + 1) * args.batch_size]
        batch = encoded.batch(idx)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params_total = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "which": args.which,
                "step_seconds": [round(t, 3) for t in times],
                "median_step_seconds": statistics.median(times[1:] or times),
                "rss_before_load_bytes": baseline,
                "rss_after_load_bytes": loaded,
                "peak_rss_bytes": peak,
                "added_peak_bytes": peak - baseline,
                "parameters": params_total,
                "trainable_parameters": sum(p.numel() for p in params),
                "tokens_per_step": int(batch["attention_mask"].sum()),
            }
        )
    )


def smollm2(args: argparse.Namespace) -> dict[str, Any]:
    from fedpeft.adapters.offsite import build_emulator, emulator_weight_bytes
    from fedpeft.models.registry import resolve_model_path

    if not (SHARED / "alpaca").is_dir():
        raise SystemExit("../shared/data/alpaca is absent: this benchmark needs it")
    folder = Path(args.work) / "smollm2-emu"
    info = build_emulator("smollm2-135m", folder, adapter_blocks=2, keep_middle=args.keep_middle)
    runs: dict[str, Any] = {}
    for which in ("emulator", "full"):
        cmd = [
            sys.executable,
            __file__,
            "_measure",
            "--which",
            which,
            "--emulator",
            str(folder),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{which} measurement failed:\n{proc.stderr[-3000:]}")
        runs[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    emu, full = runs["emulator"], runs["full"]
    return {
        "settings": {
            "model": "smollm2-135m",
            "adapter": "a = 2 (blocks 0, 1, 28, 29), LoRA r=8 inside",
            "emulator_blocks": list(info.layout.emulator_blocks),
            "batch": f"{args.batch_size} x {args.max_length} tokens (the longest Alpaca rows)",
            "steps": args.steps,
            "threads": args.threads,
        },
        "speedup_step_time": full["median_step_seconds"] / emu["median_step_seconds"],
        "memory_ratio_peak_rss": full["peak_rss_bytes"] / emu["peak_rss_bytes"],
        "memory_ratio_added": full["added_peak_bytes"] / emu["added_peak_bytes"],
        "emulator_weight_bytes": emulator_weight_bytes(folder),
        "full_weight_bytes": emulator_weight_bytes(resolve_model_path("smollm2-135m")),
        "goals": {"speedup": 1.8, "memory_ratio": 1.5},
        "perplexity": "not measured (CPU time on a shared 2-core machine)",
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["minilm", "smollm2", "_measure"])
    parser.add_argument("--work", default="/tmp/fedpeft-bench-offsite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=2400)
    parser.add_argument("--eval-examples", type=int, default=872)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--distill-steps", type=int, default=150)
    parser.add_argument("--distill-lr", type=float, default=1e-4)
    parser.add_argument("--keep-middle", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--which", choices=["emulator", "full"])
    parser.add_argument("--emulator")
    parser.add_argument("--output")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part == "_measure":
        measure(args)
        return
    stamp = RunStamp(f"offsite_{args.part}")
    stamp.source_before = {**stamp.source_before, "measured": list(MEASURED)}
    result = minilm(args) if args.part == "minilm" else smollm2(args)
    report = {**stamp.header(), **result}
    out = Path(args.output or RESULTS / f"offsite_{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.part == "minilm":
        plot_minilm(report, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "machine")}, indent=2))


if __name__ == "__main__":
    main()
