"""Build an emulator folder from a backbone: drop middle blocks, distil, write atomically."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from fedpeft.adapters.offsite.artifact import EMULATOR_FILE, EmulatorInfo, backbone_sha256
from fedpeft.adapters.offsite.blocks import drop_blocks
from fedpeft.adapters.offsite.distill import DistillSettings, distill_emulator
from fedpeft.adapters.offsite.layout import OffsiteLayout, check_adapter_blocks, keep_for_ratio
from fedpeft.errors import ConfigError, ModelError
from fedpeft.models.registry import (
    ARCHITECTURES,
    arch_spec,
    block_list,
    load_tokenizer,
    quiet_transformers,
    resolve_model_path,
)


def load_full(path: str) -> Any:
    """The pretrained backbone as its checkpoint stores it (an LM head if decoder)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of `{path}`: {exc}") from exc
    if config.model_type not in ARCHITECTURES:
        raise ConfigError(
            "--model",
            f"`{path}` is a `{config.model_type}` model; Offsite-Tuning knows the block list of "
            f"{sorted(ARCHITECTURES)} only",
        )
    cls = AutoModel if arch_spec(config.model_type).encoder_only else AutoModelForCausalLM
    try:
        with quiet_transformers():
            return cls.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model `{path}`: {exc}") from exc


def build_emulator(
    model: str,
    out: str | Path,
    *,
    adapter_blocks: int = 2,
    keep_middle: int | None = None,
    keep_ratio: float | None = None,
    distill: DistillSettings | None = None,
    cache_dir: str | None = None,
) -> EmulatorInfo:
    """Write the emulator of backbone ``model`` to folder ``out`` and return its info.

    ``keep_middle`` (a count) or ``keep_ratio`` (of the middle; default 0.5, the paper's
    "keep every other block") sets how many middle blocks survive the uniform drop.
    """
    if keep_middle is not None and keep_ratio is not None:
        raise ConfigError("--keep-middle", "give --keep-middle or --keep-ratio, not both")
    path = resolve_model_path(model, cache_dir)
    student = load_full(path)
    _, blocks = block_list(student)
    num_layers = len(blocks)
    check_adapter_blocks(num_layers, adapter_blocks)
    if keep_middle is None:
        keep_middle = keep_for_ratio(num_layers, adapter_blocks, keep_ratio or 0.5)
    layout = OffsiteLayout.uniform(num_layers, adapter_blocks, keep_middle)
    digest = backbone_sha256(path)
    tokenizer = load_tokenizer(path)

    drop_blocks(student, layout)
    distillation = None
    if distill is not None and distill.steps > 0:
        teacher = load_full(path)  # a second, intact copy: the true middle
        distillation = distill_emulator(teacher, student, layout, tokenizer, distill)
        del teacher

    out = Path(out).expanduser()
    info = EmulatorInfo(
        out.resolve(), layout, student.config.model_type, model, digest, distillation
    )
    _write_emulator(student, tokenizer, info, out)
    return info


def _write_emulator(student: Any, tokenizer: Any, info: EmulatorInfo, out: Path) -> None:
    """Save the emulator and its ``offsite.json`` beside ``out``, then rename into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        with quiet_transformers():
            student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the emulator from other users
        (tmp / EMULATOR_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        if out.exists():
            if not (out / EMULATOR_FILE).is_file() and any(out.iterdir()):
                raise ConfigError("--out", f"{out} exists and is not an emulator folder")
            shutil.rmtree(out)
        tmp.rename(out)  # a half-written emulator is never found under its name
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
