"""Light imports: what a Ray worker or a client daemon loads before its app needs torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "fedpeft.client",
        "fedpeft.client.mods",
        "fedpeft.protocol.codecs",
        "fedpeft.simulation",
        "fedpeft.simulation.ray_backend",
        "fedpeft.protocol.messages",
        "fedpeft.protocol.transport",
        "fedpeft.client.factory",
        "fedpeft.coordinator.engine",
        "fedpeft.coordinator.server",
        "fedpeft.config",
    ],
)
def test_wire_side_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} pulled in torch"


def test_client_app_is_still_importable_from_the_package() -> None:
    from fedpeft.client import LoraClientApp
    from fedpeft.client.app import LoraClientApp as direct

    assert LoraClientApp is direct
