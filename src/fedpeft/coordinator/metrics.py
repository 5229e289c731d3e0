"""Prometheus metrics of the coordinator (``--metrics-port``; prometheus-client).

One registry per coordinator (tests run several in one process). The privacy gauge
``fedpeft_dp_epsilon`` exists only when the job runs with DP (``dp=True``): without DP
there is no budget to report, and a 0.0 would read as "no privacy spent".

:meth:`FleetMetrics.serve` answers ``GET /metrics`` and nothing else (404), on
127.0.0.1 unless given another address: the page tells anyone who reads it how the
federation is doing.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from fedpeft.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class FleetMetrics:
    def __init__(self, *, dp: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_completed = Gauge(
            "fedpeft_rounds_completed", "rounds committed (checkpointed)", registry=r
        )
        self.round = Gauge("fedpeft_round", "the round being run", registry=r)
        self.clients_registered = Gauge(
            "fedpeft_clients_registered", "clients ever registered", registry=r
        )
        self.clients_connected = Gauge(
            "fedpeft_clients_connected", "clients seen within the liveness window", registry=r
        )
        self.results = Counter(
            "fedpeft_results", "client results by outcome", ["outcome"], registry=r
        )
        self.rejected_calls = Counter(
            "fedpeft_rejected_calls", "calls refused with a gRPC status", ["code"], registry=r
        )
        self.bytes = Counter(
            "fedpeft_payload_bytes", "payload bytes by direction", ["direction"], registry=r
        )
        self.epsilon: Gauge | None = self._epsilon_gauge() if dp else None
        self._http: ThreadingHTTPServer | None = None

    def _epsilon_gauge(self) -> Gauge:
        return Gauge("fedpeft_dp_epsilon", "privacy spent so far", registry=self.registry)

    def set_epsilon(self, epsilon: float) -> None:
        """The budget spent so far; only a DP job reports one (the gauge appears then,
        if ``dp`` did not create it at 0 already)."""
        if self.epsilon is None:
            self.epsilon = self._epsilon_gauge()
        self.epsilon.set(epsilon)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Answer ``GET /metrics`` on ``host:port`` (a daemon thread); returns the bound
        port (``port`` 0: any free one). A port in use is a :class:`ConfigError`."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urlsplit(self.path).path != METRICS_PATH:
                    self.send_error(404, "only /metrics is served here")
                    return
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                "--metrics-port",
                f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}",
            ) from exc
        server.daemon_threads = True
        self._http = server
        thread = threading.Thread(target=server.serve_forever, name="fedpeft-metrics", daemon=True)
        thread.start()
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop serving ``/metrics`` (if it was served)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
