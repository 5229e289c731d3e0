"""Adapters: LoRA via peft, and Offsite-Tuning's sandwich adapter on an emulator.

``ADAPTERS`` maps an adapter kind (``adapter.kind``) to the function that wraps a frozen
backbone; every kind exposes its trainable state as named tensors through the same
helpers, and an Offsite-Tuning adapter is named alike on the emulator and on the full
backbone (:mod:`fedpeft.adapters.offsite`).
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

ADAPTERS = {"lora": build_lora_model, "offsite": apply_offsite_adapter}

__all__ = [
    "ADAPTERS",
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
