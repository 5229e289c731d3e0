"""The one entry point, :func:`load_dataset`: a built-in name, a local file or the hub.

Bad arguments raise :class:`~fedpeft.errors.ConfigError` naming the field; problems
with a file or its content raise :class:`~fedpeft.errors.DataError` naming the file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from fedpeft.data.containers import Dataset, check_max_examples
from fedpeft.data.formats import Column, DataFormat, load_file, names_only
from fedpeft.data.hub import load_hub, looks_like_hub_id
from fedpeft.data.records import relabel
from fedpeft.errors import ConfigError, DataError


def load_dataset(
    source: str,
    *,
    format: str | DataFormat | None = None,
    text_column: Column | Sequence[Column] = "text",
    label_column: Column = "label",
    header: bool | None = None,
    label_names: Sequence[str] | None = None,
    max_examples: int | None = None,
) -> Dataset:
    """Load a dataset from a built-in name, a local file or the Hugging Face hub.

    ``source`` is resolved in this order:

    1. ``hf:<id>[@<config>][:<split>]`` -- always the hub (split defaults to ``train``);
    2. a built-in name such as ``"reuters-r8"`` or ``"reuters-r8:test"`` (see
       :mod:`fedpeft.data.builtin`); these names are reserved;
    3. an existing local file;
    4. a hub id (same syntax without ``hf:``) when the ``datasets`` package is installed.

    Otherwise :class:`DataError` ``file not found: <path>``.

    ``format`` is detected from the file extension (``.txt`` labeled lines, ``.jsonl``,
    ``.json``, ``.csv``, ``.tsv``, ``.tab``) or, failing that, from the content. JSON and
    JSONL objects with ``instruction``/``output`` keys become :class:`InstructionData` via
    the Alpaca templates; anything else is classification read from ``text_column`` and
    ``label_column``. A column is a name or, in CSV/TSV files, a 0-based index;
    ``text_column`` may list several, whose texts are joined with one space (AG News:
    title and description). ``header`` says whether a CSV/TSV file's first row names its
    columns; ``None`` detects it: with any column given by name the first row is the
    header, with indices only it is a header unless its label cell is also the label of
    a later row (a header's ``label`` is no class). Labels may be strings or integers.
    Without ``label_names`` the names are the sorted distinct labels (integer labels
    sorted numerically); with them, each label must be one of the names -- or, when no
    name looks like an integer, an integer index into them. ``max_examples`` keeps the
    first N examples; label names are worked out from the whole file first so they do
    not depend on N.
    """
    check_max_examples(max_examples)
    fmt = _coerce_format(format)
    names = _check_label_names(label_names)
    texts = _check_columns(text_column, label_column)
    return _take(_load_source(source, fmt, texts, label_column, header, names), max_examples)


def _load_source(
    source: str,
    fmt: DataFormat | None,
    texts: list[Column],
    label_column: Column,
    header: bool | None,
    names: list[str] | None,
) -> Dataset:
    """The whole dataset ``source`` names, resolved in :func:`load_dataset`'s order."""
    if source.startswith("hf:"):
        return _from_hub(source[3:], source, texts, label_column, names)

    # imported on use: `python -m fedpeft.data.builtin` must not find its module imported
    from fedpeft.data import builtin

    parsed = builtin.parse_builtin_source(source)
    if parsed is not None:
        data = builtin.load_builtin(*parsed)
        return data if names is None else relabel(data, names, source)

    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the path of a data file inside it")
    if path.is_file():
        return load_file(path, fmt, texts, label_column, header, names)

    if looks_like_hub_id(source) and importlib.util.find_spec("datasets") is not None:
        return _from_hub(source, source, texts, label_column, names)
    raise DataError(f"file not found: {path}")


def _from_hub(
    spec: str, source: str, texts: list[Column], label_column: Column, names: list[str] | None
) -> Dataset:
    names_only(source, "the Hugging Face hub", texts, label_column)
    return load_hub(spec, source, [str(c) for c in texts], str(label_column), names)


def _check_columns(text_column: Column | Sequence[Column], label_column: Column) -> list[Column]:
    """The text columns as a list; ConfigError naming the field for anything else."""
    texts: list[Column] = (
        [text_column] if isinstance(text_column, (str, int)) else list(text_column)
    )
    if not texts:
        raise ConfigError("data.text_column", "must name at least one column")
    for field, col in [
        *(("data.text_column", c) for c in texts),
        ("data.label_column", label_column),
    ]:
        if isinstance(col, bool) or not (
            (isinstance(col, str) and col.strip()) or (isinstance(col, int) and col >= 0)
        ):
            raise ConfigError(field, f"must be a column name or a 0-based index, got {col!r}")
    return texts


def _take(data: Dataset, max_examples: int | None) -> Dataset:
    if max_examples is None or max_examples >= len(data):
        return data
    return data.subset(range(max_examples))


def _coerce_format(fmt: str | DataFormat | None) -> DataFormat | None:
    if fmt is None or isinstance(fmt, DataFormat):
        return fmt
    try:
        return DataFormat(fmt)
    except ValueError:
        known = ", ".join(f.value for f in DataFormat)
        raise ConfigError("format", f"unknown format {fmt!r}; known formats: {known}") from None


def _check_label_names(label_names: Sequence[str] | None) -> list[str] | None:
    if label_names is None:
        return None
    if isinstance(label_names, str):
        raise ConfigError("label_names", "must be a sequence of strings, not a single string")
    names = [str(n) for n in label_names]
    if not names:
        raise ConfigError("label_names", "must not be empty")
    if any(not n.strip() for n in names):
        raise ConfigError("label_names", f"names must be non-empty strings, got {names}")
    if len(set(names)) != len(names):
        raise ConfigError("label_names", f"names must be distinct, got {names}")
    return names
