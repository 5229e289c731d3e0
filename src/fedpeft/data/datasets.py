"""Plain-Python dataset containers and the loaders that fill them.

Two task shapes exist in fedpeft:

* :class:`ClassificationData` -- texts with integer labels that index ``label_names``;
* :class:`InstructionData` -- prompt/response pairs for causal-LM fine-tuning, where
  the loss is taken on the response only.

:func:`load_dataset` reads a built-in dataset (``"reuters-r8"``, ``"reuters-r8:test"``),
a local file in one of the :class:`DataFormat` formats, or -- when the optional
``datasets`` package is installed -- a Hugging Face hub dataset. Every problem with a
file or its content raises :class:`~fedpeft.errors.DataError` naming the file and, where
it applies, the line; bad arguments raise :class:`~fedpeft.errors.ConfigError`.

Nothing here imports torch: tokenisation and tensors belong to the training code.
"""

from __future__ import annotations

import csv
import enum
import importlib.util
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.errors import ConfigError, DataError

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_NO_INPUT",
    "ClassificationData",
    "DataFormat",
    "Dataset",
    "InstructionData",
    "format_alpaca_prompt",
    "load_dataset",
    "parse_orange_tab",
]

logger = logging.getLogger(__name__)

# The Stanford Alpaca prompt templates (tatsu-lab/stanford_alpaca, ``PROMPT_DICT``), in the
# variant used by alpaca-lora and most PEFT recipes: the prompt ends with a newline after
# "### Response:" so the response starts on its own line.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

_INSTRUCTION_KEYS = ("instruction", "output")
_INT_RE = re.compile(r"^[+-]?\d+$")
# A hub id: "name" or "owner/name", optionally "@config" and ":split".
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w.-]+)?(:[\w.%:\[\]+-]+)?$")
_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".tab")


class DataFormat(enum.StrEnum):
    """On-disk formats :func:`load_dataset` understands."""

    LABELED_LINES = "labeled-lines"  # "<label> <text>" per line (SST-2, TREC files)
    JSONL = "jsonl"  # one JSON object per line
    JSON = "json"  # a JSON list of objects
    CSV = "csv"  # header row, comma separated
    TSV = "tsv"  # header row, tab separated
    ORANGE_TAB = "orange-tab"  # Orange's .tab: 3 header lines, then "label<TAB>text"


def _check_indices(idx: Sequence[int], n: int) -> list[int]:
    out = [int(i) for i in idx]
    for i in out:
        if not 0 <= i < n:
            raise IndexError(f"subset index {i} out of range for a dataset of {n} examples")
    return out


@dataclass(frozen=True)
class ClassificationData:
    """Texts with integer labels; ``labels[i]`` indexes ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"texts and labels differ in length ({len(self.texts)} != {len(self.labels)})"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"label_names has duplicates: {self.label_names}")
        k = len(self.label_names)
        for i, label in enumerate(self.labels):
            if not 0 <= label < k:
                raise DataError(f"label {label} of example {i} is outside 0..{k - 1}")

    @property
    def num_labels(self) -> int:
        """Number of classes (``len(label_names)``), whether or not each one occurs."""
        return len(self.label_names)

    def subset(self, idx: Sequence[int]) -> ClassificationData:
        """The examples at positions ``idx`` (in that order); label names are kept."""
        rows = _check_indices(idx, len(self))
        return ClassificationData(
            texts=[self.texts[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            label_names=list(self.label_names),
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class InstructionData:
    """Prompt/response pairs for causal-LM fine-tuning (loss on the response only)."""

    prompts: list[str]
    responses: list[str]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.responses):
            raise DataError(
                f"prompts and responses differ in length "
                f"({len(self.prompts)} != {len(self.responses)})"
            )

    def subset(self, idx: Sequence[int]) -> InstructionData:
        """The examples at positions ``idx`` (in that order)."""
        rows = _check_indices(idx, len(self))
        return InstructionData(
            prompts=[self.prompts[i] for i in rows],
            responses=[self.responses[i] for i in rows],
        )

    def __len__(self) -> int:
        return len(self.prompts)


Dataset = ClassificationData | InstructionData


def format_alpaca_prompt(instruction: str, input: str | None = None) -> str:
    """Fill the Alpaca template; an empty or missing ``input`` selects the no-input variant."""
    if input is not None and input.strip():
        return ALPACA_TEMPLATE.format(instruction=instruction, input=input)
    return ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction)


# --------------------------------------------------------------------------- entry point


Column = str | int


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

    if source.startswith("hf:"):
        _names_only(source, "the Hugging Face hub", texts, label_column)
        data = _load_hub(source[3:], source, [str(c) for c in texts], str(label_column), names)
        return _take(data, max_examples)

    from fedpeft.data import builtin  # local import: builtin imports this module

    parsed = builtin.parse_builtin_source(source)
    if parsed is not None:
        name, split = parsed
        bdata = builtin.load_builtin(name, split)
        if names is not None:
            bdata = _relabel(bdata, names, source)
        return _take(bdata, max_examples)

    path = Path(source).expanduser()
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the path of a data file inside it")
    if path.is_file():
        data = _load_file(path, fmt, texts, label_column, header, names)
        return _take(data, max_examples)

    if _looks_like_hub_id(source) and importlib.util.find_spec("datasets") is not None:
        _names_only(source, "the Hugging Face hub", texts, label_column)
        data = _load_hub(source, source, [str(c) for c in texts], str(label_column), names)
        return _take(data, max_examples)
    raise DataError(f"file not found: {path}")


def check_max_examples(max_examples: int | None) -> None:
    """Raise :class:`ConfigError` unless ``max_examples`` is None or a positive int."""
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ConfigError(
            "max_examples", f"must be a positive integer or None, got {max_examples!r}"
        )


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


def _names_only(source: str, what: str, texts: list[Column], label: Column) -> None:
    """Indices select CSV/TSV columns; records keyed by name need names."""
    for field, cols in (("data.text_column", texts), ("data.label_column", [label])):
        indices = [c for c in cols if isinstance(c, int)]
        if indices:
            raise ConfigError(
                field,
                f"0-based indices {indices} select columns of a CSV/TSV file; {source} is "
                f"read from {what}, whose records have named fields",
            )


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


def _looks_like_hub_id(source: str) -> bool:
    if source.startswith((".", "/", "~")) or source.lower().endswith(_FILE_SUFFIXES):
        return False
    return _HUB_ID_RE.match(source) is not None


# --------------------------------------------------------------------------- local files


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


def _load_file(
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
        return _classification(path, pairs, names)
    if fmt is DataFormat.ORANGE_TAB:
        return _classification(path, list(_orange_rows(path, text)), names)
    if fmt in (DataFormat.JSONL, DataFormat.JSON):
        _names_only(str(path), f"a {fmt.value} file", texts, label_column)
        text_names, label_name = [str(c) for c in texts], str(label_column)
        records: Iterable[tuple[str, dict[str, Any]]] = (
            _jsonl_records(path, text) if fmt is DataFormat.JSONL else _json_records(path, text)
        )
    else:
        delimiter = "\t" if fmt is DataFormat.TSV else ","
        records, text_names, label_name = _csv_records(
            path, text, delimiter, texts, label_column, header
        )
    return _from_records(path, str(path), records, text_names, label_name, names, None)


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

    def resolve(field: str, col: Column) -> str:
        if isinstance(col, int):
            if col >= len(columns):
                raise DataError(
                    f"{path}:{first_line}: {field} {col} is out of range: {what} has "
                    f"{len(columns)} columns (0-based indices 0..{len(columns) - 1})"
                )
            return columns[col]
        return col

    text_names = [resolve("data.text_column", c) for c in texts]
    label_name = resolve("data.label_column", label)
    wanted = [*text_names, label_name]
    if has_header and set(_INSTRUCTION_KEYS) <= set(columns) and not set(wanted) <= set(columns):
        wanted = list(_INSTRUCTION_KEYS)
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(
            f"{path}:{first_line}: missing column(s) {missing}; the header has columns "
            f"{columns} (choose others with text_column=/label_column=; for a file without "
            f"a header row give 0-based indices, e.g. --text-column 1 --label-column 0)"
        )

    def records() -> Iterator[tuple[str, dict[str, Any]]]:
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

    return records(), text_names, label_name


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


# --------------------------------------------------------------------------- records


def _from_records(
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
    instruction = set(_INSTRUCTION_KEYS) <= keys and not {*text_columns, label_column} <= keys

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
    return _classification(origin, pairs, names, default_names)


def _instruction(what: str, records: Iterable[tuple[str, dict[str, Any]]]) -> InstructionData:
    prompts: list[str] = []
    responses: list[str] = []
    empty_outputs = 0
    for where, rec in records:
        missing = [k for k in _INSTRUCTION_KEYS if k not in rec]
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


def _classification(
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


def _relabel(data: ClassificationData, names: list[str], source: str) -> ClassificationData:
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


# --------------------------------------------------------------------------- hub


def _load_hub(
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

    return _from_records(source, source, rows(), text_columns, label_column, names, default_names)


def _clip(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."
