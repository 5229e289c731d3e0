"""Shared fixtures: tiny datasets, the packaged MiniLM, paths to ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (tests that need ../shared/data skip without it)")
    return path


POSITIVE = [
    "a wonderful, moving film",
    "great acting and a lovely story",
    "i loved every minute",
    "brilliant and funny",
    "a joy to watch",
    "superb direction, warm heart",
]
NEGATIVE = [
    "a dull, boring mess",
    "terrible acting and a bad plot",
    "i hated every minute",
    "awful and tedious",
    "a waste of time",
    "clumsy, ugly and long",
]


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 `<label> <text>` lines, two classes (sentiment), deterministic."""
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    lines = []
    for i in range(4):
        for p, n in zip(POSITIVE, NEGATIVE, strict=True):
            lines.append(f"1 {p} {i}")
            lines.append(f"0 {n} {i}")
    path.write_text("\n".join(lines) + "\n")
    return path
