"""Run every stage of one SecAgg+ round in-process, with chosen dropouts.

This is the protocol with the transport taken out — the same calls the round engine makes
through its backends — for tests, benchmarks and examples. A client listed in
``drop[stage]`` computes nothing from that stage on (it vanished before answering it);
``drop["unmask"]`` clients sent their masked input and then vanished.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedpeft.privacy.secagg.client import SecAggClient
from fedpeft.privacy.secagg.params import SecAggParams
from fedpeft.privacy.secagg.server import SecAggServer

__all__ = ["STAGES", "RoundRun", "simulate_round"]

STAGES = ("advertise", "share", "mask", "unmask")


@dataclass
class RoundRun:
    """What :func:`simulate_round` did: the server (its ``result()`` when the round
    completed), the clients, and CPU seconds per stage."""

    server: SecAggServer
    clients: dict[int, SecAggClient]
    client_seconds: dict[str, list[float]] = field(default_factory=dict)
    """stage -> CPU seconds of each client that ran it"""
    server_seconds: dict[str, float] = field(default_factory=dict)
    """stage -> CPU seconds of the server (receive, close, messages)"""


def simulate_round(
    params: SecAggParams,
    inputs: Mapping[int, np.ndarray],
    drop: Mapping[str, Collection[int]] | None = None,
) -> RoundRun:
    """Run the four stages; :class:`SecAggAborted` propagates from ``close_stage``."""
    drop = drop or {}
    unknown = set(drop) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; use {STAGES}")
    gone: set[int] = set()
    clock = time.process_time
    start = clock()
    server = SecAggServer(params)
    setup = clock() - start
    clients: dict[int, SecAggClient] = {}
    run = RoundRun(server, clients)

    for stage in STAGES:
        gone |= set(drop.get(stage, ()))
        run.client_seconds[stage] = []
        spent = setup if stage == "advertise" else 0.0
        for cid in server.expected():
            start = clock()
            msg = server.message_for(cid) if stage != "advertise" else b""
            spent += clock() - start
            if cid in gone:
                continue
            start = clock()
            if stage == "advertise":  # the client's keys are made here
                clients[cid] = SecAggClient(cid, params)
            client = clients[cid]
            if stage == "advertise":
                out = client.advertise_keys()
            elif stage == "share":
                out = client.share_keys(msg)
            elif stage == "mask":
                out = client.masked_input(msg, inputs[cid])
            else:
                out = client.unmask(msg)
            run.client_seconds[stage].append(clock() - start)
            start = clock()
            server.receive(cid, out)
            spent += clock() - start
        start = clock()
        try:
            server.close_stage()
        finally:
            run.server_seconds[stage] = spent + clock() - start
    return run
