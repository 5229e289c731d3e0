"""Prometheus metrics of the coordinator (``--metrics-port``; prometheus-client).

One registry per coordinator (tests run several in one process). ε is set by whoever
owns the privacy accountant (``set_epsilon``) when DP is on.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class FleetMetrics:
    def __init__(self) -> None:
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
        self.epsilon = Gauge("fedpeft_dp_epsilon", "privacy spent so far (DP on)", registry=r)

    def set_epsilon(self, epsilon: float) -> None:
        self.epsilon.set(epsilon)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP on ``host:port`` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
