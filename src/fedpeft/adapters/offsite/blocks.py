"""Drop a backbone to its emulator's blocks; name the emulator's blocks as in the full model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedpeft.adapters.offsite.layout import OffsiteLayout
from fedpeft.errors import ModelError
from fedpeft.models.registry import block_list


class KeptBlocks(torch.nn.ModuleList):
    """The emulator's blocks, registered under their full-model index.

    Iteration and integer indexing are positional (what the transformers forward passes
    use); parameter and module *names* carry the full-model index, so an adapter trained
    on the emulator is named exactly as in the full backbone.
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], full_indices: Sequence[int]) -> None:
        super().__init__()
        if len(blocks) != len(full_indices):
            raise ModelError(f"{len(blocks)} blocks for {len(full_indices)} indices")
        for index, block in zip(full_indices, blocks, strict=True):
            self.add_module(str(index), block)

    def __getitem__(self, idx: Any) -> Any:
        modules = list(self._modules.values())
        if isinstance(idx, slice):
            return torch.nn.ModuleList(modules[idx])  # type: ignore[arg-type]
        return modules[idx]

    @property
    def full_indices(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self._modules)


def _set_block_list(model: Any, path: str, blocks: torch.nn.ModuleList) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, blocks)


def _set_num_layers(config: Any, kept: Sequence[int]) -> None:
    """Config of a model reduced to blocks ``kept`` (per-layer lists follow)."""
    full = int(config.num_hidden_layers)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == full:
        config.layer_types = [layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def drop_blocks(model: Any, layout: OffsiteLayout) -> Any:
    """Reduce a full model, in place, to the emulator's blocks (contiguous, as saved)."""
    path, blocks = block_list(model)
    if len(blocks) != layout.num_layers:
        raise ModelError(f"model has {len(blocks)} blocks, layout is for {layout.num_layers}")
    kept = layout.emulator_blocks
    _set_block_list(model, path, torch.nn.ModuleList([blocks[i] for i in kept]))
    _set_num_layers(model.config, kept)
    return model


def reindex_blocks(model: Any, layout: OffsiteLayout) -> Any:
    """Register a loaded emulator's blocks under their full-model indices (in place)."""
    path, blocks = block_list(model)
    if len(blocks) != len(layout.emulator_blocks):
        raise ModelError(
            f"emulator has {len(blocks)} blocks, its layout lists {len(layout.emulator_blocks)}"
        )
    _set_block_list(model, path, KeptBlocks(list(blocks), layout.emulator_blocks))
    return model
