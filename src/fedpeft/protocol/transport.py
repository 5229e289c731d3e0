"""Transport rules both ends of the gRPC connection obey: message size limits, TLS files,
and when plaintext is allowed (loopback only, and only when asked for)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from fedpeft.errors import ConfigError

#: Largest single gRPC message either side accepts; payloads travel in 1 MiB chunks.
MAX_MESSAGE_BYTES = 8 << 20
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(host: str, tls: TlsFiles | None, insecure_localhost: bool, who: str) -> None:
    """TLS by default; plaintext only with ``--insecure-localhost`` on a loopback address."""
    if insecure_localhost:
        if tls is not None:
            raise ConfigError("--insecure-localhost", "give either TLS files or this, not both")
        if not is_loopback(host):
            raise ConfigError(
                "--insecure-localhost",
                f"plaintext is allowed on 127.0.0.1 only; {who} address is {host!r} "
                "(use TLS: --tls-cert/--tls-key)",
            )
        return
    if tls is None:
        raise ConfigError(
            "--tls-cert",
            "TLS is required: pass --tls-cert and --tls-key (see docs/deployment.md), or "
            "--insecure-localhost for plaintext on 127.0.0.1",
        )
    for name, path in (("--tls-cert", tls.cert), ("--tls-key", tls.key), ("--tls-ca", tls.ca)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(name, f"file not found: {path}")
