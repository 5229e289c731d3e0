"""The coordinator's side of a securely aggregated round (SecAgg+, Bell et al. 2020).

A round runs the protocol's stages as task kinds through the same ``Backend.run`` as
training (in-process, Ray, gRPC): advertise keys → share keys → train and send a masked
input → unmask. The coordinator holds a :class:`fedpeft.privacy.secagg.SecAggServer`
that sees public keys, AES-GCM ciphertexts addressed to other clients, masked vectors
(uniform-looking integers mod 2^bits) and Shamir shares — and, after the last stage, only
the **sum** of the survivors' encoded updates, which :func:`decode_secure_sum` turns into
the weighted mean the strategy aggregates from. No single client's update is ever
decoded here: :class:`SecureRound` never calls a codec on a client payload.

The encoding of updates into integers (:class:`~fedpeft.privacy.secagg.updates.SecureEncoding`)
is public and planned here per round: ``levels`` is the largest per-client integer range
for which the cohort's sum, with DP noise headroom, cannot wrap mod 2^bits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.privacy.secagg.updates import SecureEncoding, SecureSum, decode_secure_sum
from fedpeft.protocol.messages import TrainResult, TrainTask

log = logging.getLogger(__name__)

#: DP noise headroom: the sum's noise stays inside the field with this many standard
#: deviations to spare (per coordinate; exceeding it wraps that coordinate)
NOISE_HEADROOM_SIGMAS = 8.0
STAGES = ("advertise", "share", "train", "unmask")


def auto_bits(compressed: bool, cohort: int) -> int:
    """Default field size: about 2^10 quantisation levels per client with a compressing
    codec (14 bits per sent coordinate for a cohort of 10: with density 0.1 and the
    protocol's keys and shares, > 20x fewer upload bytes than dense fp32), 2^16 dense."""
    return max(8, math.ceil(math.log2(max(2, cohort))) + (16 if not compressed else 10))


def plan_levels(bits: int, cohort: int, noise_multiplier: float = 0.0) -> int:
    """Largest per-client integer range L with |Σ| ≤ cohort·L + headroom·z·L < 2^(bits-1).

    The noise on the sum has std z·L in integer units (sensitivity L per client)."""
    half = 2 ** (bits - 1) - 1
    levels = int(half // (cohort + NOISE_HEADROOM_SIGMAS * noise_multiplier))
    # the weight (up to weight_cap) and FedExP digits need base >= 2 to carry anything
    if levels < 2:
        raise ConfigError(
            "secagg.bits",
            f"{bits} bits leave {levels} quantisation levels per client for a cohort of "
            f"{cohort}; raise secagg.bits",
        )
    return levels


@dataclass
class SecureOutcome:
    """A secure round's result: the decoded sum (None when the round failed) and its
    traffic, timings and protocol view."""

    total: SecureSum | None
    results: list[TrainResult]  # training results (payload = masked input), for metrics
    survivors: tuple[int, ...] = ()  # clients whose masked input is in the sum
    dropped: tuple[int, ...] = ()  # clients that stopped answering at some stage
    rejected: dict[int, str] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    failed: str | None = None


class SecureRound:
    """Runs one round's SecAgg+ stages through a backend and decodes only the sum."""

    def __init__(
        self,
        *,
        tolerated_dropout: float,
        bits: int,
        clip_range: float,
        weight_cap: int,
        density: float,
        seed: int,
    ) -> None:
        self.tolerated_dropout = tolerated_dropout
        self.bits = bits
        self.clip_range = clip_range
        self.weight_cap = weight_cap
        self.density = density
        self.seed = seed

    def encoding(
        self,
        round_num: int,
        cohort: int,
        shapes: dict[str, tuple[int, ...]],
        *,
        with_sq_norm: bool,
        uniform_weights: bool = False,
        clip_range: float | None = None,
        levels: int | None = None,
        noise_sigma: float = 0.0,
    ) -> SecureEncoding:
        """The round's public encoding. ``levels`` defaults to the widest range whose
        cohort sum cannot wrap; distributed DP passes its own ``levels`` (with noise
        headroom) and the per-client discrete Gaussian ``noise_sigma``."""
        levels = plan_levels(self.bits, cohort) if levels is None else levels
        names = tuple(shapes)
        sigma = noise_sigma
        return SecureEncoding(
            names=names,
            sizes=tuple(int(np.prod(shapes[n], dtype=np.int64)) for n in names),
            density=self.density,
            subset_seed=int(np.random.default_rng([self.seed, round_num, 0x5B5]).integers(2**62)),
            levels=levels,
            clip_range=self.clip_range if clip_range is None else clip_range,
            weight_cap=1 if uniform_weights else self.weight_cap,
            bits=self.bits,
            uniform_weights=uniform_weights,
            with_sq_norm=with_sq_norm,
            noise_sigma=sigma,
        )

    def run(
        self,
        backend: Any,
        round_num: int,
        train_tasks: Sequence[TrainTask],
        enc: SecureEncoding,
        shapes: dict[str, tuple[int, ...]],
        on_result: Callable[[TrainResult], None] | None = None,
    ) -> SecureOutcome:
        from fedpeft.privacy.secagg import SecAggAborted, SecAggRejected, SecAggServer, plan_secagg

        cohort = [t.client_id for t in train_tasks]
        by_client = {t.client_id: t for t in train_tasks}
        params = plan_secagg(
            cohort,
            length=enc.length,
            bits=enc.bits,
            round_num=round_num,
            seed=self.seed,
            dropout_fraction=self.tolerated_dropout,
        )
        server = SecAggServer(params)
        out = SecureOutcome(total=None, results=[])

        answered: set[int] = set(cohort)  # who answered every stage so far

        def stage(name: str, tasks: list[TrainTask], notify: bool = False) -> list[TrainResult]:
            start = time.perf_counter()
            accepted: set[int] = set()
            out.bytes_down += sum(len(t.secagg) + len(t.downlink) for t in tasks)
            results = backend.run(tasks, on_result if notify else None)
            out.bytes_up += sum(len(r.payload) for r in results)
            for result in sorted(results, key=lambda r: r.client_id):
                if result.error is not None:
                    out.rejected.setdefault(result.client_id, result.error)
                    continue
                try:
                    server.receive(result.client_id, result.payload)
                    accepted.add(result.client_id)
                except SecAggRejected as exc:
                    log.warning("round %d, %s stage: %s", round_num, name, exc)
                    out.rejected.setdefault(result.client_id, str(exc))
            answered.intersection_update(accepted)
            server.close_stage()
            out.seconds[f"secagg_{name}_seconds"] = time.perf_counter() - start
            return results

        def stage_task(cid: int, kind: str) -> TrainTask:
            """A cheap stage: the protocol message only (no weights, data or config)."""
            return dataclasses.replace(
                by_client[cid],
                downlink=b"",
                downlink_is_delta=False,
                indices=None,
                config={},
                kind=kind,
                secagg=server.message_for(cid) if kind != "secagg_advertise" else params_bytes,
            )

        params_bytes = params.to_bytes()
        try:
            stage("advertise", [stage_task(c, "secagg_advertise") for c in cohort])
            stage("share", [stage_task(c, "secagg_share") for c in server.expected()])
            config = {"secagg_encoding": enc.to_dict()}
            trained = [
                dataclasses.replace(
                    by_client[c],
                    secagg=server.message_for(c),
                    config={**by_client[c].config, **config},
                )
                for c in server.expected()
            ]
            out.results = stage("train", trained, notify=True)
            out.survivors = tuple(server.survivors)
            unmask = [stage_task(c, "secagg_unmask") for c in server.expected()]
            stage("unmask", unmask)
            start = time.perf_counter()
            field_sum = server.result()
            out.total = decode_secure_sum(field_sum, enc, shapes)
            out.seconds["secagg_server_decode_seconds"] = time.perf_counter() - start
        except (SecAggAborted, ProtocolError) as exc:
            out.failed = f"secure aggregation aborted: {exc}; global adapter unchanged"
            log.warning("round %d: %s", round_num, out.failed)
        # dropped: every client that stopped answering at some stage (before or after its
        # masked input reached the sum) or whose message was refused
        out.dropped = tuple(sorted(set(cohort) - answered))
        return out
