"""The adapted model every party builds: a frozen backbone with its trainable adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedpeft.models.registry import Task


@dataclass
class AdaptedModel:
    """A frozen backbone wrapped with its adapter (LoRA, or an Offsite-Tuning sandwich),
    plus what it was built from."""

    model: Any  # a peft.PeftModel, or a transformers model with only the adapter trainable
    tokenizer: Any
    task: Task
    model_path: str
    label_names: list[str] | None
