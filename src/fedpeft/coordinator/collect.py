"""How a round's updates reach the coordinator: a :class:`Collection`.

:class:`PlainCollection` decodes and validates every client's update (the strategy may
see each one). :class:`fedpeft.coordinator.secure.SecureRound` runs the SecAgg+ stages
and yields only the sum. Either way the engine gets a :class:`Collected`: the round's
record so far, and the updates or their sum (or why the round failed); the privacy
mechanism (:mod:`fedpeft.coordinator.privacy`) turns that into the mean the strategy
steps from.

What a client reports besides its update is data, never part of the round's record:
:data:`CLIENT_METRICS` lists the keys a client may send, each with the range its value
must lie in; anything else (an unknown key, a non-number, NaN, a value out of range) is
dropped and counted in the line's ``client_metrics_dropped``. None of the listed keys is a
key the coordinator writes (``round``, ``clients_*``, ``bytes_*``, ``round_failed``,
``eval_*``, …), so a client cannot set a round's number, counts, bytes, failure or
evaluation. The example count a client reports is capped (``federation.max_client_examples``):
beyond the cap the update is rejected, not averaged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fedpeft.aggregation import ClientUpdate
from fedpeft.compression import Codec, check_compatible
from fedpeft.errors import CodecError, UpdateRejected
from fedpeft.protocol.messages import ClientState, Tensors, TrainResult, TrainTask

if TYPE_CHECKING:
    from fedpeft.privacy.secagg.updates import SecureSum

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]

_SECONDS = (0.0, 1e7)  # about 4 months
_FRACTION = (0.0, 1.0)
_NON_NEGATIVE = (0.0, 1e12)

#: What a client may report about its own work (``TrainResult.metrics``), with the closed
#: range each value must lie in: the keys the fedpeft client sends
#: (:mod:`fedpeft.client.app`, its update mods and the SecAgg encoding). The round's line
#: holds their example-weighted mean (secure rounds: the plain mean) under these names.
CLIENT_METRICS: dict[str, tuple[float, float]] = {
    "train_loss": _NON_NEGATIVE,
    "lr": _NON_NEGATIVE,
    "train_steps": _NON_NEGATIVE,
    "train_seconds": _SECONDS,
    "client_seconds": _SECONDS,
    # wall time outside the training loop (elapsed − train_seconds, two clock readings)
    "overhead_seconds": (-1.0, _SECONDS[1]),
    "prefix_hit_rate": _FRACTION,
    "update_norm": _NON_NEGATIVE,
    "clip_factor": _FRACTION,
    "dp_clipped": _FRACTION,
    "secagg_clipped_fraction": _FRACTION,
    # Offsite-Tuning tiers (fedpeft.client.offsite): 1 for the tier the client trained
    # on (full backbone or emulator), 0 for the other
    "tier_full": _FRACTION,
    "tier_emulator": _FRACTION,
    # input tokens per second of local training (causal LMs: the LLM job's throughput)
    "train_tokens_per_second": _NON_NEGATIVE,
}
#: Indicators the round's line counts rather than averages (how many results were each)
COUNTED_CLIENT_METRICS = frozenset({"tier_full", "tier_emulator"})


def client_metrics(result: TrainResult) -> tuple[dict[str, float], int]:
    """The metrics of ``result`` that are listed in :data:`CLIENT_METRICS`, numeric and in
    range; and how many the client sent that were dropped."""
    kept: dict[str, float] = {}
    sent = result.metrics if isinstance(result.metrics, Mapping) else {}
    for key, value in sent.items():
        bounds = CLIENT_METRICS.get(key) if isinstance(key, str) else None
        if bounds is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        number = float(value)
        if math.isfinite(number) and bounds[0] <= number <= bounds[1]:
            kept[key] = number
    dropped = len(sent) - len(kept)
    if dropped:
        log.warning(
            "round %s: dropped %d of client %s's metrics (unlisted, not a number or out of range)",
            result.round,
            dropped,
            result.client_id,
        )
    return kept, dropped


def mean_client_metrics(
    reports: Sequence[tuple[Mapping[str, float], float]],
) -> dict[str, float]:
    """The weighted mean of each listed metric over the clients that reported it
    (``reports``: each client's kept metrics and its weight); the count of clients for an
    indicator in :data:`COUNTED_CLIENT_METRICS`."""
    out: dict[str, float] = {}
    for key in sorted({k for metrics, _ in reports for k in metrics}):
        pairs = [(m[key], w) for m, w in reports if key in m]
        if key in COUNTED_CLIENT_METRICS:
            out[key] = float(sum(round(v) for v, _ in pairs))
            continue
        total = sum(w for _, w in pairs)
        if total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out


@dataclass(frozen=True)
class EncodingPlan:
    """How clients encode a secure round's updates, as the privacy mechanism wants it
    (see SecureRound.encoding)."""

    uniform_weights: bool = False  # DP: every client weighs 1
    clip_range: float | None = None  # None: secagg.clip_range
    levels: int | None = None  # None: the widest range whose sum cannot wrap
    noise_sigma: float = 0.0  # each client's discrete Gaussian std (integer units)
    # fewest survivors whose noise the accountant counted (distributed DP's n_min; 0: no
    # floor beyond SecAgg's own): the round's SecAggParams.min_survivors, which clients enforce
    min_survivors: int = 0


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
    #: most examples one client may report (federation.max_client_examples, resolved)
    max_examples: int = 2**31 - 1


@dataclass
class Collected:
    """A round's collected updates: each one (``updates``) or only their sum (``total``),
    the round's record so far, which clients trained (and so now hold the task's version
    of the global adapter), or why the round failed."""

    record: dict[str, Any]
    clients: int  # whose updates are in what was collected (usable updates, survivors)
    updates: list[ClientUpdate] | None = None
    total: SecureSum | None = None
    # clients whose training task came back without error: they applied the downlink
    # (the values are ignored: a client's own state never reaches the coordinator)
    states: dict[int, ClientState | None] = field(default_factory=dict)
    failed: str | None = None

    @property
    def trained(self) -> list[int]:
        return sorted(self.states)


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


def check_examples(client_id: int, num_examples: object, max_examples: int) -> int:
    """A client's reported example count, or UpdateRejected naming it: an integer in
    [1, ``max_examples``] (the cap: ``federation.max_client_examples``). The gRPC edge
    calls this on a result's header before storing it."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int):
        raise UpdateRejected(client_id, f"num_examples must be an integer, got {num_examples!r}")
    if num_examples <= 0:
        raise UpdateRejected(client_id, "reports no training examples")
    if num_examples > max_examples:
        raise UpdateRejected(
            client_id,
            f"reports {num_examples} training examples, more than the cap of {max_examples} "
            "(federation.max_client_examples)",
        )
    return num_examples


def decode_update(
    result: TrainResult, codec: Codec, shapes: Shapes, max_examples: int = 2**31 - 1
) -> ClientUpdate:
    """Decode and validate one update (its example count against ``max_examples``);
    raises UpdateRejected naming the client. Its metrics are filtered by
    :func:`client_metrics`."""
    if result.error is not None:  # the client's own failure report comes first
        raise UpdateRejected(result.client_id, result.error)
    num_examples = check_examples(result.client_id, result.num_examples, max_examples)
    delta = payload_of(result, codec)
    check_compatible(delta, shapes, result.client_id)  # names, shapes, NaN/Inf
    metrics, _ = client_metrics(result)
    return ClientUpdate(result.client_id, num_examples, delta, metrics)


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
        states: dict[int, ClientState | None] = {}
        dropped = 0
        for result in sorted(results, key=lambda r: r.client_id):
            if result.ok:  # it applied the downlink, whether or not its update is used
                states[result.client_id] = None
            try:
                update = decode_update(result, ctx.uplink, ctx.shapes, ctx.max_examples)
            except UpdateRejected as exc:
                log.warning("round %d: %s", ctx.round_num, exc)
                rejected[result.client_id] = exc.reason
                continue
            updates.append(update)
            dropped += len(result.metrics) - len(update.metrics)
        record = round_record(ctx.round_num, len(tasks), len(updates), rejected)
        record.update(bytes_up=bytes_up, bytes_down=bytes_down)
        if dropped:
            record["client_metrics_dropped"] = dropped
        if len(updates) < ctx.min_fit_clients:
            failed = (
                f"{len(updates)} usable updates < min_fit_clients={ctx.min_fit_clients}; "
                "global adapter unchanged"
            )
            return Collected(record, len(updates), updates=updates, states=states, failed=failed)
        # clients' means first: nothing they report can overwrite the coordinator's keys
        means = mean_client_metrics([(u.metrics, float(u.num_examples)) for u in updates])
        record = {**means, **record}
        return Collected(record, len(updates), updates=updates, states=states)
