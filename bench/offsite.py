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

``smollm2`` (``--sections speed,table,tiers``; each section's settings are its flags)
    ``speed`` — the same sandwich adapter (a = 2, LoRA inside) trained on the emulator
    (blocks 0-1 and 28-29 + ``--keep-middle`` evenly spaced middle blocks) and on the full
    backbone: each in its own process (peak RSS is per process), the same Alpaca batches.
    Reported: median step time (the first step excluded), peak RSS, and the memory the
    model and training add above the process's RSS before loading.

    ``table`` — the paper's table on the Alpaca job (the job's seeded held-out split,
    response perplexity; ROUGE-L on the first ``--rouge-examples`` held-out prompts when
    > 0): rows ``base`` (the backbone, no adapter), ``emulator`` (the adapter on the
    emulator: what the data owner sees), ``plugin`` (that adapter in the full backbone:
    what the model owner gets), each for every ``--keep-middles`` drop ratio, without and
    with distillation (``--distill-steps`` on the built-in public corpus, never the
    clients' data), and ``full_lora`` (LoRA in every block). Central training, the same
    examples, steps and seed within a seed; every seed of ``--seeds`` retrains every row.
    The **IP gap** (emulator perplexity − plug-in perplexity) per seed, its mean and a
    95% t-interval over the seeds.

    ``tiers`` — the federated Alpaca job (``fedpeft simulate``'s path) with the first
    ``--keep-middles`` emulator, for each ``--tier-fractions`` p: plug-in and emulator
    perplexity per round and the tier counts; ``gap_closed`` = how much of the final
    plug-in perplexity gap between p = 0 (all emulator) and p = 1 (all full) each p closes
    (goal: at least half at p = 0.25).

Timings on a shared machine are noisy: compare ratios measured in the same run; the
JSON records the load average at start and end.

The smallest setting (a check that every section runs, minutes on 2 cores)::

    python bench/offsite.py smollm2 --sections table,tiers --seeds 0 --keep-middles 8 \
        --table-steps 1 --train-examples 16 --eval-examples 8 --distill-steps 1 \
        --tier-fractions 0,1 --tier-rounds 1 --tier-clients 2 --tier-per-round 1 \
        --tier-steps 1 --max-length 64 --output /tmp/offsite_smollm2_check.json
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
    "src/fedpeft/adapters/offsite",
    "src/fedpeft/client/offsite.py",
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


ALPACA = SHARED / "alpaca" / "alpaca_5000.json"


def smollm2(args: argparse.Namespace) -> dict[str, Any]:
    if not ALPACA.is_file():
        raise SystemExit(f"{ALPACA} is absent: this benchmark needs ../shared/data/alpaca")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - {"speed", "table", "tiers"})
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; choose from speed, table, tiers")
    out: dict[str, Any] = {"sections": sections}
    if "speed" in sections:  # its fields at the top, as this file had them before
        out.update(smollm2_speed(args))
    if "table" in sections:
        table = smollm2_table(args)
        out["table"] = table
        out["ot_table_rows"] = _table_rows(table)  # flat: bench/report.py shows them
        out["ip_gap_rows"] = [
            {
                "setting": name,
                "gap_mean": gap["mean"],
                "ci95_low": gap["ci95"][0] if gap["ci95"] else None,
                "ci95_high": gap["ci95"][1] if gap["ci95"] else None,
                "seeds": gap["n"],
                "gap_shows": gap["shows"],
            }
            for name, gap in table["ip_gap"].items()
        ]
    if "tiers" in sections:
        tiers = smollm2_tiers(args)
        out["tiers"] = tiers
        out["tier_rows"] = [
            {"full_model_fraction": float(p), "gap_closed": tiers["gap_closed"][p], **r}
            for p, run in tiers["runs"].items()
            for r in run["rounds"]
        ]
    return out


def _table_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, ppl in table["perplexity"].items():
        runs = table["runs"][name]
        steps = [r["step_seconds"] for r in runs if "step_seconds" in r]
        rouge = [r["eval_rouge_l"] for r in runs if "eval_rouge_l" in r]
        rows.append(
            {
                "row": name,
                "perplexity": ppl["mean"],
                "ci95_low": ppl["ci95"][0] if ppl["ci95"] else None,
                "ci95_high": ppl["ci95"][1] if ppl["ci95"] else None,
                "rouge_l": statistics.fmean(rouge) if rouge else None,
                "step_seconds": statistics.median(steps) if steps else None,
                "seeds": ppl["n"],
            }
        )
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _emulator(args: argparse.Namespace, keep: int, distill_steps: int) -> Path:
    """The SmolLM2 emulator keeping ``keep`` middle blocks (a = 2), distilled for
    ``distill_steps`` on the built-in public corpus; built once per setting."""
    from fedpeft.adapters.offsite import EMULATOR_FILE, DistillSettings, build_emulator

    folder = Path(args.work) / f"smollm2-emu-k{keep}-d{distill_steps}"
    if not (folder / EMULATOR_FILE).is_file():
        distill = (
            DistillSettings(steps=distill_steps, lr=args.distill_lr, max_length=args.max_length)
            if distill_steps
            else None
        )
        build_emulator("smollm2-135m", folder, adapter_blocks=2, keep_middle=keep, distill=distill)
    return folder


def _alpaca_job(args: argparse.Namespace, seed: int, **more: Any) -> Any:
    return _job(
        **{
            "model.name": "smollm2-135m",
            "model.device": "cpu",
            "data.train": str(ALPACA),
            "data.max_train_examples": args.train_examples,
            "data.max_eval_examples": args.eval_examples,
            "data.max_length": args.max_length,
            "train.max_steps": args.table_steps,
            "train.batch_size": args.table_batch_size,
            "train.lr": args.table_lr,
            "train.eval_rouge_examples": args.rouge_examples,
            "train.seed": seed,
            "train.threads": args.threads,
            **more,
        }
    )


def _eval(model: Any, held_out: Any, cfg: Any, tokenizer: Any) -> dict[str, float]:
    from fedpeft.training.generate import Generation
    from fedpeft.training.loop import evaluate

    generation = Generation.from_config(cfg, tokenizer)
    metrics = evaluate(model, held_out, cfg.train.eval_batch_size, generation=generation)
    return {k: round(v, 4) for k, v in metrics.items()}


def _trained(adapted: Any, cfg: Any, data: Any) -> dict[str, Any]:
    """Train ``adapted.model`` centrally on the job's training examples; its state and
    the client's step time."""
    from fedpeft.adapters import trainable_state
    from fedpeft.training.encode import encode
    from fedpeft.training.loop import train_local

    train = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    stats = train_local(adapted.model, train, cfg.train, seed=cfg.train.seed)
    return {
        "state": trainable_state(adapted.model),
        "train_loss": round(stats.loss, 4),
        "train_steps": stats.steps,
        "step_seconds": round(stats.seconds / max(1, stats.steps), 3),
    }


def _interval(values: list[float]) -> dict[str, Any]:
    """Mean and a 95% t-interval over seeds (None with one seed)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "n": len(values)}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(values)}


def smollm2_table(args: argparse.Namespace) -> dict[str, Any]:
    """The OT table on SmolLM2 + Alpaca (module docstring, ``table``)."""
    import torch

    from fedpeft.adapters import load_trainable_state
    from fedpeft.adapters.offsite import build_emulator_model, build_plugin_model, read_emulator
    from fedpeft.models.registry import Task
    from fedpeft.training.encode import encode
    from fedpeft.training.setup import build_adapted_model, load_job_data

    torch.set_num_threads(args.threads)
    settings = [(k, d) for k in _ints(args.keep_middles) for d in (0, args.distill_steps)]
    emulators = {(k, d): _emulator(args, k, d) for k, d in settings}
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in _ints(args.seeds):
        cfg = _alpaca_job(args, seed)
        data = load_job_data(cfg)  # the job's seeded held-out split
        if data.eval is None:
            raise SystemExit("the Alpaca job has no held-out split (data.holdout)")
        full = build_adapted_model(cfg, Task.CAUSAL_LM, None)
        held_out = encode(full.tokenizer, data.eval, cfg.data.max_length)
        # LoRA's B starts at zero: before training, the model is the base model
        rows.setdefault("base", []).append(_eval(full.model, held_out, cfg, full.tokenizer))
        run = _trained(full, cfg, data)
        rows.setdefault("full_lora", []).append(
            {**_eval(full.model, held_out, cfg, full.tokenizer), **_drop_state(run)}
        )
        del full
        for (keep, distill), folder in emulators.items():
            ot_cfg = cfg.replace({"adapter.kind": "offsite", "adapter.emulator": str(folder)})
            emulator = build_emulator_model(ot_cfg, Task.CAUSAL_LM, None)
            run = _trained(emulator, ot_cfg, data)
            name = f"k{keep}" + ("_distilled" if distill else "")
            rows.setdefault(f"emulator_{name}", []).append(
                {**_eval(emulator.model, held_out, ot_cfg, emulator.tokenizer), **_drop_state(run)}
            )
            plugin = build_plugin_model(ot_cfg, Task.CAUSAL_LM, None)
            load_trainable_state(plugin.model, run["state"])
            rows.setdefault(f"plugin_{name}", []).append(
                _eval(plugin.model, held_out, ot_cfg, plugin.tokenizer)
            )
            del emulator, plugin
    ip_gap: dict[str, Any] = {}
    for keep, distill in settings:
        name = f"k{keep}" + ("_distilled" if distill else "")
        gaps = [
            e["eval_perplexity"] - p["eval_perplexity"]
            for e, p in zip(rows[f"emulator_{name}"], rows[f"plugin_{name}"], strict=True)
        ]
        ip_gap[name] = {"per_seed": gaps, **_interval(gaps)}
        interval = ip_gap[name]["ci95"]
        ip_gap[name]["shows"] = None if interval is None else interval[0] > 0
    perplexity = {
        row: _interval([r["eval_perplexity"] for r in runs]) for row, runs in rows.items()
    }
    return {
        "settings": {
            "seeds": _ints(args.seeds),
            "keep_middles": _ints(args.keep_middles),
            "middle_blocks": 26,
            "distill": {"steps": args.distill_steps, "lr": args.distill_lr, "data": "reuters-r8"},
            "train_examples": args.train_examples,
            "eval_examples": args.eval_examples,
            "steps": args.table_steps,
            "batch_size": args.table_batch_size,
            "lr": args.table_lr,
            "max_length": args.max_length,
            "rouge_examples": args.rouge_examples,
        },
        "emulators": {
            f"k{k}" + ("_distilled" if d else ""): {
                "blocks": list(read_emulator(str(f)).layout.emulator_blocks),
                "distillation": read_emulator(str(f)).distillation,
            }
            for (k, d), f in emulators.items()
        },
        "perplexity": perplexity,
        "ip_gap": ip_gap,
        "runs": rows,
    }


def _drop_state(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "state"}


def smollm2_tiers(args: argparse.Namespace) -> dict[str, Any]:
    """Tiered vs all-emulator vs all-full on the federated Alpaca job (``tiers``)."""
    from fedpeft.rundir import RunDir
    from fedpeft.simulation import run_simulation

    keep = _ints(args.keep_middles)[0]
    folder = _emulator(args, keep, 0)
    runs: dict[str, Any] = {}
    for p in _floats(args.tier_fractions):
        out = Path(args.work) / f"tiers-p{p}"
        cfg = _alpaca_job(
            args,
            0,
            **{
                "adapter.kind": "offsite",
                "adapter.emulator": str(folder),
                "federation.full_model_fraction": p,
                "federation.clients": args.tier_clients,
                "federation.clients_per_round": args.tier_per_round,
                "federation.rounds": args.tier_rounds,
                "federation.partition": "iid",
                "train.max_steps": args.tier_steps,
                "output": str(out),
            },
        )
        started = time.perf_counter()
        summary = run_simulation(cfg, export=False, force=True)
        rounds = [
            {
                k: r.get(k)
                for k in (
                    "round",
                    "eval_perplexity",
                    "emulator_perplexity",
                    "tier_full",
                    "tier_emulator",
                    "train_seconds",
                )
            }
            for r in RunDir(out).read_metrics()
        ]
        runs[str(p)] = {
            "initial_eval_perplexity": summary.get("initial_eval_perplexity"),
            "final_eval_perplexity": summary.get("final_eval_perplexity"),
            "rounds": rounds,
            "seconds": round(time.perf_counter() - started, 1),
        }
    finals = {p: r["final_eval_perplexity"] for p, r in runs.items()}
    gap_closed: dict[str, float | None] = {}
    lo, hi = finals.get("0.0"), finals.get("1.0")
    for p, value in finals.items():
        usable = None not in (lo, hi, value) and lo != hi
        gap_closed[p] = (lo - value) / (lo - hi) if usable else None  # type: ignore[operator]
    return {
        "settings": {
            "keep_middle": keep,
            "clients": args.tier_clients,
            "clients_per_round": args.tier_per_round,
            "rounds": args.tier_rounds,
            "local_steps": args.tier_steps,
            "batch_size": args.table_batch_size,
            "lr": args.table_lr,
            "eval_examples": args.eval_examples,
            "partition": "iid",
        },
        "gap_closed": gap_closed,
        "goal": {"fraction": 0.25, "gap_closed": 0.5},
        "runs": runs,
    }


def smollm2_speed(args: argparse.Namespace) -> dict[str, Any]:
    from fedpeft.adapters.offsite import build_emulator, emulator_weight_bytes
    from fedpeft.models.registry import resolve_model_path

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
    # smollm2
    parser.add_argument("--sections", default="speed,table,tiers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--keep-middles", default="8,4", help="middle blocks kept (of 26)")
    parser.add_argument("--table-steps", type=int, default=60)
    parser.add_argument("--table-batch-size", type=int, default=8)
    parser.add_argument("--table-lr", type=float, default=1e-3)
    parser.add_argument("--rouge-examples", type=int, default=0)
    parser.add_argument("--tier-fractions", default="0,0.25,1")
    parser.add_argument("--tier-clients", type=int, default=8)
    parser.add_argument("--tier-per-round", type=int, default=4)
    parser.add_argument("--tier-rounds", type=int, default=5)
    parser.add_argument("--tier-steps", type=int, default=8)
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
