"""Datasets from the Hugging Face hub, through the optional ``datasets`` package."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from typing import Any

from fedpeft.data.containers import Dataset
from fedpeft.data.records import from_records
from fedpeft.errors import DataError

# A hub id: "name" or "owner/name", optionally "@config" and ":split".
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w.-]+)?(:[\w.%:\[\]+-]+)?$")
_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".tab")


def looks_like_hub_id(source: str) -> bool:
    """Whether ``source``, not a local file, may name a hub dataset (not a missing path)."""
    if source.startswith((".", "/", "~")) or source.lower().endswith(_FILE_SUFFIXES):
        return False
    return _HUB_ID_RE.match(source) is not None


def load_hub(
    spec: str, source: str, text_columns: list[str], label_column: str, names: list[str] | None
) -> Dataset:
    """Load ``<id>[@<config>][:<split>]`` with the optional ``datasets`` package."""
    if importlib.util.find_spec("datasets") is None:
        raise DataError(
            f"{source}: loading from the Hugging Face hub needs the `datasets` package "
            f"(pip install datasets)"
        )
    import datasets as hf  # optional dependency

    repo, _, split = spec.partition(":")
    repo, _, config = repo.partition("@")
    split = split or "train"
    if not repo:
        raise DataError(f"{source}: empty hub dataset id")
    try:
        ds = hf.load_dataset(repo, config or None, split=split)
    except Exception as e:  # the hub raises many kinds; all mean "cannot load this"
        raise DataError(
            f"{source}: not a local file, and loading it from the Hugging Face hub "
            f"(id {repo!r}, config {config or None!r}, split {split!r}) failed: {e}"
        ) from e
    default_names: list[str] | None = None
    class_names: list[str] | None = None
    feature = (getattr(ds, "features", None) or {}).get(label_column)
    if feature is not None and getattr(feature, "names", None):
        class_names = [str(n) for n in feature.names]
        default_names = class_names

    def rows() -> Iterator[tuple[str, dict[str, Any]]]:
        for i, row in enumerate(ds):
            rec = dict(row)
            if class_names is not None and isinstance(rec.get(label_column), int):
                # A ClassLabel column stores indices; go through the names so that a
                # caller's label_names can reorder them.
                value = rec[label_column]
                if 0 <= value < len(class_names):
                    rec[label_column] = class_names[value]
            yield f"{source} (row {i})", rec

    return from_records(source, source, rows(), text_columns, label_column, names, default_names)
