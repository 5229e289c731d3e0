"""How a round's updates reach the coordinator: a :class:`Collection`.

:class:`PlainCollection` decodes and validates every client's update (the strategy may
see each one). :class:`fedpeft.coordinator.secure.SecureRound` runs the SecAgg+ stages
and yields only the sum. Either way the engine gets a :class:`Collected`: the round's
record so far, and the updates or their sum (or why the round failed); the privacy
mechanism (:mod:`fedpeft.coordinator.privacy`) turns that into the mean the strategy
steps from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fedpeft.aggregation import ClientUpdate, weighted_metrics
from fedpeft.compression import Codec, check_compatible
from fedpeft.errors import CodecError, UpdateRejected
from fedpeft.protocol.messages import ClientState, Tensors, TrainResult, TrainTask

if TYPE_CHECKING:
    from fedpeft.privacy.secagg.updates import SecureSum

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class EncodingPlan:
    """How clients encode a secure round's updates, as the privacy mechanism wants it
    (see SecureRound.encoding)."""

    uniform_weights: bool = False  # DP: every client weighs 1
    clip_range: float | None = None  # None: secagg.clip_range
    levels: int | None = None  # None: the widest range whose sum cannot wrap
    noise_sigma: float = 0.0  # each client's discrete Gaussian std (integer units)


class PlanEncoding(Protocol):
    """The privacy mechanism's ``secure_plan``: the encoding for a cohort and a size."""

    def __call__(self, *, bits: int, cohort: int, dim: int) -> EncodingPlan: ...


@dataclass
class RoundContext:
    """What a collection needs from the engine for one round."""

    round_num: int
    backend: Any  # fedpeft.coordinator.engine.Backend
    uplink: Codec
    shapes: Shapes
    min_fit_clients: int
    needs_sq_norm: bool  # the strategy steps by the clients' spread (FedExP)
    plan_encoding: PlanEncoding  # the privacy mechanism's say in a secure encoding
    on_result: Callable[[TrainResult], None] | None = None


@dataclass
class Collected:
    """A round's collected updates: each one (``updates``) or only their sum (``total``),
    the round's record so far, the clients' new states, or why the round failed."""

    record: dict[str, Any]
    clients: int  # whose updates are in what was collected (usable updates, survivors)
    updates: list[ClientUpdate] | None = None
    total: SecureSum | None = None
    states: dict[int, ClientState] = field(default_factory=dict)
    failed: str | None = None


class Collection(Protocol):
    """Gathers one round's updates through a backend."""

    def check_strategy(self, strategy: Any) -> None: ...

    def collect(self, ctx: RoundContext, tasks: Sequence[TrainTask]) -> Collected: ...


def round_record(round_num: int, sampled: int, ok: int, rejected: dict[int, str]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "round": round_num,
        "clients_sampled": sampled,
        "clients_ok": ok,
        "clients_rejected": len(rejected),
    }
    if rejected:
        record["rejected"] = {str(k): v for k, v in rejected.items()}
    return record


def payload_of(result: TrainResult, codec: Codec) -> Tensors:
    """The tensors a client sent, or UpdateRejected naming it (its error, bad bytes)."""
    if result.error is not None:
        raise UpdateRejected(result.client_id, result.error)
    try:
        return codec.decode(result.payload)
    except CodecError as exc:
        raise UpdateRejected(result.client_id, str(exc)) from exc


def decode_update(result: TrainResult, codec: Codec, shapes: Shapes) -> ClientUpdate:
    """Decode and validate one update; raises UpdateRejected naming the client."""
    delta = payload_of(result, codec)
    check_compatible(delta, shapes, result.client_id)  # names, shapes, NaN/Inf
    if result.num_examples <= 0:
        raise UpdateRejected(result.client_id, "reports no training examples")
    return ClientUpdate(
        result.client_id,
        result.num_examples,
        delta,
        {k: float(v) for k, v in result.metrics.items()},
    )


class PlainCollection:
    """Every client's update reaches the coordinator, is decoded and validated."""

    def check_strategy(self, strategy: Any) -> None:
        del strategy  # any strategy can aggregate individual updates

    def collect(self, ctx: RoundContext, tasks: Sequence[TrainTask]) -> Collected:
        bytes_down = sum(len(t.downlink) for t in tasks)
        results = ctx.backend.run(tasks, ctx.on_result)
        bytes_up = sum(len(r.payload) for r in results)
        updates: list[ClientUpdate] = []
        rejected: dict[int, str] = {}
        states: dict[int, ClientState] = {}
        for result in sorted(results, key=lambda r: r.client_id):
            try:
                updates.append(decode_update(result, ctx.uplink, ctx.shapes))
            except UpdateRejected as exc:
                log.warning("round %d: %s", ctx.round_num, exc)
                rejected[result.client_id] = exc.reason
                continue
            if result.state is not None:
                states[result.client_id] = result.state
        record = round_record(ctx.round_num, len(tasks), len(updates), rejected)
        record.update(bytes_up=bytes_up, bytes_down=bytes_down)
        out = Collected(record, len(updates), updates=updates, states=states)
        if len(updates) < ctx.min_fit_clients:
            out.failed = (
                f"{len(updates)} usable updates < min_fit_clients={ctx.min_fit_clients}; "
                "global adapter unchanged"
            )
            return out
        record.update(weighted_metrics(updates))
        return out
