"""Adapters: LoRA via peft, and Offsite-Tuning's sandwich adapter on an emulator.

Every kind (``adapter.kind``, declared in :data:`fedpeft.config.ADAPTER_KINDS`) exposes
its trainable state as named tensors through the same helpers, and an Offsite-Tuning
adapter is named alike on the emulator and on the full backbone
(:mod:`fedpeft.adapters.offsite`).
"""

from fedpeft.adapters.lora import (
    Tensors,
    build_lora_model,
    load_trainable_state,
    trainable_shapes,
    trainable_state,
)
from fedpeft.adapters.model import AdaptedModel
from fedpeft.adapters.offsite import (
    EmulatorInfo,
    OffsiteLayout,
    apply_offsite_adapter,
    build_emulator,
    read_emulator,
    uniform_middle,
)

__all__ = [
    "AdaptedModel",
    "EmulatorInfo",
    "OffsiteLayout",
    "Tensors",
    "apply_offsite_adapter",
    "build_emulator",
    "build_lora_model",
    "load_trainable_state",
    "read_emulator",
    "trainable_shapes",
    "trainable_state",
    "uniform_middle",
]
