"""Export a run's adapter as a standard PEFT adapter folder (or, for an Offsite-Tuning run
trained as whole blocks, the plug-in model as a transformers folder).

A LoRA run's folder loads with ``peft.PeftModel.from_pretrained(base, folder)`` onto the
same backbone (for classification, a ``AutoModelForSequenceClassification`` with
``num_labels`` = the run's label count); ``fedpeft.json`` beside the adapter records the
task, label names and backbone so a user can rebuild that base model.

An Offsite-Tuning run exports the **plug-in** model — the adapter in the full backbone,
never the emulator: with ``adapter.train = "lora"`` a PEFT adapter folder (LoRA in the
adapter blocks through ``layers_to_transform``, the head in ``modules_to_save``) that
``PeftModel.from_pretrained`` loads onto the full backbone; with ``"full"`` the whole
plug-in model, which ``AutoModelFor....from_pretrained(folder)`` loads by itself.
``fedpeft.json`` says which (``format``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.adapters import AdaptedModel, load_trainable_state
from fedpeft.adapters.offsite import build_plugin_model, job_emulator
from fedpeft.config import JobConfig
from fedpeft.models import Task
from fedpeft.rundir import RunDir, atomic_write_bytes
from fedpeft.training.setup import build_adapted_model


def export_adapter(run_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Rebuild the run's model, load its final adapter state, save it in PEFT format."""
    run = RunDir(run_path)
    cfg = run.config()
    meta = run.meta()
    task = Task(meta["task"])
    info: dict[str, Any] = {"format": "peft-adapter"}
    if cfg.adapter.on_emulator:
        adapted, info = _offsite_plugin(cfg, task, meta.get("label_names"))
    else:
        adapted = build_adapted_model(cfg, task, meta.get("label_names"))
    load_trainable_state(adapted.model, run.load_state(), source=str(run.path))
    out = Path(out)
    adapted.model.save_pretrained(str(out))
    if info["format"] == "transformers-model":
        adapted.tokenizer.save_pretrained(str(out))
    info.update(
        {
            "task": task.value,
            "label_names": meta.get("label_names"),
            "base_model": adapted.model_path,
            "base_model_class": (
                "AutoModelForSequenceClassification"
                if task is Task.CLASSIFICATION
                else "AutoModelForCausalLM"
            ),
            "source_run": str(run.path.resolve()),
        }
    )
    atomic_write_bytes(out / "fedpeft.json", json.dumps(info, indent=2).encode())
    return info


def _offsite_plugin(
    cfg: JobConfig, task: Task, label_names: list[str] | None
) -> tuple[AdaptedModel, dict[str, Any]]:
    """The plug-in model of an Offsite-Tuning run (full backbone, checked against the
    emulator's hash) and what ``fedpeft.json`` says about it."""
    emulator = job_emulator(cfg)
    adapted = build_plugin_model(cfg, task, label_names)
    layout = emulator.layout
    info = {
        "format": "peft-adapter" if cfg.adapter.train == "lora" else "transformers-model",
        "offsite": {
            "train": cfg.adapter.train,
            "emulator": str(emulator.folder),
            "adapter_indices": list(layout.adapter_indices),
            "kept_middle": list(layout.kept_middle),
            "backbone_sha256": emulator.backbone_sha256,
        },
    }
    return adapted, info
