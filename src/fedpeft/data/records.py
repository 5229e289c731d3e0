"""Records (one dict per example) and ``(where, label, text)`` pairs into datasets.

Labels are worked out here: the sorted distinct labels by default (integer labels
sorted numerically), or the caller's ``label_names``, each label one of the names or,
when no name looks like an integer, an integer index into them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedpeft.data.containers import (
    INSTRUCTION_KEYS,
    ClassificationData,
    Dataset,
    InstructionData,
    format_alpaca_prompt,
)
from fedpeft.errors import DataError

logger = logging.getLogger(__name__)

_INT_RE = re.compile(r"^[+-]?\d+$")


def from_records(
    origin: Path | str,
    what: str,
    records: Iterable[tuple[str, dict[str, Any]]],
    text_columns: list[str],
    label_column: str,
    names: list[str] | None,
    default_names: list[str] | None,
) -> Dataset:
    it = iter(records)
    first = next(it, None)
    if first is None:
        raise DataError(f"{what}: no examples found (0 examples after parsing)")
    keys = set(first[1])
    instruction = set(INSTRUCTION_KEYS) <= keys and not {*text_columns, label_column} <= keys

    def chain() -> Iterator[tuple[str, dict[str, Any]]]:
        yield first
        yield from it

    if instruction:
        return _instruction(what, chain())
    pairs: list[tuple[str, Any, str]] = []
    for where, rec in chain():
        missing = [c for c in (*text_columns, label_column) if c not in rec]
        if missing:
            raise DataError(
                f"{where}: missing column(s) {missing}; columns present: {sorted(rec)} "
                f"(choose others with text_column=/label_column=)"
            )
        parts: list[str] = []
        for column in text_columns:
            cell = rec[column]
            if not isinstance(cell, str):
                raise DataError(
                    f"{where}: column {column!r} must hold text, got {type(cell).__name__}"
                )
            if cell.strip():
                parts.append(cell.strip())
        if not parts:
            shown = text_columns[0] if len(text_columns) == 1 else text_columns
            raise DataError(f"{where}: empty text in column {shown!r}")
        body = " ".join(parts)
        pairs.append((where, _label_str(where, rec[label_column], label_column), body))
    return classification(origin, pairs, names, default_names)


def _instruction(what: str, records: Iterable[tuple[str, dict[str, Any]]]) -> InstructionData:
    prompts: list[str] = []
    responses: list[str] = []
    empty_outputs = 0
    for where, rec in records:
        missing = [k for k in INSTRUCTION_KEYS if k not in rec]
        if missing:
            raise DataError(
                f"{where}: instruction record lacks {missing}; keys present: {sorted(rec)}"
            )
        instr, inp, out = rec["instruction"], rec.get("input"), rec["output"]
        for key, value in (("instruction", instr), ("output", out), ("input", inp)):
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
        if not instr or not instr.strip():
            raise DataError(f"{where}: empty text in 'instruction'")
        if out is None or not out.strip():
            # An empty response is still a valid target (the model learns to stop), and
            # public Alpaca data has a few; count them rather than reject the file.
            empty_outputs += 1
        prompts.append(format_alpaca_prompt(instr, inp))
        responses.append(out or "")
    if empty_outputs:
        logger.warning("%s: %d example(s) have an empty 'output'", what, empty_outputs)
    return InstructionData(prompts=prompts, responses=responses)


def _label_str(where: str, value: Any, column: str) -> str:
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: label {value!r} in column {column!r} is not a string or int")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty label in column {column!r}")
        return value.strip()
    raise DataError(
        f"{where}: label {value!r} in column {column!r} is not a string or int "
        f"({type(value).__name__})"
    )


def _sorted_names(raw: Iterable[str]) -> list[str]:
    distinct = set(raw)
    if distinct and all(_INT_RE.match(s) for s in distinct):
        return sorted(distinct, key=lambda s: (int(s), s))
    return sorted(distinct)


def _label_index(names: list[str]) -> dict[str, int]:
    """Map raw label strings to indices: names first, then integer indices if unambiguous."""
    index = {n: i for i, n in enumerate(names)}
    if not any(_INT_RE.match(n) for n in names):
        for i in range(len(names)):
            index.setdefault(str(i), i)
    return index


def classification(
    origin: Path | str,
    pairs: list[tuple[str, str, str]],
    names: list[str] | None,
    default_names: list[str] | None = None,
) -> ClassificationData:
    if not pairs:
        raise DataError(f"{origin}: no examples found (0 examples after parsing)")
    label_names = names or default_names or _sorted_names(label for _, label, _ in pairs)
    index = _label_index(label_names)
    labels: list[int] = []
    for where, raw, _ in pairs:
        i = index.get(raw)
        if i is None:
            raise DataError(f"{where}: label {raw!r} is not one of label_names {label_names}")
        labels.append(i)
    return ClassificationData(
        texts=[body for _, _, body in pairs], labels=labels, label_names=list(label_names)
    )


def relabel(data: ClassificationData, names: list[str], source: str) -> ClassificationData:
    """Re-index a loaded dataset's labels into a caller-given list of label names."""
    index = _label_index(names)
    mapping: dict[int, int] = {}
    for old, name in enumerate(data.label_names):
        new = index.get(name)
        if new is None:
            raise DataError(f"{source}: label {name!r} is not one of label_names {names}")
        mapping[old] = new
    return ClassificationData(
        texts=list(data.texts), labels=[mapping[y] for y in data.labels], label_names=names
    )
