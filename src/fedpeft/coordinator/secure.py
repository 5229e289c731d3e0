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
for which the cohort's sum, with room for the real DP noise on it, cannot wrap mod 2^bits;
a noisy sum that wrapped all the same is detected when decoded and fails the round.

Under distributed DP the round's parameters carry ``min_survivors`` (the ``n_min`` each
client's noise was sized for): the clients refuse to unmask for fewer declared survivors,
so no completed round carries less noise than the ledger records.

**Nothing per client in the clear.** The clients' learning report (examples, loss,
steps, clipped coordinates) is part of the masked vector: the round's line holds cohort
means derived from the decoded totals (``train_loss``, ``train_steps``,
``train_examples``, ``secagg_clipped_fraction``); any metric a client sends in the clear
is ignored and counted in ``client_metrics_dropped``. Classifier-calibration statistics
travel through a secure round of their own (:meth:`SecureRound.sum_statistics`).

**The sum's plausibility.** The coordinator knows how many inputs the sum holds (the
survivors); a decoded sum outside what that many honest clients can produce (values,
L2 norm under a client clip, weights, metric totals, statistics) fails the round with
the reason and leaves the adapter unchanged
(:func:`~fedpeft.privacy.secagg.updates.check_plausible`).
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

from fedpeft.coordinator.collect import Collected, RoundContext, round_record
from fedpeft.errors import ConfigError, ProtocolError
from fedpeft.privacy.secagg.updates import (
    NOISE_HEADROOM_SIGMAS,
    SecureEncoding,
    SecureSum,
    StatsEncoding,
    decode_secure_sum,
    decode_stats_sum,
    noise_allowance,
)
from fedpeft.protocol.messages import TaskSettings, Tensors, TrainResult, TrainTask

log = logging.getLogger(__name__)

STAGES = ("advertise", "share", "train", "unmask")
#: Without DP noise, levels are planned for this many times the cohort: the field holds
#: twice the range honest clients can reach, so a masked vector outside that range (a
#: hostile or broken client's) lands in the other half and the sum's plausibility check
#: sees it. The price: one bit of quantisation precision. (Under distributed DP the
#: noise headroom plays this part.)
PLAUSIBILITY_HEADROOM = 2


def auto_bits(compressed: bool, cohort: int) -> int:
    """Default field size: about 2^10 quantisation levels per client with a compressing
    codec (14 bits per sent coordinate for a cohort of 10: with density 0.1 and the
    protocol's keys and shares, > 20x fewer upload bytes than dense fp32), 2^16 dense."""
    return max(8, math.ceil(math.log2(max(2, cohort))) + (16 if not compressed else 10))


def plan_levels(
    bits: int,
    cohort: int,
    noise_multiplier: float = 0.0,
    *,
    noisy_clients: int | None = None,
    dim: int = 0,
) -> int:
    """Largest per-client integer range L for which the cohort's sum, with its noise,
    stays inside the field: ``cohort·L + 2·NOISE_HEADROOM_SIGMAS·sd < 2^(bits-1)``.

    ``sd`` is the real noise on the sum: each of the ``cohort`` clients adds discrete
    Gaussian noise of std ``σ = z·(L + √dim)/√noisy_clients`` (``z``: noise std over one
    client's integer L2 bound ``L + √dim`` on the sum of ``noisy_clients``), so
    ``sd = √cohort·σ``. Twice the decoder's allowance (:func:`check_no_wrap`) leaves a
    wrapped coordinate detectable."""
    half = 2 ** (bits - 1) - 1
    spread = 0.0
    if noise_multiplier > 0:
        spread = 2 * NOISE_HEADROOM_SIGMAS * noise_multiplier
        spread *= math.sqrt(cohort / max(1, noisy_clients or cohort))
    levels = int((half - spread * math.sqrt(dim)) // (cohort + spread))
    # the weight (up to weight_cap) and FedExP digits need base >= 2 to carry anything
    if levels < 2:
        raise ConfigError(
            "secagg.bits",
            f"{bits} bits leave {levels} quantisation levels per client for a cohort of "
            f"{cohort}{' with its DP noise' if noise_multiplier > 0 else ''}; raise secagg.bits",
        )
    return levels


def noise_fits(bits: int, cohort: int, levels: int, sigma: float) -> bool:
    """Whether ``cohort`` clients' values (±levels each) and twice the decoder's noise
    allowance for per-client noise ``sigma`` fit the field."""
    half = 2 ** (bits - 1) - 1
    return cohort * levels + 2 * noise_allowance(cohort, sigma) <= half


@dataclass
class SecureOutcome:
    """A secure round's result: the decoded sum (None when the round failed) and its
    traffic, timings and protocol view."""

    total: Any  # the decoded sum (SecureSum, or pooled statistics); None: failed
    results: list[TrainResult]  # the masked-input stage's results
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
        l2_clip: float = 0.0,
    ) -> SecureEncoding:
        """The round's public encoding. ``levels`` defaults to the widest range whose
        cohort sum fills at most half the field (:data:`PLAUSIBILITY_HEADROOM`);
        distributed DP passes its own ``levels`` (with noise headroom) and the per-client
        discrete Gaussian ``noise_sigma``; ``l2_clip``: the L2 norm the clients clip their
        update to (the DP clip), for the plausibility check. The clients' learning report
        always rides in the vector (``metrics``)."""
        if levels is None:
            levels = plan_levels(self.bits, PLAUSIBILITY_HEADROOM * cohort)
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
            metrics=True,
            examples_cap=self.weight_cap,
            l2_clip=l2_clip,
        )

    def check_strategy(self, strategy: Any) -> None:
        if strategy.needs_individual_updates:
            raise ConfigError(
                strategy.individual_updates_setting,
                f"{strategy.name} needs each client's update; secure aggregation gives the sum",
            )

    def collect(self, ctx: RoundContext, tasks: Sequence[TrainTask]) -> Collected:
        """One secure round: plan the public encoding (with the privacy mechanism's noise
        and weights), run the stages, and keep only the decoded sum."""
        dim = sum(int(np.prod(s, dtype=np.int64)) for s in ctx.shapes.values())
        sent = dim if self.density >= 1.0 else max(1, math.ceil(self.density * dim))
        plan = ctx.plan_encoding(bits=self.bits, cohort=len(tasks), dim=sent)
        clips = {t.settings.dp_clip for t in tasks}
        enc = self.encoding(
            ctx.round_num,
            len(tasks),
            ctx.shapes,
            with_sq_norm=ctx.needs_sq_norm,
            uniform_weights=plan.uniform_weights,
            clip_range=plan.clip_range,
            levels=plan.levels,
            noise_sigma=plan.noise_sigma,
            # the clip every client was told to apply (one value for the cohort)
            l2_clip=float(clips.pop() or 0.0) if len(clips) == 1 else 0.0,
        )

        def decode(field_sum: np.ndarray, clients: int) -> SecureSum:
            return decode_secure_sum(field_sum, enc, ctx.shapes, clients=clients)

        outcome = self.run(ctx.backend, ctx.round_num, tasks, enc, decode, ctx.on_result)
        trained = [r for r in outcome.results if r.error is None]
        record = round_record(ctx.round_num, len(tasks), len(outcome.survivors), outcome.rejected)
        record.update(_traffic(outcome, enc, trained))
        lrs = {t.settings.lr for t in tasks if t.settings.lr is not None}
        if len(lrs) == 1:  # the coordinator's own schedule, not a client's report
            record["lr"] = lrs.pop()
        # anything a client sent in the clear is ignored (its report is in the sum)
        dropped = sum(len(r.metrics) for r in trained)
        if dropped:
            record["client_metrics_dropped"] = dropped
        if outcome.total is not None:
            record.update(outcome.total.metric_means(len(outcome.survivors), enc.sent))
        out = Collected(
            record,
            len(outcome.survivors),
            total=outcome.total,
            # who trained (and so applied the downlink); their own state stays with them
            states={r.client_id: None for r in trained},
        )
        if outcome.failed is not None or outcome.total is None:
            out.failed = outcome.failed or "secure aggregation produced no sum"
        elif len(outcome.survivors) < ctx.min_fit_clients:
            out.failed = (
                f"{len(outcome.survivors)} survivors < min_fit_clients={ctx.min_fit_clients}; "
                "global adapter unchanged"
            )
        return out

    def sum_statistics(
        self,
        backend: Any,
        round_num: int,
        tasks: Sequence[TrainTask],
        *,
        module: str,
        classes: int,
        dim: int,
    ) -> tuple[Tensors | None, dict[str, Any]]:
        """Classifier-calibration statistics through a secure round: ``tasks`` (kind
        ``feature_stats``) return masked sums of counts, features and feature outer
        products (:class:`StatsEncoding`, 62-bit field); the pooled statistics of the
        survivors, or None and why, and the round's record (traffic, survivors)."""
        from fedpeft.privacy.secagg.encoding import MAX_BITS
        from fedpeft.privacy.secagg.updates import stats_clipped

        try:
            enc = StatsEncoding.plan(
                module,
                classes,
                dim,
                cohort=len(tasks),
                examples_cap=self.weight_cap,
                bits=MAX_BITS,
            )
        except ValueError as exc:
            return None, {"calibration_failed": f"{exc}; output layer left as trained"}
        clipped: list[int] = []

        def decode(field_sum: np.ndarray, clients: int) -> Tensors:
            pooled = decode_stats_sum(field_sum, enc, clients)
            clipped.append(stats_clipped(field_sum, enc))
            return pooled

        outcome = self.run(backend, round_num, tasks, enc, decode)
        record: dict[str, Any] = {
            "calibration_clients": len(outcome.survivors),
            "calibration_bytes_up": outcome.bytes_up,
            "calibration_bytes_down": outcome.bytes_down,
            "calibration_secagg_dropped": sorted(outcome.dropped),
        }
        if outcome.rejected:
            record["calibration_rejected"] = {str(k): v for k, v in outcome.rejected.items()}
        if outcome.failed is not None or outcome.total is None:
            why = outcome.failed or "secure aggregation produced no sum"
            record["calibration_failed"] = f"{why}; output layer left as trained"
            return None, record
        examples = float(outcome.total[f"{module}.class_count"].sum())
        record["calibration_clipped_fraction"] = clipped[0] / max(1.0, examples * dim)
        return outcome.total, record

    def run(
        self,
        backend: Any,
        round_num: int,
        train_tasks: Sequence[TrainTask],
        enc: SecureEncoding | StatsEncoding,
        decode: Callable[[np.ndarray, int], Any],
        on_result: Callable[[TrainResult], None] | None = None,
    ) -> SecureOutcome:
        """Advertise keys → share keys → masked inputs (``train_tasks``: training, or
        statistics) → unmask, then ``decode(sum, survivors)``; a round the protocol
        aborts, or whose sum is implausible (:class:`ProtocolError` from ``decode``), is
        an outcome with ``failed`` set."""
        from fedpeft.privacy.secagg import SecAggAborted, SecAggServer, plan_secagg
        from fedpeft.privacy.secagg import survivor_floor as floor

        cohort = [t.client_id for t in train_tasks]
        try:
            params = plan_secagg(
                cohort,
                length=enc.length,
                bits=enc.bits,
                round_num=round_num,
                seed=self.seed,
                dropout_fraction=self.tolerated_dropout,
                # distributed DP sized each client's noise for this many survivors (the
                # same rule as DpController.plan_distributed); clients check it
                min_survivors=floor(len(cohort), self.tolerated_dropout)
                if enc.noise_sigma > 0
                else 0,
                # every client checks it masks with the encoding the cohort was given
                encoding=enc.to_dict(),
            )
        except ConfigError as exc:  # e.g. a Poisson cohort below the minimum
            failed = f"secure aggregation cannot run this cohort: {exc}; global adapter unchanged"
            log.warning("round %d: %s", round_num, failed)
            return SecureOutcome(total=None, results=[], failed=failed)
        stages = _Stages(backend, SecAggServer(params), params.to_bytes(), train_tasks, on_result)
        try:
            stages.run("advertise", stages.cheap(cohort, "secagg_advertise"))
            stages.run("share", stages.cheap(stages.server.expected(), "secagg_share"))
            stages.out.results = stages.run("train", stages.train(enc), notify=True)
            stages.out.survivors = tuple(stages.server.survivors)
            stages.run("unmask", stages.cheap(stages.server.expected(), "secagg_unmask"))
            start = time.perf_counter()
            stages.out.total = decode(stages.server.result(), len(stages.out.survivors))
            stages.out.seconds["secagg_server_decode_seconds"] = time.perf_counter() - start
        except (SecAggAborted, ProtocolError) as exc:
            stages.out.failed = f"secure aggregation aborted: {exc}; global adapter unchanged"
            log.warning("round %d: %s", round_num, stages.out.failed)
        # dropped: every client that stopped answering at some stage (before or after its
        # masked input reached the sum) or whose message was refused
        stages.out.dropped = tuple(sorted(set(cohort) - stages.answered))
        return stages.out


class _Stages:
    """One secure round's stages through a backend: who answered, traffic, timings."""

    def __init__(
        self,
        backend: Any,
        server: Any,
        params_bytes: bytes,
        train_tasks: Sequence[TrainTask],
        on_result: Callable[[TrainResult], None] | None,
    ) -> None:
        self.backend = backend
        self.server = server  # fedpeft.privacy.secagg.SecAggServer
        self.params_bytes = params_bytes
        self.by_client = {t.client_id: t for t in train_tasks}
        self.on_result = on_result
        self.answered: set[int] = set(self.by_client)  # who answered every stage so far
        self.out = SecureOutcome(total=None, results=[])

    def cheap(self, clients: Sequence[int], kind: str) -> list[TrainTask]:
        """A cheap stage's tasks: the protocol message only (no weights, data or settings)."""
        return [
            dataclasses.replace(
                self.by_client[cid],
                downlink=b"",
                downlink_is_delta=False,
                indices=None,
                settings=TaskSettings(),
                kind=kind,
                secagg=(
                    self.params_bytes
                    if kind == "secagg_advertise"
                    else self.server.message_for(cid)
                ),
            )
            for cid in clients
        ]

    def train(self, enc: SecureEncoding | StatsEncoding) -> list[TrainTask]:
        """The masked-input stage: each survivor's training task with the encoding."""
        encoding = enc.to_dict()
        return [
            dataclasses.replace(
                self.by_client[cid],
                secagg=self.server.message_for(cid),
                settings=self.by_client[cid].settings.replace(secagg_encoding=encoding),
            )
            for cid in self.server.expected()
        ]

    def run(self, name: str, tasks: list[TrainTask], notify: bool = False) -> list[TrainResult]:
        from fedpeft.privacy.secagg import SecAggRejected

        start = time.perf_counter()
        accepted: set[int] = set()
        self.out.bytes_down += sum(len(t.secagg) + len(t.downlink) for t in tasks)
        results = self.backend.run(tasks, self.on_result if notify else None)
        self.out.bytes_up += sum(len(r.payload) for r in results)
        for result in sorted(results, key=lambda r: r.client_id):
            if result.error is not None:  # e.g. a client whose privacy policy refused
                log.warning(
                    "round %d, %s stage: client %d: %s",
                    result.round,
                    name,
                    result.client_id,
                    result.error,
                )
                self.out.rejected.setdefault(result.client_id, result.error)
                continue
            try:
                self.server.receive(result.client_id, result.payload)
                accepted.add(result.client_id)
            except SecAggRejected as exc:
                log.warning("round %d, %s stage: %s", tasks[0].round if tasks else 0, name, exc)
                self.out.rejected.setdefault(result.client_id, str(exc))
        self.answered.intersection_update(accepted)
        self.server.close_stage()
        self.out.seconds[f"secagg_{name}_seconds"] = time.perf_counter() - start
        return results


def _traffic(
    outcome: SecureOutcome, enc: SecureEncoding, trained: list[TrainResult]
) -> dict[str, Any]:
    """A secure round's traffic and protocol view for its metrics line."""
    masked_bytes = sum(len(r.payload) for r in trained)
    return {
        "bytes_up": outcome.bytes_up,
        "bytes_down": outcome.bytes_down,
        "secagg_survivors": len(outcome.survivors),
        "secagg_dropped": sorted(outcome.dropped),
        "secagg_bits": enc.bits,
        "secagg_levels": enc.levels,
        "secagg_coordinates_sent": enc.sent,
        # bits on the wire per adapter coordinate, masked vectors only
        "secagg_bits_per_coordinate": 8.0 * masked_bytes / max(1, len(trained)) / enc.dim,
        **outcome.seconds,
    }
