"""Adapters: LoRA via peft (Offsite-Tuning's sandwich adapter comes later).

``ADAPTERS`` maps an adapter kind to the function that wraps a frozen backbone;
every kind exposes its trainable state as named tensors through the same helpers.
"""

from fedpeft.adapters.lora import (
    Tensors,
    build_lora_model,
    load_trainable_state,
    trainable_shapes,
    trainable_state,
)

ADAPTERS = {"lora": build_lora_model}

__all__ = [
    "ADAPTERS",
    "Tensors",
    "build_lora_model",
    "load_trainable_state",
    "trainable_shapes",
    "trainable_state",
]
