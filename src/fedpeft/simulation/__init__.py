"""Simulation: hundreds of virtual clients on a few long-lived workers (in-process or Ray)."""

from fedpeft.simulation.run import make_backend, run_simulation

__all__ = ["make_backend", "run_simulation"]
