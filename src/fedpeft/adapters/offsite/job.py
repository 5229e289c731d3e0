"""A job's emulator and the two models built from it: the client's and the owner's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedpeft.adapters.model import AdaptedModel
from fedpeft.adapters.offsite.adapter import apply_offsite_adapter
from fedpeft.adapters.offsite.artifact import EmulatorInfo, check_backbone, read_emulator
from fedpeft.adapters.offsite.blocks import reindex_blocks
from fedpeft.adapters.offsite.layout import OffsiteLayout
from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.models.registry import (
    Task,
    block_list,
    load_backbone,
    load_tokenizer,
    resolve_device,
    resolve_model_path,
)


def job_emulator(cfg: JobConfig) -> EmulatorInfo:
    """The emulator the job names in ``adapter.emulator``, read and checked."""
    if not cfg.adapter.emulator:
        raise ConfigError(
            "adapter.emulator",
            "an Offsite-Tuning job needs an emulator folder: build one with `fedpeft offsite "
            "build-emulator --model NAME --out DIR` and pass --emulator DIR",
        )
    return read_emulator(cfg.adapter.emulator, "adapter.emulator")


def _adapted(
    cfg: JobConfig,
    path: str,
    layout: OffsiteLayout,
    task: Task,
    label_names: list[str] | None,
    prepare: Callable[[Any], Any],
) -> AdaptedModel:
    tokenizer = load_tokenizer(path)
    torch.manual_seed(cfg.train.seed)  # a fresh classification head and LoRA A: seeded
    base = prepare(load_backbone(path, task, label_names=label_names))
    model = apply_offsite_adapter(base, layout, cfg.adapter.train, cfg.lora, task)
    model.to(resolve_device(cfg.model.device))
    model.eval()
    return AdaptedModel(model, tokenizer, task, path, label_names)


def build_emulator_model(cfg: JobConfig, task: Task, label_names: list[str] | None) -> AdaptedModel:
    """What a client holds: the emulator with the job's adapter (full-model names)."""
    info = job_emulator(cfg)
    return _adapted(
        cfg,
        str(info.folder),
        info.layout,
        task,
        label_names,
        lambda base: reindex_blocks(base, info.layout),
    )


def build_plugin_model(cfg: JobConfig, task: Task, label_names: list[str] | None) -> AdaptedModel:
    """What the model owner evaluates and exports: the adapter in the full backbone.

    The backbone must be the one the emulator was built from (same weight files)."""
    info = job_emulator(cfg)
    path = resolve_model_path(cfg.model.name, cfg.model.cache_dir)
    check_backbone(info, path, "adapter.emulator")

    def check_blocks(base: Any) -> Any:
        _, blocks = block_list(base)
        if len(blocks) != info.layout.num_layers:
            raise ConfigError(
                "adapter.emulator",
                f"backbone has {len(blocks)} blocks, the emulator's layout "
                f"{info.layout.num_layers}",
            )
        return base

    return _adapted(cfg, path, info.layout, task, label_names, check_blocks)
