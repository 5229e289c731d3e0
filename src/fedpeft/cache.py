"""Where fedpeft keeps what it derives once: converted model weights, fetched datasets."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FEDPEFT_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$FEDPEFT_CACHE``, else ``~/.cache/fedpeft``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedpeft"
