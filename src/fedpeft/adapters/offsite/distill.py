"""Distil an emulator's kept middle blocks towards the true middle, on public text."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.adapters.offsite.layout import OffsiteLayout
from fedpeft.data import ClassificationData, load_dataset
from fedpeft.errors import ConfigError
from fedpeft.models.registry import block_list

#: the public text the emulator is distilled on unless told otherwise (offline, built in)
DEFAULT_DISTILL_DATA = "reuters-r8"


@dataclass(frozen=True)
class DistillSettings:
    """Distillation of the emulator's kept middle blocks on public text."""

    steps: int = 0
    data: str = DEFAULT_DISTILL_DATA
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 64
    lm_weight: float = 1.0  # causal LMs: weight of the next-token loss next to the MSE
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigError("--distill-steps", f"must be an integer >= 0, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError("--distill-lr", f"must be > 0, got {self.lr!r}")
        for name in ("batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--distill-{name.replace('_', '-')}", f"must be > 0: {value!r}")
        if not (self.lm_weight >= 0 and math.isfinite(self.lm_weight)):
            raise ConfigError("--distill-lm-weight", f"must be >= 0, got {self.lm_weight!r}")


@contextlib.contextmanager
def _captured_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The hidden states ``module`` (a block) returns while the block is entered."""
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def public_texts(source: str, max_examples: int | None = None) -> list[str]:
    """Plain texts of a dataset (built-in name or local file) for distillation."""
    data = load_dataset(source, max_examples=max_examples)
    if isinstance(data, ClassificationData):
        return list(data.texts)
    return [p + r for p, r in zip(data.prompts, data.responses, strict=True)]


def middle_output_blocks(
    teacher: Any, student: Any, layout: OffsiteLayout
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The last true middle block (teacher) and the last kept middle block (student)."""
    _, t_blocks = block_list(teacher)
    _, s_blocks = block_list(student)
    last_middle = layout.num_layers - layout.adapter_blocks - 1
    return t_blocks[last_middle], s_blocks[layout.adapter_blocks + len(layout.kept_middle) - 1]


def hidden_state_loss(
    teacher: Any,
    student: Any,
    layout: OffsiteLayout,
    batch: dict[str, torch.Tensor],
    lm_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalised MSE between the emulator's and the true middle's output hidden states.

    ``sum((h_student - h_teacher)^2) / sum(h_teacher^2)`` over real (unpadded) tokens: the
    squared error relative to the teacher's mean square, so it reads the same at every
    layer and scale. Both models see the same input to the middle (the adapter's first
    blocks are identical and frozen here). With ``lm_weight > 0`` and a causal LM, also
    the student's next-token loss (the paper's task loss during distillation).
    """
    t_block, s_block = middle_output_blocks(teacher, student, layout)
    # no KV cache: a student reduced in memory keeps its blocks' original layer indices
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    with torch.no_grad(), _captured_output(t_block) as t_out:
        teacher.base_model(**inputs)  # the body only: no LM head is needed for the target
    lm_loss = None
    with _captured_output(s_block) as s_out:
        if lm_weight > 0 and hasattr(student, "lm_head"):
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            lm_loss = student(**inputs, labels=labels).loss
        else:
            student.base_model(**inputs)
    target, got = t_out[-1].float(), s_out[-1].float()
    mask = batch["attention_mask"].unsqueeze(-1).to(target.dtype)
    nmse = (((got - target) ** 2) * mask).sum() / ((target**2) * mask).sum().clamp_min(1e-12)
    return nmse, lm_loss


def distill_emulator(
    teacher: Any,
    student: Any,
    layout: OffsiteLayout,
    tokenizer: Any,
    settings: DistillSettings,
    texts: list[str] | None = None,
) -> dict[str, Any]:
    """Train the emulator's kept middle blocks to reproduce the true middle (in place).

    Only the kept middle blocks learn; embeddings and adapter blocks stay as the
    backbone has them. Returns what was done, with the normalised hidden-state MSE on a
    held-out batch of the public text before and after.
    """
    start = time.perf_counter()
    texts = texts if texts is not None else public_texts(settings.data)
    held_out, train_texts = texts[: settings.batch_size], texts[settings.batch_size :]
    if not train_texts:
        raise ConfigError("--distill-data", f"{settings.data}: too few texts to distil on")
    params = _train_middle_only(student, layout)
    teacher.eval()
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    lm_weight = settings.lm_weight if hasattr(student, "lm_head") else 0.0
    held_out_batch = _tokens(tokenizer, held_out, settings.max_length)

    before = _held_out_nmse(teacher, student, layout, held_out_batch)
    student.train()
    for _step in range(settings.steps):
        pick = torch.randint(len(train_texts), (settings.batch_size,), generator=generator)
        batch = _tokens(tokenizer, [train_texts[int(i)] for i in pick], settings.max_length)
        nmse, lm_loss = hidden_state_loss(teacher, student, layout, batch, lm_weight)
        loss = nmse if lm_loss is None else nmse + lm_weight * lm_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    after = _held_out_nmse(teacher, student, layout, held_out_batch)
    student.requires_grad_(False)
    return {
        "steps": settings.steps,
        "data": settings.data,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "lm_weight": lm_weight,
        "nmse_before": before,
        "nmse_after": after,
        "seconds": time.perf_counter() - start,
    }


def _train_middle_only(student: Any, layout: OffsiteLayout) -> list[torch.nn.Parameter]:
    """Freeze the student but its kept middle blocks; return their parameters."""
    _, s_blocks = block_list(student)
    middle = range(layout.adapter_blocks, layout.adapter_blocks + len(layout.kept_middle))
    student.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for position in middle:
        block = s_blocks[position]
        block.requires_grad_(True)
        params.extend(block.parameters())
    return params


def _tokens(tokenizer: Any, chunk: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        chunk, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _held_out_nmse(
    teacher: Any, student: Any, layout: OffsiteLayout, batch: dict[str, torch.Tensor]
) -> float:
    student.eval()
    with torch.no_grad():
        value, _ = hidden_state_loss(teacher, student, layout, batch)
    return float(value)
