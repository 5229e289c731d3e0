"""Centralized LoRA fine-tuning (``fedpeft train``): the single-machine baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fedpeft.adapters import trainable_state
from fedpeft.config import JobConfig
from fedpeft.data import check_job_labels
from fedpeft.models import resolve_model_path
from fedpeft.rundir import RunDir, new_run_id
from fedpeft.training.encode import encode
from fedpeft.training.generate import Generation
from fedpeft.training.loop import evaluate, planned_steps, train_local
from fedpeft.training.prefix import prefix_cache_for
from fedpeft.training.setup import build_adapted_model, load_job_data, set_threads


def run_central(
    cfg: JobConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    log_every: int = 10,
    force: bool = False,
) -> dict[str, Any]:
    """Train, evaluate, and write the run folder; returns the final metrics record.

    A folder that holds another run is refused once the data and the model name are
    known good, before the backbone loads and before anything is written (``force``:
    its run files are removed once the model is ready, just before this run writes)."""
    run = RunDir(cfg.output)
    run_id = new_run_id()
    set_threads(cfg.train.threads)
    data = load_job_data(cfg)
    check_job_labels(data.label_names, "data.train", cfg.data.train)
    resolve_model_path(cfg.model.name, cfg.model.cache_dir)  # a wrong name is said first
    run.check_claim(run_id, force=force)
    adapted = build_adapted_model(cfg, data.task, data.label_names)
    run.claim(run_id, force=force)
    run.create(cfg, {"run_id": run_id, **_meta(adapted)})
    run.rewrite_metrics([])
    train_enc = encode(adapted.tokenizer, data.train, cfg.data.max_length)
    eval_enc = encode(adapted.tokenizer, data.eval, cfg.data.max_length) if data.eval else None

    generation = Generation.from_config(cfg, adapted.tokenizer)  # ROUGE-L, if asked
    record: dict[str, Any] = {"step": 0}
    if eval_enc is not None and data.task.value == "causal_lm":
        # perplexity (and ROUGE-L) before training, so the gain is visible in one file
        initial = evaluate(
            adapted.model, eval_enc, cfg.train.eval_batch_size, generation=generation
        )
        record.update({f"initial_{k}": v for k, v in initial.items()})

    def step_hook(step: int, total: int, loss: float) -> None:
        if step % log_every == 0 or step == total:
            run.append_metrics({"step": step, "train_loss": loss, "lr_steps": total})
        if on_step is not None:
            on_step(step, total, loss)

    start = time.perf_counter()
    stats = train_local(
        adapted.model,
        train_enc,
        cfg.train,
        seed=cfg.train.seed,
        on_step=step_hook,
        prefix=prefix_cache_for(adapted.model, train_enc, cfg),  # None unless lora.layers > 0
    )
    record = {
        **record,
        "step": stats.steps,
        "train_loss": stats.loss,
        "examples_seen": stats.examples,
        "train_seconds": stats.seconds,
    }
    if eval_enc is not None:
        record.update(
            evaluate(adapted.model, eval_enc, cfg.train.eval_batch_size, generation=generation)
        )
    record["wall_seconds"] = time.perf_counter() - start
    run.append_metrics(record)
    run.save_state(trainable_state(adapted.model))
    adapted.model.save_pretrained(str(run.path / "adapter"))
    return record


def _meta(adapted: Any) -> dict[str, Any]:
    return {
        "task": adapted.task.value,
        "label_names": adapted.label_names,
        "model_path": adapted.model_path,
    }


__all__ = ["planned_steps", "run_central"]
