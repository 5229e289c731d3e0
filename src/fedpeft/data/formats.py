"""Local data files: detect the format, read the rows, hand them on as records or pairs.

Every problem with a file or its content raises :class:`~fedpeft.errors.DataError`
naming the file and, where it applies, the line.
"""

from __future__ import annotations

import csv
import enum
import io
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedpeft.data.containers import INSTRUCTION_KEYS, Dataset
from fedpeft.data.records import classification, from_records
from fedpeft.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: a column of a data file: a name or, in CSV/TSV files, a 0-based index
Column = str | int


class DataFormat(enum.StrEnum):
    """On-disk formats :func:`load_dataset` understands."""

    LABELED_LINES = "labeled-lines"  # "<label> <text>" per line (SST-2, TREC files)
    JSONL = "jsonl"  # one JSON object per line
    JSON = "json"  # a JSON list of objects
    CSV = "csv"  # header row, comma separated
    TSV = "tsv"  # header row, tab separated
    ORANGE_TAB = "orange-tab"  # Orange's .tab: 3 header lines, then "label<TAB>text"


def names_only(source: str, what: str, texts: list[Column], label: Column) -> None:
    """Indices select CSV/TSV columns; records keyed by name need names."""
    for field, cols in (("data.text_column", texts), ("data.label_column", [label])):
        indices = [c for c in cols if isinstance(c, int)]
        if indices:
            raise ConfigError(
                field,
                f"0-based indices {indices} select columns of a CSV/TSV file; {source} is "
                f"read from {what}, whose records have named fields",
            )


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig drops a byte-order mark that spreadsheet exports like to add.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e


def _detect_format(path: Path, text: str, text_column: Column) -> DataFormat:
    suffix = path.suffix.lower()
    by_suffix = {
        ".jsonl": DataFormat.JSONL,
        ".csv": DataFormat.CSV,
        ".tsv": DataFormat.TSV,
        ".tab": DataFormat.ORANGE_TAB,
        ".txt": DataFormat.LABELED_LINES,
    }
    if suffix == ".json":
        # Some ".json" files are really JSON lines; the first character tells them apart.
        return DataFormat.JSONL if text.lstrip().startswith("{") else DataFormat.JSON
    if suffix in by_suffix:
        return by_suffix[suffix]
    stripped = text.lstrip()
    if stripped.startswith("["):
        return DataFormat.JSON
    if stripped.startswith("{"):
        return DataFormat.JSONL
    first = stripped.split("\n", 1)[0]
    if "\t" in first:
        return DataFormat.TSV
    header = next(csv.reader([first]), [])
    if len(header) > 1 and (
        isinstance(text_column, int) or text_column in header or "instruction" in header
    ):
        return DataFormat.CSV
    return DataFormat.LABELED_LINES


def load_file(
    path: Path,
    fmt: DataFormat | None,
    texts: list[Column],
    label_column: Column,
    header: bool | None,
    names: list[str] | None,
) -> Dataset:
    text = _read_text(path)
    detected = fmt is None
    fmt = fmt or _detect_format(path, text, texts[0])
    logger.debug("loading %s as %s", path, fmt.value)
    if fmt is DataFormat.LABELED_LINES:
        pairs = list(_labeled_lines(path, text))
        _check_plausible_labels(path, pairs, detected and names is None)
        return classification(path, pairs, names)
    if fmt is DataFormat.ORANGE_TAB:
        return classification(path, list(_orange_rows(path, text)), names)
    if fmt in (DataFormat.JSONL, DataFormat.JSON):
        names_only(str(path), f"a {fmt.value} file", texts, label_column)
        text_names, label_name = [str(c) for c in texts], str(label_column)
        records: Iterable[tuple[str, dict[str, Any]]] = (
            _jsonl_records(path, text) if fmt is DataFormat.JSONL else _json_records(path, text)
        )
    else:
        delimiter = "\t" if fmt is DataFormat.TSV else ","
        records, text_names, label_name = _csv_records(
            path, text, delimiter, texts, label_column, header
        )
    return from_records(path, str(path), records, text_names, label_name, names, None)


def _labeled_lines(path: Path, text: str) -> Iterator[tuple[str, str, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        where = f"{path}:{lineno}"
        if len(parts) < 2 or not parts[1].strip():
            raise DataError(f"{where}: empty text; expected '<label> <text>', got {_clip(line)!r}")
        yield where, parts[0], parts[1].strip()


def _check_plausible_labels(path: Path, pairs: list[tuple[str, str, str]], check: bool) -> None:
    # A prose .txt file (e.g. Shakespeare) also splits into "<word> <rest>"; thousands of
    # distinct "labels" give it away. Only checked when the format was guessed.
    if not check or len(pairs) < 20:
        return
    distinct = len({label for _, label, _ in pairs})
    if distinct > 1000 or distinct > len(pairs) // 2:
        raise DataError(
            f"{path}: does not look like labeled lines ('<label> <text>'): {distinct} distinct "
            f"first words in {len(pairs)} lines; pass format='labeled-lines' if it really is"
        )


def parse_orange_tab(path: Path) -> list[tuple[str, str, str]]:
    """Rows ``(where, label, text)`` of an Orange ``.tab`` file with a class and a text column.

    The layout is one line of column names (``Category<TAB>Text``), one of types
    (``d<TAB>string``), one of flags (``class<TAB>``), then one ``label<TAB>text`` row per
    example; blank lines are skipped.
    """
    return list(_orange_rows(path, _read_text(path)))


def _orange_rows(path: Path, text: str) -> Iterator[tuple[str, str, str]]:
    lines = text.splitlines()
    if len(lines) < 3:
        raise DataError(f"{path}: an Orange .tab file needs 3 header lines, found {len(lines)}")
    columns = lines[0].split("\t")
    flags = lines[2].split("\t")
    if len(columns) != 2 or "class" not in flags:
        raise DataError(
            f"{path}:1: expected 2 columns (class<TAB>text) with a 'class' flag on line 3, "
            f"got columns {columns} and flags {flags}"
        )
    label_at = flags.index("class")
    for lineno, line in enumerate(lines[3:], start=4):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        cells = line.split("\t")
        if len(cells) != 2:
            raise DataError(f"{where}: expected 2 tab-separated cells, got {len(cells)}")
        label, body = cells[label_at].strip(), cells[1 - label_at].strip()
        if not label:
            raise DataError(f"{where}: empty label")
        if not body:
            raise DataError(f"{where}: empty text")
        yield where, label, body


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield where, obj


def _json_records(path: Path, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(obj).__name__}")
    for i, item in enumerate(obj):
        where = f"{path} (item {i})"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
        yield where, item


def _csv_records(
    path: Path,
    text: str,
    delimiter: str,
    texts: list[Column],
    label: Column,
    header: bool | None,
) -> tuple[Iterator[tuple[str, dict[str, Any]]], list[str], str]:
    """Rows of a CSV/TSV file as records keyed by column name (``"0"``, ``"1"``, ... in a
    file without a header row), and the names the text and label columns resolve to."""
    rows = _csv_rows(path, text, delimiter)
    named = [c for c in [*texts, label] if isinstance(c, str)]
    has_header = _has_header(rows, named, label) if header is None else header
    if named and not has_header:
        raise ConfigError(
            "data.header",
            f"{path}: columns {named} are names but the file has no header row; "
            "select columns by 0-based index (--text-column 1 --label-column 0)",
        )
    first_line, first = rows[0]
    if has_header:
        columns, body, what = [c.strip() for c in first], rows[1:], "the header"
    else:
        columns, body, what = [str(i) for i in range(len(first))], rows, "the first row"
    where = f"{path}:{first_line}"
    text_names = [_column_name(where, what, columns, "data.text_column", c) for c in texts]
    label_name = _column_name(where, what, columns, "data.label_column", label)
    wanted = [*text_names, label_name]
    if has_header and set(INSTRUCTION_KEYS) <= set(columns) and not set(wanted) <= set(columns):
        wanted = list(INSTRUCTION_KEYS)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; the header has columns "
            f"{columns} (choose others with text_column=/label_column=; for a file without "
            f"a header row give 0-based indices, e.g. --text-column 1 --label-column 0)"
        )
    return _csv_body(path, body, columns, wanted, what), text_names, label_name


def _csv_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a CSV/TSV file with their line numbers."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):  # blank lines are skipped
                rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: cannot parse row ({e})") from e
    if not rows:
        raise DataError(f"{path}: no examples found (the file is empty)")
    return rows


def _column_name(where: str, what: str, columns: list[str], field: str, col: Column) -> str:
    """The name of column ``col``; a 0-based index must be within ``columns``."""
    if isinstance(col, int):
        if col >= len(columns):
            raise DataError(
                f"{where}: {field} {col} is out of range: {what} has "
                f"{len(columns)} columns (0-based indices 0..{len(columns) - 1})"
            )
        return columns[col]
    return col


def _csv_body(
    path: Path,
    body: list[tuple[int, list[str]]],
    columns: list[str],
    wanted: list[str],
    what: str,
) -> Iterator[tuple[str, dict[str, Any]]]:
    width = len(columns)
    for lineno, row in body:
        where = f"{path}:{lineno}"
        if len(row) > width:
            raise DataError(f"{where}: {len(row)} cells but {what} has {width}")
        rec = dict(zip(columns, row, strict=False))
        short = [c for c in wanted if c not in rec]
        if short:
            raise DataError(f"{where}: row has fewer cells than {what} (no {short})")
        yield where, rec


def _has_header(rows: list[tuple[int, list[str]]], named: Sequence[Column], label: Column) -> bool:
    """``data.header = "auto"``: named columns need a header row; with indices only, the
    first row is a header unless its label cell is also the label of a later row."""
    if named or not isinstance(label, int):
        return True
    first = rows[0][1]
    if len(rows) < 2 or label >= len(first):
        return False
    later = {row[label].strip() for _, row in rows[1:] if label < len(row)}
    return first[label].strip() not in later


def _clip(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
