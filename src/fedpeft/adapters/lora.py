"""LoRA through ``peft``: build the adapted model, get and set the adapter as named tensors.

peft is the reference implementation of LoRA; fedpeft only federates it. The adapter
state that travels between coordinator and clients is the set of *trainable*
parameters (``lora_A``, ``lora_B`` and, when classifying, the task head saved through
``modules_to_save``), keyed by their parameter names in the peft model. Those names are
stable for a given base model + config, so every party agrees on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fedpeft.config import LoraSettings
from fedpeft.errors import ConfigError, ModelError, UpdateRejected
from fedpeft.models.registry import Task, arch_spec, block_list

Tensors = dict[str, torch.Tensor]


def build_lora_model(base: Any, settings: LoraSettings, task: Task) -> Any:
    """Wrap ``base`` with a LoRA adapter (and a trainable task head when classifying)."""
    from peft import LoraConfig, TaskType, get_peft_model

    spec = arch_spec(base.config.model_type) if settings.target_modules is None else None
    targets = list(settings.target_modules or (spec.lora_targets if spec else ()))
    head: list[str] | None = None
    if task is Task.CLASSIFICATION:
        head = list(
            settings.modules_to_save
            if settings.modules_to_save is not None
            else (spec or arch_spec(base.config.model_type)).head_modules
        )
        # keep only head modules that exist in this model (e.g. a pooler may be absent)
        names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
        head = [h for h in head if h in names]
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        modules_to_save=head,
        task_type=TaskType.SEQ_CLS if task is Task.CLASSIFICATION else TaskType.CAUSAL_LM,
        **top_blocks(base, settings.layers),
    )
    model = get_peft_model(base, config)
    if settings.freeze_a:
        # FFA-LoRA (Sun et al., ICLR 2024): with A fixed, ΔW = B·A is linear in B, so the
        # mean of the clients' B is the mean of their ΔW — FedAvg of A and B separately is
        # not. A is identical everywhere because the caller seeds its initialisation.
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return model


def top_blocks(base: Any, layers: int) -> dict[str, Any]:
    """peft's ``layers_to_transform`` / ``layers_pattern`` for LoRA in the top ``layers``
    blocks of ``base`` (``lora.layers``); nothing for 0 (every block).

    Target modules outside the block list (``pooler.dense``) are then not adapted: peft
    adapts only modules inside a numbered block of the pattern.
    """
    if layers == 0:
        return {}
    try:
        path, blocks = block_list(base)
    except ModelError as exc:
        raise ConfigError("lora.layers", f"needs the model's block list: {exc}") from exc
    if layers > len(blocks):
        raise ConfigError(
            "lora.layers",
            f"{layers} exceeds the {len(blocks)} transformer blocks of `{base.config.model_type}`",
        )
    return {
        "layers_to_transform": list(range(len(blocks) - layers, len(blocks))),
        "layers_pattern": path.rsplit(".", 1)[-1],  # "layer" (BERT), "layers" (Llama), "h"
    }


def find_output_layer(model: Any) -> tuple[str, torch.nn.Linear]:
    """The trainable linear layer that produces the class logits, and its module name.

    ``ArchSpec.output_layer`` names it in the backbone (``classifier``, ``score``,
    ``classifier.out_proj``); under peft it is the active ``modules_to_save`` copy, whose
    name prefixes the adapter's ``weight``/``bias`` keys.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    want = arch_spec(base.config.model_type).output_layer
    for name, module in model.named_modules():
        plain = name.replace(".modules_to_save.default", "")
        if (
            isinstance(module, torch.nn.Linear)
            and (plain == want or plain.endswith("." + want))
            and module.weight.requires_grad
        ):
            return name, module
    raise ValueError(
        f"no trainable output layer `{want}` in the adapter: classifier calibration needs "
        "it in lora.modules_to_save"
    )


def trainable_state(model: torch.nn.Module) -> Tensors:
    """The adapter as named tensors: detached CPU float32 copies of the trainable parameters."""
    return {
        name: p.detach().to("cpu", torch.float32).clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def trainable_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(
    model: torch.nn.Module, state: Mapping[str, Any], *, source: int | str = "global"
) -> None:
    """Copy ``state`` into the trainable parameters in place (no re-allocation).

    Names and shapes must match exactly: a mismatch raises :class:`UpdateRejected`
    naming the offending tensor.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise UpdateRejected(
            source, f"adapter names differ: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for name, p in params.items():
        value = torch.as_tensor(state[name])
        if tuple(value.shape) != tuple(p.shape):
            raise UpdateRejected(
                source, f"`{name}` has shape {tuple(value.shape)}, expected {tuple(p.shape)}"
            )
        p.copy_(value.to(p.dtype))
