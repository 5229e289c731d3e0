"""The committed protobuf stubs match proto/fedpeft/v1 (regenerated with grpcio-tools 1.81.1)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # scripts/ is not a package: load gen_protos.py by path
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (the dev extra) is not installed")
    assert importlib.metadata.version("grpcio-tools") == "1.81.1", "stubs are pinned to 1.81.1"
    gen = _generator()
    written = gen.generate(tmp_path)
    names = sorted(p.name for p in written)
    committed = sorted(p.name for p in gen.STUB_DIR.iterdir() if p.is_file())
    assert names == committed, f"stub files differ: generated {names}, committed {committed}"
    stale = [p.name for p in written if p.read_text() != (gen.STUB_DIR / p.name).read_text()]
    assert not stale, f"stale stubs {stale}: run `python scripts/gen_protos.py` and commit"


def test_stub_imports_point_into_the_package() -> None:
    from fedpeft.protocol.v1 import fleet_pb2, fleet_pb2_grpc

    assert fleet_pb2.DESCRIPTOR.package == "fedpeft.v1"
    assert "fedpeft.protocol.v1" in fleet_pb2_grpc.fedpeft_dot_v1_dot_fleet__pb2.__name__


def test_only_serde_imports_the_stubs() -> None:
    src = ROOT / "src" / "fedpeft"
    importers = sorted(
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if "protocol/v1" not in str(p)
        and re.search(r"^\s*(from|import) fedpeft\.protocol\.v1", p.read_text(), re.MULTILINE)
    )
    assert importers == ["protocol/serde.py"]
