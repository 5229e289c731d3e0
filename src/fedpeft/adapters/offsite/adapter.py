"""The sandwich adapter: the first and last ``a`` blocks, trained whole or with LoRA."""

from __future__ import annotations

from typing import Any

from fedpeft.adapters.offsite.layout import OffsiteLayout
from fedpeft.config import OFFSITE_TRAIN_MODES, LoraSettings
from fedpeft.errors import ConfigError
from fedpeft.models.registry import Task, arch_spec, block_list


def apply_offsite_adapter(
    model: Any, layout: OffsiteLayout, mode: str, lora: LoraSettings, task: Task
) -> Any:
    """Make the adapter blocks (and a classification head) the only trainable parameters.

    ``mode = "lora"``: LoRA (``lora.r``, ``lora.alpha``, the architecture's targets) in the
    adapter blocks only, through peft's ``layers_to_transform``; ``"full"``: the whole
    adapter blocks. Works the same on the emulator and on the full backbone, which name
    their blocks alike (:class:`KeptBlocks`), so both produce the same tensor names.
    """
    if mode not in OFFSITE_TRAIN_MODES:
        raise ConfigError(
            "adapter.train", f"must be one of {list(OFFSITE_TRAIN_MODES)}, got {mode!r}"
        )
    spec = arch_spec(model.config.model_type)
    path, _blocks = block_list(model)
    head: list[str] = []
    if task is Task.CLASSIFICATION:
        wanted = lora.modules_to_save if lora.modules_to_save is not None else spec.head_modules
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        head = [h for h in wanted if h in names]
    if mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules or spec.lora_targets),
            layers_to_transform=list(layout.adapter_indices),
            layers_pattern=path.rsplit(".", 1)[-1],
            modules_to_save=head or None,
            task_type=TaskType.SEQ_CLS if task is Task.CLASSIFICATION else TaskType.CAUSAL_LM,
        )
        return get_peft_model(model, config)
    model.requires_grad_(False)
    trainable = [f"{path}.{i}" for i in layout.adapter_indices]
    for name, module in model.named_modules():
        if name in trainable or (head and name.rsplit(".", 1)[-1] in head):
            module.requires_grad_(True)
    return model
