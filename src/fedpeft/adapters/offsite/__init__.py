"""Offsite-Tuning (Xiao, Lin, Han 2023, arXiv:2302.04870): emulator + sandwich adapter.

The model owner (the coordinator) keeps a backbone of ``L`` transformer blocks. The
**adapter** is the first ``a`` and last ``a`` blocks, trained by the clients either as
whole blocks (``adapter.train = "full"``, the paper's default) or with LoRA inside them
(``"lora"``: peft's ``layers_to_transform``). The ``L - 2a`` middle blocks are the owner's
secret: clients get an **emulator** in which the middle is compressed by uniform layer
drop (:func:`uniform_middle`: ``k`` evenly spaced middle blocks are kept, as in the
paper's ``uniform_choose_layers``), optionally distilled on public text
(:func:`distill_emulator`: MSE between the emulator's and the true middle's output hidden
states, normalised by the teacher's mean square, plus the next-token loss for causal LMs).

**Names.** The emulator's kept blocks are registered under their *full-model* index
(:class:`KeptBlocks`), so every parameter of the emulator is named exactly as in the full
model (``bert.encoder.layer.5.attention...``): the adapter state a client trains on the
emulator loads into the full backbone by name (:func:`load_trainable_state`), and peft
gets the same ``layers_to_transform`` on both. Dropped blocks simply have no names.

**Artifact.** :func:`build_emulator` writes a folder that transformers loads by itself
(``config.json`` with ``num_hidden_layers`` = the emulator's block count, contiguous
``model.safetensors`` holding only embeddings, the adapter blocks, the kept middle blocks
and the final norm/pooler, the tokenizer) plus ``offsite.json``
(:data:`EMULATOR_FILE`): which full-model block each emulator block is, the adapter
layout, and the SHA-256 of the backbone's weight files, checked against the coordinator's
backbone before a job runs.

**Modules.** :mod:`~.layout` says which blocks are adapter, kept and dropped;
:mod:`~.blocks` drops and renames them; :mod:`~.adapter` makes the adapter trainable;
:mod:`~.distill` trains the kept middle; :mod:`~.build` and :mod:`~.artifact` write and
read the emulator folder; :mod:`~.job` builds a job's client (emulator) and owner
(plug-in) models.
"""

from fedpeft.adapters.offsite.adapter import apply_offsite_adapter
from fedpeft.adapters.offsite.artifact import (
    EMULATOR_FILE,
    EmulatorInfo,
    backbone_sha256,
    check_backbone,
    emulator_weight_bytes,
    read_emulator,
)
from fedpeft.adapters.offsite.blocks import KeptBlocks, drop_blocks, reindex_blocks
from fedpeft.adapters.offsite.build import build_emulator
from fedpeft.adapters.offsite.distill import (
    DistillSettings,
    distill_emulator,
    hidden_state_loss,
    public_texts,
)
from fedpeft.adapters.offsite.job import build_emulator_model, build_plugin_model, job_emulator
from fedpeft.adapters.offsite.layout import (
    OffsiteLayout,
    check_adapter_blocks,
    keep_for_ratio,
    uniform_middle,
)

__all__ = [
    "EMULATOR_FILE",
    "DistillSettings",
    "EmulatorInfo",
    "KeptBlocks",
    "OffsiteLayout",
    "apply_offsite_adapter",
    "backbone_sha256",
    "build_emulator",
    "build_emulator_model",
    "build_plugin_model",
    "check_adapter_blocks",
    "check_backbone",
    "distill_emulator",
    "drop_blocks",
    "emulator_weight_bytes",
    "hidden_state_loss",
    "job_emulator",
    "keep_for_ratio",
    "public_texts",
    "read_emulator",
    "reindex_blocks",
    "uniform_middle",
]
