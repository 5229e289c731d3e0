"""Export a run's adapter as a standard PEFT adapter folder.

The folder loads with ``peft.PeftModel.from_pretrained(base, folder)`` onto the same
backbone (for classification, a ``AutoModelForSequenceClassification`` with
``num_labels`` = the run's label count); ``fedpeft.json`` beside the adapter records the
task, label names and backbone so a user can rebuild that base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedpeft.adapters import load_trainable_state
from fedpeft.models import Task
from fedpeft.rundir import RunDir, atomic_write_bytes
from fedpeft.training.setup import build_adapted_model


def export_adapter(run_path: str | Path, out: str | Path) -> dict[str, Any]:
    """Rebuild the run's model, load its final adapter state, save it in PEFT format."""
    run = RunDir(run_path)
    cfg = run.config()
    meta = run.meta()
    task = Task(meta["task"])
    adapted = build_adapted_model(cfg, task, meta.get("label_names"))
    load_trainable_state(adapted.model, run.load_state(), source=str(run.path))
    out = Path(out)
    adapted.model.save_pretrained(str(out))
    info = {
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
    atomic_write_bytes(out / "fedpeft.json", json.dumps(info, indent=2).encode())
    return info
