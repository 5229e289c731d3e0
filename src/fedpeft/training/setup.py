"""Turn a :class:`JobConfig` into data, a tokenizer and a LoRA-wrapped backbone.

Shared by ``fedpeft train``, ``fedpeft export`` and every simulation worker, so that all
of them agree on the task, the label set and the adapter's tensor names.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from fedpeft.adapters import AdaptedModel, build_lora_model
from fedpeft.adapters.offsite import build_emulator_model
from fedpeft.config import JobConfig
from fedpeft.data import ClassificationData, Dataset, load_dataset
from fedpeft.errors import ConfigError
from fedpeft.models import Task, load_backbone, load_tokenizer, resolve_device, resolve_model_path

__all__ = [
    "AdaptedModel",
    "JobData",
    "build_adapted_model",
    "default_eval_source",
    "load_job_data",
    "set_threads",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobData:
    train: Dataset
    eval: Dataset | None
    task: Task

    @property
    def label_names(self) -> list[str] | None:
        return list(self.train.label_names) if isinstance(self.train, ClassificationData) else None


def default_eval_source(train: str) -> str | None:
    """The built-in corpus evaluates on its own test split unless told otherwise."""
    if train in ("reuters-r8", "reuters-r8:train"):
        return "reuters-r8:test"
    return None


def load_job_data(cfg: JobConfig, label_names: list[str] | None = None) -> JobData:
    """The job's training and held-out data; ``label_names`` fixes the label set (a client
    whose data holds a subset of the job's labels)."""
    d = cfg.data
    train = load_dataset(
        d.train,
        text_column=d.text_column,
        label_column=d.label_column,
        header=None if d.header == "auto" else bool(d.header),
        label_names=label_names,
        max_examples=d.max_train_examples,
    )
    task = Task.CLASSIFICATION if isinstance(train, ClassificationData) else Task.CAUSAL_LM
    eval_source = d.eval or default_eval_source(d.train)
    eval_data = None
    if eval_source:
        eval_data = load_dataset(
            eval_source,
            text_column=d.text_column,
            label_column=d.label_column,
            header=None if d.header == "auto" else bool(d.header),
            label_names=train.label_names if isinstance(train, ClassificationData) else None,
            max_examples=d.max_eval_examples or None,  # 0: no cap
        )
        if type(eval_data) is not type(train):
            raise ConfigError(
                "data.eval", "held-out data is not the same kind of task as data.train"
            )
    return JobData(train, eval_data, task)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def build_adapted_model(cfg: JobConfig, task: Task, label_names: list[str] | None) -> AdaptedModel:
    """Load the backbone (once per process) and wrap it with the job's adapter."""
    os.environ.setdefault("HF_HUB_OFFLINE", "0")
    if cfg.adapter.on_emulator:
        # Offsite-Tuning: a client holds the emulator (never the full backbone) and trains
        # the sandwich adapter, named as in the full model (fedpeft.adapters.offsite)
        return build_emulator_model(cfg, task, label_names)
    path = resolve_model_path(cfg.model.name, cfg.model.cache_dir)
    tokenizer = load_tokenizer(path)
    # The classification head and lora_A are freshly initialised: seed both so every
    # party (and a resumed run) starts from the same global adapter.
    torch.manual_seed(cfg.train.seed)
    base = load_backbone(path, task, label_names=label_names)
    model = build_lora_model(base, cfg.lora, task)
    model.to(resolve_device(cfg.model.device))
    model.eval()
    return AdaptedModel(model, tokenizer, task, path, label_names)
