"""CSV/TSV columns by name or 0-based index, with or without a header row, several text
columns joined (AG News: title + description), and the errors that name the field."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeft.config import JobConfig
from fedpeft.data import load_dataset
from fedpeft.errors import ConfigError, DataError

AG_ROWS = [
    ("3", "Wall St. Bears Claw Back", "Short-sellers are seeing green again."),
    ("4", "New chip", "Intel unveils a faster chip."),
    ("3", "Oil prices", "Crude rises on supply fears."),
    ("2", "Final match", "The home side won in extra time."),
]


def write_table(path: Path, rows: list[tuple[str, ...]], delimiter: str, header: bool) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writerow(["label", "title", "description"])
    writer.writerows(rows)
    path.write_text(buf.getvalue())
    return path


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
@pytest.mark.parametrize("header", [False, True])
def test_index_columns_with_or_without_header(
    tmp_path: Path, suffix: str, delimiter: str, header: bool
) -> None:
    path = write_table(tmp_path / f"ag{suffix}", AG_ROWS, delimiter, header)
    data = load_dataset(str(path), text_column=[1, 2], label_column=0)  # header: auto
    assert len(data) == len(AG_ROWS)  # a header row is detected, never read as an example
    assert data.texts[0] == "Wall St. Bears Claw Back Short-sellers are seeing green again."
    assert data.label_names == ["2", "3", "4"]
    assert [data.label_names[y] for y in data.labels] == [r[0] for r in AG_ROWS]
    explicit = load_dataset(str(path), text_column=[1, 2], label_column=0, header=header)
    assert explicit == data


def test_names_join_several_text_columns(tmp_path: Path) -> None:
    path = write_table(tmp_path / "ag.csv", AG_ROWS, ",", header=True)
    data = load_dataset(str(path), text_column=["title", "description"], label_column="label")
    assert data.texts[1] == "New chip Intel unveils a faster chip."
    single = load_dataset(str(path), text_column="description", label_column="label")
    assert single.texts[1] == "Intel unveils a faster chip."
    mixed = load_dataset(str(path), text_column=["title", 2], label_column="label")
    assert mixed.texts == data.texts


def test_an_empty_cell_is_skipped_in_the_join_but_not_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("1,,only a description\n0,a title,\n1,,\n")
    with pytest.raises(DataError, match=r"d\.csv:3: empty text"):
        load_dataset(str(path), text_column=[1, 2], label_column=0, header=False)
    path.write_text("1,,only a description\n0,a title,\n")
    data = load_dataset(str(path), text_column=[1, 2], label_column=0, header=False)
    assert data.texts == ["only a description", "a title"]


def test_header_auto_detection_rule(tmp_path: Path) -> None:
    # indices only: the first row is a header when its label cell is no later row's label
    path = tmp_path / "d.csv"
    path.write_text("y,text\n1,good\n0,bad\n")
    assert len(load_dataset(str(path), text_column=1, label_column=0)) == 2
    path.write_text("1,good\n0,bad\n1,fine\n")
    assert len(load_dataset(str(path), text_column=1, label_column=0)) == 3
    # forced: header = true drops the first row whatever it holds
    assert len(load_dataset(str(path), text_column=1, label_column=0, header=True)) == 2


def test_errors_name_the_field_and_the_file(tmp_path: Path) -> None:
    path = write_table(tmp_path / "ag.csv", AG_ROWS, ",", header=False)
    with pytest.raises(DataError, match=r"missing column\(s\) \['text', 'label'\].*0-based"):
        load_dataset(str(path))  # names by default, but the file has no header row
    with pytest.raises(DataError, match=r"data.text_column 7 is out of range.*0\.\.2"):
        load_dataset(str(path), text_column=7, label_column=0)
    with pytest.raises(ConfigError, match=r"data.header.*no header row"):
        load_dataset(str(path), text_column="title", label_column=0, header=False)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n')
    with pytest.raises(ConfigError, match=r"data.text_column.*0-based indices \[0\]"):
        load_dataset(str(jsonl), text_column=0)
    with pytest.raises(ConfigError, match=r"data\.label_column"):
        load_dataset(str(path), text_column=1, label_column=-1)


def test_jsonl_joins_named_fields(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"title": "A", "body": "b", "label": "x"}\n{"title": "C", "body": "d", "label": "y"}\n'
    )
    data = load_dataset(str(path), text_column=["title", "body"])
    assert data.texts == ["A b", "C d"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data.text_column": []}, "data.text_column"),
        ({"data.text_column": [1.5]}, "data.text_column"),
        ({"data.label_column": -1}, "data.label_column"),
        ({"data.label_column": ["a", "b"]}, "data.label_column"),
        ({"data.header": "maybe"}, "data.header"),
    ],
)
def test_config_validates_columns(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        JobConfig().replace(overrides)


def test_config_columns_reach_the_job_data(tmp_path: Path) -> None:
    from fedpeft.training.setup import load_job_data

    path = write_table(tmp_path / "ag.csv", AG_ROWS, ",", header=False)
    cfg = JobConfig().replace(
        {
            "data.train": str(path),
            "data.eval": str(path),
            "data.text_column": [1, 2],
            "data.label_column": 0,
            "data.header": False,
        }
    )
    job = load_job_data(cfg)
    assert job.train == job.eval and len(job.train) == len(AG_ROWS)


CELL = st.text(alphabet="abcdefgh ,\"'\t;", min_size=1, max_size=12).filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["pos", "neg", "neu"]), CELL, CELL), min_size=2, max_size=12
    ),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_headerless_file_reads_like_its_headed_twin(
    tmp_path_factory: pytest.TempPathFactory, rows: list[tuple[str, str, str]], delimiter: str
) -> None:
    """Whatever the cells hold (quotes, delimiters), a file without a header row read by
    index gives the same examples as the same rows under a header read by name."""
    folder = tmp_path_factory.mktemp("twin")
    suffix = ".csv" if delimiter == "," else ".tsv"
    bare = write_table(folder / f"bare{suffix}", rows, delimiter, header=False)
    named = write_table(folder / f"named{suffix}", rows, delimiter, header=True)
    a = load_dataset(str(bare), text_column=[1, 2], label_column=0, header=False)
    b = load_dataset(str(named), text_column=["title", "description"], label_column="label")
    assert a == b
    assert a.texts == [f"{t.strip()} {d.strip()}" for _, t, d in rows]
