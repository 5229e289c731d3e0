"""The public encoding of a client's float update into the integer vector SecAgg+ masks,
and the decoding of the cohort's unmasked sum: the two ends of a secure round (the
client encodes, the coordinator decodes only the sum).

**The encoding** (:class:`SecureEncoding`, public, the same for the whole cohort, sent by
the coordinator with each masked-input task) turns a float update into ``length``
integers mod 2^bits:

1. flatten the adapter tensors in ``names`` order; with ``density < 1`` keep only a
   **shared** seeded coordinate subset (rotating every round) — per-client top-k positions
   cannot survive masking, a subset common to the cohort can; what was not sent stays in
   the client's error-feedback residual;
2. pre-weight: ``x = (w/W)·Δ`` with ``w = min(n_examples, W)`` (``W = weight_cap``), or
   ``w = 1`` under DP (uniform weights bound each client's contribution);
3. clip each coordinate to ``[-clip_range, clip_range]`` and round stochastically onto
   the grid ``clip_range/levels`` (unbiased inside the clip) — integers in
   ``[-levels, levels]``; ``levels`` is chosen by the coordinator so that the cohort's sum
   (plus DP noise headroom) never wraps mod 2^bits;
4. append the extra scalars as base-``levels`` digits (sums of digits carry no error
   because summation is linear): the weight ``w`` exactly — as many digits as
   ``weight_cap`` needs, never truncated — for FedExP the weighted squared norm
   ``(w/W)·‖Δ‖²``, and (``metrics``) the client's learning report as non-negative
   integers (:data:`METRIC_FIELDS`: examples, loss·examples in fixed point, local steps,
   clipped coordinates), so the coordinator learns their cohort totals, never one
   client's;
5. distributed DP: add discrete Gaussian noise (integers) to the value coordinates.

**Plausibility of the sum.** Masking hides each input, so a hostile client may send any
vector mod 2^bits. Given how many inputs the sum holds (the survivors, which the
coordinator knows), :func:`check_plausible` refuses a decoded sum outside the envelope
honest clients can produce: every value coordinate within ``±clients·levels`` (plus the
noise allowance), its L2 norm within ``clients`` times one client's bound when clients
clip their update (``l2_clip``: DP) plus the noise's, every digit sum within
``[0, clients·(levels − 1)]``, the weight within ``[clients, clients·weight_cap]`` (exactly
``clients`` with uniform weights), each metric total within ``clients`` times its
per-client maximum. A hostile client can still move the sum anywhere inside that
envelope (docs/secagg.md).

**Classifier-calibration statistics** (CCVR) travel through a secure round the same way
(:class:`StatsEncoding`): per class, the example count, the feature sum and the sum of
feature outer products, in fixed point; the pooled count, mean and scatter follow from
the totals alone (:func:`decode_stats_sum`).

**Wrap detection.** The noise is unbounded, so the field is sized with room for
``2·NOISE_HEADROOM_SIGMAS`` standard deviations of the noise on the sum
(``√clients · noise_sigma``) beyond the values' range (``fedpeft.coordinator.secure``), and
the decoder refuses a sum with any coordinate beyond the values' range plus
``NOISE_HEADROOM_SIGMAS`` of them: a coordinate that wrapped lands at least that far out
unless its noise exceeded 24 standard deviations, so a wrapped sum fails the round instead
of decoding into a wrong adapter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedpeft.errors import ProtocolError
from fedpeft.privacy.secagg.encoding import dequantize, from_field, quantize, to_field
from fedpeft.protocol.messages import Tensors

#: Extra scalar coordinates after the values, in this order: the weight (as many digits
#: as ``weight_cap`` needs, :attr:`SecureEncoding.weight_digits`), then FedExP's spread,
#: then the learning metrics (:data:`METRIC_FIELDS`).
SQ_NORM_DIGITS = 3
#: The learning report a client's masked vector carries when ``SecureEncoding.metrics``:
#: non-negative integers summed over the cohort. ``examples``: ``min(n_i, examples_cap)``;
#: ``loss_sum``: the mean training loss, clipped to :data:`LOSS_MAX`, in units of
#: 1/:data:`LOSS_SCALE`, times ``examples``; ``steps``: local optimizer steps (at most
#: :data:`STEPS_MAX`); ``clipped``: value coordinates the encoding clipped.
METRIC_FIELDS = ("examples", "loss_sum", "steps", "clipped")
LOSS_SCALE = 1000
LOSS_MAX = 100.0
STEPS_MAX = 10**7
#: Distributed DP: a decoded coordinate may exceed the values' range by this many standard
#: deviations of the noise on the sum; the field leaves twice as much room (see above).
NOISE_HEADROOM_SIGMAS = 8.0


@dataclass(frozen=True)
class SecureEncoding:
    """The round's public encoding of updates into integers (see the module docstring)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]  # elements per tensor, in ``names`` order
    density: float  # 1.0: every coordinate; else a shared seeded subset of this fraction
    subset_seed: int  # public, per round
    levels: int  # per-client integer range [-levels, levels]
    clip_range: float
    weight_cap: int
    bits: int
    uniform_weights: bool  # DP: every client weighs 1
    with_sq_norm: bool  # FedExP's spread scalar
    noise_sigma: float = 0.0  # distributed DP: per-client discrete Gaussian std (integer units)
    metrics: bool = False  # the learning report rides as extra coordinates (METRIC_FIELDS)
    examples_cap: int = 1  # most examples one client's report counts (metrics)
    l2_clip: float = 0.0  # DP: the L2 norm each client clipped its update to (0: none)

    @property
    def dim(self) -> int:
        return int(sum(self.sizes))

    @property
    def sent(self) -> int:
        """Value coordinates sent per client."""
        return self.dim if self.density >= 1.0 else max(1, math.ceil(self.density * self.dim))

    @property
    def weight_digits(self) -> int:
        """Base-``levels`` digits that hold any weight up to ``weight_cap`` exactly."""
        return digits_for(self.weight_cap, self.levels)

    def metric_max(self) -> dict[str, int]:
        """The largest value one honest client reports for each metric field."""
        cap = max(1, self.examples_cap)
        return {
            "examples": cap,
            "loss_sum": round(LOSS_MAX * LOSS_SCALE) * cap,
            "steps": STEPS_MAX,
            "clipped": self.sent,
        }

    def metric_digits(self) -> dict[str, int]:
        """Base-``levels`` digits of each metric field (empty without ``metrics``)."""
        if not self.metrics:
            return {}
        return {k: digits_for(v, self.levels) for k, v in self.metric_max().items()}

    @property
    def length(self) -> int:
        """Integers in the masked vector: the values, then the weight, FedExP and metric
        digits."""
        sq = SQ_NORM_DIGITS if self.with_sq_norm else 0
        return self.sent + self.weight_digits + sq + sum(self.metric_digits().values())

    def subset(self) -> np.ndarray | None:
        """Sorted indices of the shared coordinate subset (None: all coordinates)."""
        if self.density >= 1.0:
            return None
        rng = np.random.default_rng([self.subset_seed, 0x5EC])
        return np.sort(rng.choice(self.dim, size=self.sent, replace=False))

    @property
    def sq_norm_max(self) -> float:
        """Upper end of the squared-norm scalar's range (every sent value at the clip)."""
        return self.sent * self.clip_range**2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["names"] = list(self.names)
        data["sizes"] = list(self.sizes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecureEncoding:
        try:
            return cls(
                names=tuple(str(n) for n in data["names"]),
                sizes=tuple(int(s) for s in data["sizes"]),
                density=float(data["density"]),
                subset_seed=int(data["subset_seed"]),
                levels=int(data["levels"]),
                clip_range=float(data["clip_range"]),
                weight_cap=int(data["weight_cap"]),
                bits=int(data["bits"]),
                uniform_weights=bool(data["uniform_weights"]),
                with_sq_norm=bool(data["with_sq_norm"]),
                noise_sigma=float(data.get("noise_sigma", 0.0)),
                metrics=bool(data.get("metrics", False)),
                examples_cap=int(data.get("examples_cap", 1)),
                l2_clip=float(data.get("l2_clip", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed secure-aggregation encoding: {exc}") from exc


def digits_for(maximum: int, base: int) -> int:
    """Base-``base`` digits that hold every integer in ``[0, maximum]``."""
    digits, capacity = 1, base
    while capacity <= maximum:
        digits, capacity = digits + 1, capacity * base
    return digits


def to_digits(value: int, base: int, digits: int) -> list[int]:
    """``value`` (0 <= value < base**digits) as little-endian base-``base`` digits; a value
    that does not fit is refused, never truncated."""
    if not 0 <= value < base**digits:
        raise ValueError(f"{value} does not fit in {digits} base-{base} digits")
    out = []
    for _ in range(digits):
        value, digit = divmod(value, base)
        out.append(digit)
    return out


def from_digits(digit_sums: np.ndarray, base: int) -> int:
    """Σ_j digit_sums[j]·base^j — the sum of the clients' values, digits summed separately."""
    return int(sum(int(d) * base**j for j, d in enumerate(digit_sums)))


def flatten(tensors: Tensors, names: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(tensors[n], np.float64).ravel() for n in names])


def encode_secure(
    delta: Tensors,
    enc: SecureEncoding,
    num_examples: int,
    rng: np.random.Generator,
    report: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """The integer vector (uint64 mod 2^bits) of one client's update, the part of the
    update that was not sent (the new error-feedback residual as a flat vector, or None
    when every coordinate was sent) and what the encoding did (for the client's own log:
    it is not sent in the clear). ``report``: the client's ``train_loss`` and
    ``train_steps``, carried as masked metric digits when ``enc.metrics``."""
    flat = flatten(delta, enc.names)
    idx = enc.subset()
    sent = flat if idx is None else flat[idx]
    residual = None
    if idx is not None:
        residual = flat.copy()
        residual[idx] = 0.0
    w = 1 if enc.uniform_weights else min(int(num_examples), enc.weight_cap)
    scale = 1.0 if enc.uniform_weights else w / enc.weight_cap
    ints, clipped = quantize(sent * scale, clip=enc.clip_range, levels=enc.levels, rng=rng)
    extras = to_digits(w, enc.levels, enc.weight_digits)
    if enc.with_sq_norm:
        sq = min(scale * float(np.dot(sent, sent)), enc.sq_norm_max)
        top = enc.levels**SQ_NORM_DIGITS - 1
        # min: float rounding of top (levels³ − 1) may round a norm at the clip past it
        level = min(round(sq / enc.sq_norm_max * top), top)
        extras += to_digits(level, enc.levels, SQ_NORM_DIGITS)
    if enc.metrics:
        values = metric_values(enc, num_examples, report or {}, round(clipped * enc.sent))
        for key, digits in enc.metric_digits().items():
            extras += to_digits(values[key], enc.levels, digits)
    if enc.noise_sigma > 0:
        from fedpeft.privacy.discrete_gaussian import sample_discrete_gaussian

        ints = ints + sample_discrete_gaussian(enc.noise_sigma, ints.shape, rng)
    vector = np.concatenate([np.asarray(ints, np.int64), np.asarray(extras, np.int64)])
    info = {"secagg_clipped_fraction": float(clipped)}
    return to_field(vector, enc.bits), residual, info


def metric_values(
    enc: SecureEncoding, num_examples: int, report: Mapping[str, float], clipped: int
) -> dict[str, int]:
    """One client's learning report as the non-negative integers of :data:`METRIC_FIELDS`
    (each within :meth:`SecureEncoding.metric_max`)."""
    loss = float(report.get("train_loss", 0.0))
    steps = float(report.get("train_steps", 0))
    if not math.isfinite(loss) or not math.isfinite(steps):
        raise ValueError(f"a non-finite learning report (loss {loss}, steps {steps})")
    examples = min(max(int(num_examples), 0), max(1, enc.examples_cap))
    return {
        "examples": examples,
        "loss_sum": round(min(max(loss, 0.0), LOSS_MAX) * LOSS_SCALE) * examples,
        "steps": int(min(max(steps, 0.0), STEPS_MAX)),
        "clipped": min(max(int(clipped), 0), enc.sent),
    }


def unflatten(flat: np.ndarray, enc: SecureEncoding, shapes: dict[str, tuple[int, ...]]) -> Tensors:
    out: Tensors = {}
    offset = 0
    for name, size in zip(enc.names, enc.sizes, strict=True):
        out[name] = flat[offset : offset + size].reshape(shapes[name]).astype(np.float32)
        offset += size
    return out


@dataclass(frozen=True)
class SecureSum:
    """What the coordinator decodes from the unmasked sum."""

    mean: Tensors  # Σ w_i x_i / Σ w_i expanded to every tensor (zeros off the subset)
    total_weight: float  # Σ w_i (uniform weights: the number of clients summed)
    mean_sq_norm: float | None  # Σ p_i ‖Δ_i‖² (FedExP)
    value_sum: np.ndarray  # the summed values in float units (for noise / tests)
    #: cohort totals of the learning report (METRIC_FIELDS; empty without ``metrics``)
    metric_totals: dict[str, int] = field(default_factory=dict)

    def metric_means(self, clients: int, sent: int) -> dict[str, float]:
        """The round line's cohort means from the totals: the example-weighted mean loss,
        steps per client, the share of sent coordinates clipped, examples in all."""
        t = self.metric_totals
        if not t or clients < 1:
            return {}
        out = {
            "train_examples": float(t["examples"]),
            "train_steps": t["steps"] / clients,
            "secagg_clipped_fraction": t["clipped"] / (clients * max(1, sent)),
        }
        if t["examples"] > 0:
            out["train_loss"] = t["loss_sum"] / (LOSS_SCALE * t["examples"])
        return out


def decode_secure_sum(
    field_sum: np.ndarray,
    enc: SecureEncoding,
    shapes: dict[str, tuple[int, ...]],
    clients: int | None = None,
) -> SecureSum:
    """Decode the unmasked sum (uint64 mod 2^bits) of a cohort's encoded updates.
    ``clients``: how many inputs the sum holds (the coordinator's survivor count); given,
    the sum must pass :func:`check_plausible` or :class:`ProtocolError` is raised."""
    ints = from_field(np.asarray(field_sum, np.uint64), enc.bits)
    if ints.shape != (enc.length,):
        raise ProtocolError(f"the unmasked sum has {ints.size} integers, not {enc.length}")
    extras = ints[enc.sent :]
    weight = from_digits(extras[: enc.weight_digits], enc.levels)
    if clients is not None:
        check_plausible(ints, enc, clients)
    if weight <= 0:
        raise ProtocolError(f"the unmasked weights sum to {weight}; nothing to average")
    if enc.noise_sigma > 0:
        check_no_wrap(ints[: enc.sent], enc, clients=weight if enc.uniform_weights else None)
    values = dequantize(ints[: enc.sent], clip=enc.clip_range, levels=enc.levels)
    # Σ (w_i/W)·Δ_i · W / Σ w_i = the weighted mean; uniform weights: Σ Δ_i / k
    factor = 1.0 / weight if enc.uniform_weights else enc.weight_cap / weight
    flat = np.zeros(enc.dim, np.float64)
    idx = enc.subset()
    if idx is None:
        flat[:] = values * factor
    else:
        flat[idx] = values * factor
    mean_sq = None
    start = enc.weight_digits
    if enc.with_sq_norm:
        top = enc.levels**SQ_NORM_DIGITS - 1
        digits = extras[start : start + SQ_NORM_DIGITS]
        total_sq = from_digits(digits, enc.levels) / top * enc.sq_norm_max
        mean_sq = total_sq * enc.weight_cap / weight
        start += SQ_NORM_DIGITS
    totals = _metric_totals(extras[start:], enc)
    return SecureSum(unflatten(flat, enc, shapes), float(weight), mean_sq, values, totals)


def _metric_totals(digit_sums: np.ndarray, enc: SecureEncoding) -> dict[str, int]:
    totals: dict[str, int] = {}
    offset = 0
    for key, digits in enc.metric_digits().items():
        totals[key] = from_digits(digit_sums[offset : offset + digits], enc.levels)
        offset += digits
    return totals


def check_plausible(ints: np.ndarray, enc: SecureEncoding, clients: int) -> None:
    """Refuse (:class:`ProtocolError`, naming what) a decoded sum of ``clients`` inputs
    that no ``clients`` honest clients could produce (see the module docstring): a
    hostile client shifted it out of the envelope, or the field wrapped."""
    if clients < 1:
        raise ProtocolError(f"a sum of {clients} inputs")
    values = ints[: enc.sent].astype(np.float64)
    noisy = enc.noise_sigma > 0
    reach = clients * enc.levels + (noise_allowance(clients, enc.noise_sigma) if noisy else 0.0)
    worst = float(np.max(np.abs(values))) if values.size else 0.0
    if worst > reach:
        outside = int(np.count_nonzero(np.abs(values) > reach))
        raise ProtocolError(
            f"implausible sum: {outside} value coordinate(s) beyond ±{reach:.0f}, the most "
            f"{clients} clients of ±{enc.levels} each can reach (largest {worst:.0f})"
        )
    if enc.l2_clip > 0:
        # each client clipped its update to l2_clip before the (≤ 1) weighting; stochastic
        # rounding moves each sent coordinate by < 1; the noise norm concentrates below
        # σ·√clients·(√sent + NOISE_HEADROOM_SIGMAS)
        one = enc.l2_clip * enc.levels / enc.clip_range + math.sqrt(enc.sent)
        bound = clients * one
        if noisy:
            spread = math.sqrt(enc.sent) + NOISE_HEADROOM_SIGMAS
            bound += enc.noise_sigma * math.sqrt(clients) * spread
        norm = float(np.linalg.norm(values))
        if norm > bound:
            raise ProtocolError(
                f"implausible sum: L2 norm {norm:.4g} (integer units) exceeds {bound:.4g}, "
                f"the bound of {clients} clients clipped to {enc.l2_clip:g}"
                + (" plus their noise" if noisy else "")
            )
    extras = ints[enc.sent :]
    top = clients * (enc.levels - 1)
    if extras.size and (int(extras.min()) < 0 or int(extras.max()) > top):
        raise ProtocolError(
            f"implausible sum: a digit sum outside [0, {top}] ({clients} clients' base-"
            f"{enc.levels} digits)"
        )
    weight = from_digits(extras[: enc.weight_digits], enc.levels)
    low, high = (clients, clients) if enc.uniform_weights else (clients, clients * enc.weight_cap)
    if not low <= weight <= high:
        raise ProtocolError(
            f"implausible sum: the weights total {weight}, outside [{low}, {high}] for "
            f"{clients} clients (weight cap {enc.weight_cap})"
        )
    start = enc.weight_digits + (SQ_NORM_DIGITS if enc.with_sq_norm else 0)
    totals = _metric_totals(extras[start:], enc)
    for key, most in enc.metric_max().items():
        if key in totals and totals[key] > clients * most:
            raise ProtocolError(
                f"implausible sum: metric total `{key}` = {totals[key]} exceeds {clients} "
                f"clients x {most}"
            )
    if totals and not clients <= totals["examples"]:
        raise ProtocolError(f"implausible sum: {totals['examples']} examples for {clients} clients")
    if totals and totals["loss_sum"] > round(LOSS_MAX * LOSS_SCALE) * totals["examples"]:
        raise ProtocolError("implausible sum: the loss total exceeds the largest loss per example")


def noise_allowance(clients: int, sigma: float) -> float:
    """How far past the values' range (integer units) a decoded sum of ``clients`` noisy
    inputs may lie: ``NOISE_HEADROOM_SIGMAS`` standard deviations of their summed noise."""
    return NOISE_HEADROOM_SIGMAS * math.sqrt(clients) * sigma


def check_no_wrap(value_sums: np.ndarray, enc: SecureEncoding, clients: int | None) -> None:
    """Refuse (:class:`ProtocolError`) a noisy sum with a coordinate outside
    ``±(clients·levels + noise_allowance)``: it wrapped mod 2^bits (or its noise went past
    the headroom the field was sized for) — and any noisy sum in a field without twice that
    allowance to spare, where a wrap could not be told apart. ``clients``: whose inputs are
    summed (None: the largest the field holds)."""
    half = 2 ** (enc.bits - 1) - 1
    n = clients if clients is not None else max(1, half // max(1, enc.levels))
    bound = n * enc.levels + noise_allowance(n, enc.noise_sigma)
    if bound + noise_allowance(n, enc.noise_sigma) > half:
        raise ProtocolError(
            f"a field of {enc.bits} bits has no room to detect a wrap of {n} clients' values "
            f"(±{enc.levels} each) with noise sigma {enc.noise_sigma:g}: the sum may have "
            "wrapped, so it is not used"
        )
    worst = int(np.max(np.abs(value_sums))) if value_sums.size else 0
    if worst > bound:
        outside = int(np.count_nonzero(np.abs(value_sums) > bound))
        raise ProtocolError(
            f"the noisy sum wrapped mod 2^{enc.bits}: {outside} coordinate(s) beyond "
            f"±{bound:.0f} (largest {worst}); the field's noise headroom was exceeded"
        )


# ---- classifier-calibration statistics (CCVR) through a secure round -----------------
#: Features are clipped to ±this before their sums are taken (the clipped share is
#: reported in the sum); a pooler's tanh output lies within ±1, hidden states rarely
#: beyond a few tens.
FEATURE_CLIP = 64.0
#: Fewest fraction bits the statistics' fixed point may have (a resolution of 2^-12).
MIN_FRAC_BITS = 12


@dataclass(frozen=True)
class StatsEncoding:
    """The public encoding of one client's per-class feature statistics into integers mod
    2^bits: the class counts, the feature sums Σx and the upper triangles of Σxxᵀ (fixed
    point, ``frac_bits`` fraction bits), then the count of clipped feature values. Only
    sums: the cohort's totals give the pooled count, mean and scatter exactly (up to the
    fixed point), and no one client's."""

    module: str  # the output layer the features enter
    classes: int
    dim: int
    examples_cap: int  # most examples one client may hold
    feature_clip: float
    frac_bits: int
    bits: int
    noise_sigma: float = 0.0  # no noise: calibration is refused under DP

    @property
    def triangle(self) -> int:
        return self.dim * (self.dim + 1) // 2

    @property
    def length(self) -> int:
        return self.classes * (1 + self.dim + self.triangle) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "feature_stats", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StatsEncoding:
        try:
            if data.get("kind") != "feature_stats":
                raise ValueError(f"kind {data.get('kind')!r} is not feature_stats")
            return cls(
                module=str(data["module"]),
                classes=int(data["classes"]),
                dim=int(data["dim"]),
                examples_cap=int(data["examples_cap"]),
                feature_clip=float(data["feature_clip"]),
                frac_bits=int(data["frac_bits"]),
                bits=int(data["bits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed calibration-statistics encoding: {exc}") from exc

    @classmethod
    def plan(
        cls,
        module: str,
        classes: int,
        dim: int,
        *,
        cohort: int,
        examples_cap: int,
        bits: int,
        feature_clip: float = FEATURE_CLIP,
    ) -> StatsEncoding:
        """The finest fixed point for which ``cohort`` clients' totals (each at most
        ``examples_cap``·``feature_clip``² per second-moment entry) cannot wrap."""
        reach = cohort * max(1, examples_cap) * max(1.0, feature_clip) ** 2
        frac_bits = bits - 2 - math.ceil(math.log2(reach))
        if frac_bits < MIN_FRAC_BITS:
            raise ValueError(
                f"{bits} bits leave {frac_bits} fraction bits for the calibration statistics "
                f"of {cohort} clients of up to {examples_cap} examples (at least "
                f"{MIN_FRAC_BITS} are needed): calibrate fewer clients per round"
            )
        return cls(module, classes, dim, examples_cap, feature_clip, frac_bits, bits)


def encode_stats(features: np.ndarray, labels: np.ndarray, enc: StatsEncoding) -> np.ndarray:
    """One client's statistics of ``features`` [n, d] with ``labels`` [n] as a vector mod
    2^bits (see :class:`StatsEncoding`)."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[1] != enc.dim or y.shape != (x.shape[0],):
        raise ValueError(
            f"features [n, {enc.dim}] and labels [n] expected, got {x.shape}, {y.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("features hold NaN/Inf")
    if y.size and (y.min() < 0 or y.max() >= enc.classes):
        raise ValueError(f"labels must be in [0, {enc.classes})")
    if len(x) > enc.examples_cap:
        raise ValueError(
            f"{len(x)} examples exceed the calibration's cap of {enc.examples_cap} per client"
        )
    clipped = int(np.count_nonzero(np.abs(x) > enc.feature_clip))
    x = np.clip(x, -enc.feature_clip, enc.feature_clip)
    rows, cols = np.triu_indices(enc.dim)
    one = float(2**enc.frac_bits)
    counts = np.zeros(enc.classes, np.int64)
    sums = np.zeros((enc.classes, enc.dim), np.int64)
    second = np.zeros((enc.classes, enc.triangle), np.int64)
    for c in range(enc.classes):
        xc = x[y == c]
        counts[c] = len(xc)
        sums[c] = np.rint(xc.sum(axis=0) * one).astype(np.int64)
        second[c] = np.rint((xc.T @ xc)[rows, cols] * one).astype(np.int64)
    vector = np.concatenate([counts, sums.ravel(), second.ravel(), [clipped]])
    return to_field(vector, enc.bits)


def decode_stats_sum(field_sum: np.ndarray, enc: StatsEncoding, clients: int) -> Tensors:
    """The pooled statistics of ``clients`` clients' summed vectors, named and shaped as
    one client's :func:`fedpeft.aggregation.calibration.feature_stats` (count, mean,
    packed scatter ``Σxxᵀ − N·μμᵀ``), so the same merge and refit use them (the clipped
    count: :func:`stats_clipped`). Refuses (:class:`ProtocolError`) a sum no ``clients``
    honest clients could produce."""
    ints = from_field(np.asarray(field_sum, np.uint64), enc.bits)
    if ints.shape != (enc.length,):
        raise ProtocolError(f"the unmasked statistics have {ints.size} integers, not {enc.length}")
    k, d, t = enc.classes, enc.dim, enc.triangle
    counts = ints[:k].astype(np.float64)
    one = float(2**enc.frac_bits)
    sums = ints[k : k + k * d].reshape(k, d).astype(np.float64) / one
    second = ints[k + k * d : k + k * d + k * t].reshape(k, t).astype(np.float64) / one
    _check_stats(counts, sums, second, int(ints[-1]), enc, clients)
    mean = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    rows, cols = np.triu_indices(d)
    scatter = second - counts[:, None] * mean[:, rows] * mean[:, cols]
    names = [f"{enc.module}.{s}" for s in ("class_count", "class_mean", "class_scatter")]
    return dict(zip(names, (counts, mean, scatter), strict=True))


def stats_clipped(field_sum: np.ndarray, enc: StatsEncoding) -> int:
    """How many feature values the clients clipped to ``±feature_clip``, in all."""
    return int(from_field(np.asarray(field_sum, np.uint64)[-1:], enc.bits)[0])


def _check_stats(
    counts: np.ndarray,
    sums: np.ndarray,
    second: np.ndarray,
    clipped: int,
    enc: StatsEncoding,
    clients: int,
) -> None:
    """The envelope of ``clients`` honest clients' statistics (rounding: ½ unit each)."""
    slack = clients * 0.5 / 2**enc.frac_bits
    total = float(counts.sum())
    if np.any(counts < 0) or not clients <= total <= clients * enc.examples_cap:
        raise ProtocolError(
            f"implausible statistics: class counts {counts.astype(int).tolist()} for "
            f"{clients} clients of 1..{enc.examples_cap} examples"
        )
    b = enc.feature_clip
    if np.any(np.abs(sums) > counts[:, None] * b + slack):
        raise ProtocolError(f"implausible statistics: a feature sum beyond count x {b:g}")
    rows, cols = np.triu_indices(enc.dim)
    diag = second[:, rows == cols]
    if np.any(diag < -slack) or np.any(diag > counts[:, None] * b * b + slack):
        raise ProtocolError(f"implausible statistics: a second moment outside [0, count x {b:g}²]")
    # Cauchy-Schwarz per class and feature: (Σx)² ≤ N·Σx²
    n = counts[:, None]
    gap = sums**2 - n * diag
    tolerance = n * (2 * b + 1) * slack + slack**2 + 1e-9 * (sums**2 + n * np.abs(diag))
    if np.any(gap > tolerance):
        raise ProtocolError("implausible statistics: a feature's variance is negative")
    if not 0 <= clipped <= total * enc.dim:
        raise ProtocolError(f"implausible statistics: {clipped} clipped feature values")
